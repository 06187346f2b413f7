"""`python -m towerrec.artifact {verify,add,remove,milvus} ARTIFACT_DIR ...`: check an artifact, add or remove
products, load its products into Milvus."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from towerrec.artifact.milvus import load_into_milvus
from towerrec.artifact.reader import Artifact
from towerrec.artifact.update import add_items, reindex, remove_items
from towerrec.index import MilvusConfig, describe


def _read_items(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix in (".jsonl", ".json"):
        return pd.read_json(path, lines=path.suffix == ".jsonl", dtype={"item_id": str})
    return pd.read_csv(path, dtype={"item_id": str}, sep="\t" if path.suffix == ".tsv" else ",")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m towerrec.artifact", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    p = sub.add_parser("verify", help="load and check everything serving loads: manifest, listed files and "
                                      "checksums, index, tables, users, both towers (each run on a probe text)")
    p.add_argument("artifact")
    p = sub.add_parser("add", help="add (or update) products from a CSV/TSV/JSONL/parquet file of catalog rows")
    p.add_argument("artifact")
    p.add_argument("items")
    p.add_argument("--no-replace", action="store_true", help="refuse products whose item_id already exists")
    p.add_argument("--rebuild", action="store_true", help="rebuild the index from the stored embeddings")
    p.add_argument("--batch-size", type=int, default=256)
    p = sub.add_parser("remove", help="remove products by item id")
    p.add_argument("artifact")
    p.add_argument("item_ids", nargs="*", help="item ids (or --file)")
    p.add_argument("--file", help="a text file with one item id per line")
    p.add_argument("--rebuild", action="store_true", help="rebuild the index from the stored embeddings")
    p = sub.add_parser("reindex", help="rebuild the index from the stored embeddings with another FAISS factory")
    p.add_argument("artifact")
    p.add_argument("--factory", required=True, help='a faiss.index_factory string, e.g. "IDMap2,SQfp16" (half the '
                                                    'memory of IDMap2,Flat) or "IDMap2,HNSW32,Flat"')
    p.add_argument("--search", type=json.loads, default={}, help='search parameters, JSON, e.g. \'{"efSearch": 64}\'')
    p.add_argument("--shards", type=int, default=1)
    p = sub.add_parser("milvus", help="load the products (vectors, ids, category, price) into a Milvus collection, "
                                      "replacing what the collection held")
    p.add_argument("artifact")
    p.add_argument("--uri", required=True, help="a local file ending in .db (Milvus Lite) or http://HOST:19530")
    p.add_argument("--collection", default=MilvusConfig.collection, help="the alias searched (default %(default)s)")
    p.add_argument("--db-name", default="", help="the server's database (default: its default database)")
    p.add_argument("--index-type", default=MilvusConfig.index_type, help="HNSW (default), IVF_FLAT, FLAT, ...")
    p.add_argument("--index-params", type=json.loads, default=None,
                   help='JSON, e.g. \'{"M": 32, "efConstruction": 200}\' (default for HNSW; {} otherwise)')
    p.add_argument("--batch-size", type=int, default=MilvusConfig.insert_batch, help="products per insert")
    p.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.command == "verify":
            art = Artifact.load(args.artifact, verify=True)
            checked = art.check()
            m = art.manifest
            print(f"ok: {art.path}: {art.num_items} items, dim {art.dim}, model {art.kind}, index {m['index']['factory']} "
                  f"({describe(art.index)}, {len(art.parts)} part(s)), {len(checked['towers'])} towers, "
                  f"{checked['users']} known users, {len(m['files'])} files checksummed, "
                  f"schema {m['schema_version']}, data {m.get('data', {}).get('fingerprint')}")
        elif args.command == "add":
            summary = add_items(args.artifact, _read_items(Path(args.items)), replace=not args.no_replace,
                                rebuild=args.rebuild, batch_size=args.batch_size)
            print(json.dumps(summary))
        elif args.command == "reindex":
            print(json.dumps(reindex(args.artifact, {"factory": args.factory, "search": args.search,
                                                     "shards": args.shards})))
        elif args.command == "milvus":
            params = args.index_params
            if params is None:
                params = dict(MilvusConfig().index_params) if args.index_type == MilvusConfig.index_type else {}
            cfg = MilvusConfig(uri=args.uri, collection=args.collection, db_name=args.db_name,
                               index_type=args.index_type, index_params=params, insert_batch=args.batch_size)
            art = Artifact.load(args.artifact, verify=True)
            print(json.dumps(load_into_milvus(art, cfg, progress=not args.no_progress)))
        else:
            ids = list(args.item_ids)
            if args.file:
                ids += [line.strip() for line in Path(args.file).read_text().splitlines() if line.strip()]
            print(json.dumps(remove_items(args.artifact, ids, rebuild=args.rebuild)))
    except (ValueError, OSError, ImportError) as e:  # ArtifactError and DataError are ValueErrors; Milvus: OSError
        if args.debug:
            raise
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)  # one line
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
