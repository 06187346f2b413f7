"""`python -m towerrec.batch ARTIFACT --out recs.parquet --k 50`: top-k for every known user of an exported
artifact (or the users of `--histories FILE`), as the service answers them, into one Parquet file.

Thin: the arguments become `BatchOptions` and `towerrec.batch.recommend_all` does the work. A killed run is
resumed by running the same command again. Bad input (a histories file row, an artifact file, a work directory
of another job) is one sentence on stderr, `error: ...`, exit code 1.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
from pathlib import Path

from towerrec.artifact.format import ArtifactError
from towerrec.artifact.milvus import VectorStoreError
from towerrec.batch.job import BatchOptions, recommend_all
from towerrec.batch.store import BatchError
from towerrec.data.schema import DataError
from towerrec.index import IndexConfig, MilvusConfig
from towerrec.rerank.apply import find_rerank_dir
from towerrec.retrieval.filters import Filters

log = logging.getLogger("towerrec.batch")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m towerrec.batch", description=__doc__.split("\n\n")[0])
    p.add_argument("artifact", type=Path, help="an exported artifact directory (RUN_DIR/artifact)")
    p.add_argument("--out", type=Path, required=True, help="the Parquet file to write")
    p.add_argument("--k", type=int, default=50, help="recommendations per user (default 50)")
    p.add_argument("--histories", type=Path, help="JSONL or CSV of user histories instead of the known users")
    p.add_argument("--category", help="keep products under this category path")
    p.add_argument("--price-min", type=float)
    p.add_argument("--price-max", type=float)
    p.add_argument("--keep-seen", action="store_true", help="keep products already in the history")
    p.add_argument("--rerank", action="store_true", help="rerank with the LM of a rerank directory")
    p.add_argument("--rerank-dir", default="auto", help="the rerank directory (default: ARTIFACT/rerank)")
    p.add_argument("--rerank-candidates", type=int, help="candidates handed to the LM (default: its top_n)")
    p.add_argument("--rerank-device", help="run the LM on this device (e.g. cpu, cuda)")
    p.add_argument("--chunk-size", type=int, default=1024, help="users per chunk (memory, resumption)")
    p.add_argument("--batch-size", type=int, default=256, help="users per user-tower pass")
    p.add_argument("--work-dir", type=Path, help="chunk files and manifest (default: OUT.parts)")
    p.add_argument("--keep-chunks", action="store_true", help="keep the work directory after assembly")
    p.add_argument("--development", action="store_true", help="accept development-key pseudonyms")
    p.add_argument("--milvus-uri", help="search the artifact's Milvus collection at this URI (a .db file or "
                   "http(s)://HOST:PORT, loaded by python -m towerrec.artifact milvus) instead of its FAISS index")
    p.add_argument("--milvus-collection", default="towerrec_items", help="the collection alias")
    p.add_argument("--threads", type=int, help="torch and FAISS threads")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def directory_digest(path: Path) -> str:
    """sha256 over a directory's files (relative names and contents): a rerank directory's identity."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def load_reranker(args):
    """(Reranker, identity) of --rerank-dir; a rerank directory is required (`python train.py stage=rerank`)."""
    from towerrec.rerank.reranker import Reranker

    directory = find_rerank_dir(args.rerank_dir, args.artifact, "--rerank-dir")
    if directory is None:
        raise BatchError(f"--rerank: {args.artifact}/rerank holds no rerank.json; pass --rerank-dir DIR (written "
                         "by python train.py stage=rerank artifact=...)")
    overrides = {"device": args.rerank_device} if args.rerank_device else {}
    return Reranker.from_dir(directory, **overrides), f"{directory.name}:{directory_digest(directory)[:16]}"


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        if args.threads:
            import faiss
            import torch

            torch.set_num_threads(args.threads)
            faiss.omp_set_num_threads(args.threads)
        options = BatchOptions(k=args.k, chunk_size=args.chunk_size, batch_size=args.batch_size,
                               rerank_candidates=args.rerank_candidates,
                               filters=Filters(category=args.category, price_min=args.price_min,
                                               price_max=args.price_max, exclude_seen=not args.keep_seen))
        reranker, reranker_id = load_reranker(args) if args.rerank else (None, None)
        index = None if args.milvus_uri is None else IndexConfig(
            backend="milvus", milvus=MilvusConfig(uri=args.milvus_uri, collection=args.milvus_collection))
        summary = recommend_all(args.artifact, args.out, options, histories=args.histories, reranker=reranker,
                                reranker_id=reranker_id, work_dir=args.work_dir, keep_chunks=args.keep_chunks,
                                development=args.development, progress=not args.no_progress,
                                index=index)
    except (DataError, ArtifactError, BatchError, VectorStoreError, FileNotFoundError) as e:  # bad input
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    print(f"{summary.out}: {summary.rows:,} rows for {summary.users:,} users ({summary.computed} of "
          f"{summary.chunks} chunks computed by this run) in {summary.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
