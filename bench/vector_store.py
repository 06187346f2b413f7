"""The Milvus backend (index.backend=milvus) against the artifact's FAISS index: recall@k and per-query latency.

The queries are the test users of the artifact's dataset (a seeded subset with --users), embedded as serving
embeds them (`Retriever.embed_histories`), searched one at a time as the service does (history excluded), with
no filter and with two filters of the serving API: the top-level category of the user's newest item, and a
price cap at the catalog's median price (where the catalog has prices). Every Milvus index type given is loaded into a fresh Milvus Lite file
(or --uri), timed, and compared with FAISS on the same queries:

    recall@k   |Milvus top-k & FAISS top-k| / |FAISS top-k|, averaged over queries
    same       share of queries whose top-k lists are identical (ties ordered by id)
    p50 / p95  per-query latency of Retriever.search (filter and exclusion handling included), ms
    batch      Retriever.search over all queries in batches of --batch (the batch job's path), ms per query
    fallbacks  searches the backend could not fill, scored exactly from the stored vectors

    python bench/vector_store.py --data synthetic --artifact logs/train/runs/RUN/artifact
    TOWERREC_USER_SECRET=... python bench/vector_store.py --data scientific          # newest Scientific artifact
    python bench/vector_store.py --index-types FLAT,HNSW,IVF_FLAT --users 500 --out bench/results/vector_store.json
    python bench/vector_store.py --data synthetic --artifact RUN/artifact --set data.num_items=300 data.num_users=400
                                                              # the data of experiment=tiny
Run it on a quiet machine if the latency is what you want: other jobs on the cores inflate it.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import latest_artifact, say, write_results  # noqa: E402  (bench/ is on sys.path when run as a script)

INDEXES = {"FLAT": ({}, {}), "HNSW": ({"M": 32, "efConstruction": 200}, {"ef": 128}),
           "IVF_FLAT": ({"nlist": 64}, {"nprobe": 16})}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="scientific", help="data config the artifact was trained on (its test users)")
    p.add_argument("--artifact", type=Path, default=None, help="default: the newest artifact of --data")
    p.add_argument("--users", type=int, default=1000, help="test users (seeded subset; 0: all)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--index-types", default="FLAT,HNSW", help=f"Milvus index types, of {', '.join(INDEXES)}")
    p.add_argument("--uri", default=None, help="a Milvus URI (default: a Milvus Lite file in a temporary folder)")
    p.add_argument("--batch", type=int, default=256, help="users per batched search")
    p.add_argument("--threads", type=int, default=1, help="torch / FAISS threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", nargs="*", default=[], help="Hydra overrides of the data, e.g. data.num_items=300")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    args.artifact = args.artifact or latest_artifact(args.data)
    return args


def queries(art, data: str, users: int, seed: int, overrides=()):
    """(histories as artifact positions, their newest item's position) of a seeded subset of test users."""
    from common import compose_config

    from towerrec.data.load import load_split

    split = load_split(compose_config(data, overrides=overrides).data)
    pos = art.table.positions_of_items(split.catalog.item_ids)  # split position -> artifact position
    histories = [pos[h][pos[h] >= 0] for h in split.examples("test").histories]
    histories = [h for h in histories if len(h)]
    if users and users < len(histories):
        rows = np.sort(np.random.default_rng(seed).choice(len(histories), users, replace=False))
        histories = [histories[i] for i in rows]
    return histories


def run(retriever, vecs, seen, filters, k, batch) -> dict:
    """Top-k of every query, one at a time, per filter; latencies; and the batched search."""
    out = {}
    for name, make in filters.items():
        hits, ms = [], []
        for vec, excl, f in zip(vecs, seen, make):
            t = time.perf_counter()
            hits.append(retriever.search(vec[None], k, [excl], item_filter=f)[0])
            ms.append((time.perf_counter() - t) * 1000)
        out[name] = {"hits": hits, "ms": ms}
    t = time.perf_counter()
    for i in range(0, len(vecs), batch):
        retriever.search(vecs[i : i + batch], k, seen[i : i + batch])
    out["batch_ms_per_query"] = (time.perf_counter() - t) * 1000 / len(vecs)
    return out


def compare(want: list, got: list) -> tuple[float, float]:
    """(mean recall of `got` against `want`, share of identical lists)."""
    from towerrec.retrieval.retriever import ranked_ids

    recall = [len({r for r, _ in g} & {r for r, _ in w}) / len(w) for w, g in zip(want, got) if w]
    same = [ranked_ids(g) == ranked_ids(w) for w, g in zip(want, got)]
    return float(np.mean(recall)) if recall else math.nan, float(np.mean(same))


def pct(ms: list[float], q: float) -> float:
    return float(np.percentile(ms, q))


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import faiss
    import torch

    from towerrec.artifact import Artifact
    from towerrec.artifact.items import ItemFilter
    from towerrec.artifact.milvus import load_into_milvus
    from towerrec.index import IndexConfig, MilvusConfig
    from towerrec.retrieval import Retriever

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    art = Artifact.load(args.artifact)
    faiss_retriever = Retriever(art)
    say(f"artifact {art.path}: {art.num_items} items, dim {art.dim}, FAISS {art.manifest['index']['factory']}")
    histories = queries(art, args.data, args.users, args.seed, args.set)
    vecs = faiss_retriever.embed_histories(histories)  # (U, D)
    seen = [set(art.row_ids[h].tolist()) for h in histories]
    categories = art.items["category"].astype(str).str.split(" > ").str[0].to_numpy()
    filters = {"none": [None] * len(vecs), "category": [ItemFilter(categories[h[-1]]) for h in histories]}
    median = None
    if not np.isnan(art.table.prices).all():  # Scientific has no prices: no price filter there
        median = float(np.nanmedian(art.table.prices))
        filters["price"] = [ItemFilter(price_max=median)] * len(vecs)
    say(f"{len(vecs)} test users of {args.data}; filters: top-level category of the newest item"
        + ("" if median is None else f", price <= {median:g}") + f"; k={args.k}, {args.threads} thread(s)")
    base = run(faiss_retriever, vecs, seen, filters, args.k, args.batch)
    rows = [{"backend": "faiss " + art.manifest["index"]["factory"], "load_s": None,
             **{f"{name}_p50": pct(base[name]["ms"], 50) for name in filters},
             **{f"{name}_p95": pct(base[name]["ms"], 95) for name in filters},
             "batch_ms": base["batch_ms_per_query"], "fallbacks": faiss_retriever.exact_fallbacks}]
    with tempfile.TemporaryDirectory(prefix="mv") as tmp:
        for index_type in args.index_types.split(","):
            params, search = INDEXES[index_type]
            cfg = MilvusConfig(uri=args.uri or str(Path(tmp) / f"{index_type.lower()}.db"), index_type=index_type,
                               index_params=params, search_params=search)
            t = time.perf_counter()
            summary = load_into_milvus(art, cfg, progress=True)
            load_s = time.perf_counter() - t
            retriever = Retriever(art, index=IndexConfig(backend="milvus", milvus=cfg))
            got = run(retriever, vecs, seen, filters, args.k, args.batch)
            row = {"backend": f"milvus {index_type} {params or ''} {search or ''}".strip(), "load_s": load_s,
                   "collection": summary["name"]}
            for name in filters:
                recall, same = compare(base[name]["hits"], got[name]["hits"])
                row.update({f"{name}_recall": recall, f"{name}_same": same, f"{name}_p50": pct(got[name]["ms"], 50),
                            f"{name}_p95": pct(got[name]["ms"], 95)})
            row.update(batch_ms=got["batch_ms_per_query"], fallbacks=retriever.exact_fallbacks)
            rows.append(row)
            retriever.milvus.close()
    print(f"\n{args.data}: {art.num_items} items, {len(vecs)} queries, recall@{args.k} against the artifact's FAISS "
          f"index; latency per query in ms (p50 / p95); load = Milvus insert + index + load")
    head = f"{'backend':44} {'load s':>7} " + " ".join(f"{n + ' R@k / same':>20} {n + ' p50/p95':>16}"
                                                       for n in filters) + f" {'batch ms':>9} {'fallback':>8}"
    print(head)
    for r in rows:
        cells = []
        for n in filters:
            rec = "" if f"{n}_recall" not in r else f"{r[f'{n}_recall']:.4f} / {r[f'{n}_same']:.3f}"
            cells.append(f"{rec:>20} {r[f'{n}_p50']:7.2f}/{r[f'{n}_p95']:7.2f} ")
        load = "" if r["load_s"] is None else f"{r['load_s']:.1f}"
        print(f"{r['backend'][:44]:44} {load:>7} " + " ".join(cells) + f" {r['batch_ms']:9.3f} {r['fallbacks']:8d}")
    write_results(args.out, {"artifact": str(art.path), "data": args.data, "num_items": art.num_items,
                             "dim": art.dim, "queries": len(vecs), "k": args.k, "threads": args.threads,
                             "price_cap": median, "machine": platform.platform(), "load_average": os.getloadavg(),
                             "python": sys.version.split()[0], "rows": rows,
                             "median_ms_faiss_none": statistics.median(base["none"]["ms"])})


if __name__ == "__main__":
    main()
