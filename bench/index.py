"""FAISS index presets of the export (conf/index/*.yaml): build time, size, latency and recall@10.

Every index is built by `towerrec.index.build_index` (or `build_sharded_index` with --shards) from the
project's own presets, and searched after `apply_search_params`, so the numbers describe what an exported
artifact serves. The vectors are synthetic, "random but clustered" and L2-normalised like the product
tower's output: Gaussian cluster centres of uneven sizes, each cluster spread along its own low-dimensional
subspace plus a little isotropic noise. Queries come from the same distribution (they are not base vectors).
Ground truth is the exact inner-product top-10 (faiss IndexFlatIP).

Reported per preset and search setting: build seconds (train + add), bytes per vector of the serialized
index, single-query latency p50/p99 (one query per call, FAISS limited to 1 thread), single-thread QPS,
batch QPS (all queries in one call, all threads) and recall@10 against the exact top-10. Rows that meet the
goals are marked:
  (a) an approximate preset with recall@10 >= 0.95 at single-query p99 <= 5 ms;
  (b) IVF-PQ whose compressed index is under 100 bytes/vector, with recall@10 >= 0.9 after exact re-ranking.

    python bench/index.py                                      # 1M x 384, 1000 queries, every preset
    python bench/index.py --n 50000 --queries 200              # smoke run, about a minute
    python bench/index.py --presets hnsw,ivfpq --ef-search 32,64 --out bench/results/index.json
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import statistics
import time
from pathlib import Path

import faiss
import numpy as np
from common import REPO, T0, say, write_results  # noqa: E402  (bench/ is on sys.path when run as a script)

PRESETS = ("flat", "hnsw", "ivf", "ivfpq")
APPROXIMATE = ("hnsw", "ivf", "ivfpq")
K = 10
GOAL_A = {"recall": 0.95, "p99_ms": 5.0}
GOAL_B = {"recall": 0.9, "bytes_per_vector": 100.0}


def int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def float_list(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000, help="base vectors (the catalog)")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--presets", default=",".join(PRESETS), help=f"comma-separated subset of {','.join(PRESETS)}")
    p.add_argument("--ef-search", type=int_list, default=[16, 32, 64, 128, 256], help="HNSW efSearch sweep")
    p.add_argument("--ivf-nprobe", type=int_list, default=[1, 4, 8, 16, 32, 64, 128], help="IVF nprobe sweep")
    p.add_argument("--ivfpq-nprobe", type=int_list, default=[8, 16, 32, 64], help="IVF-PQ nprobe sweep")
    p.add_argument("--k-factor", type=float_list, default=[1, 2, 4, 8, 16],
                   help="IVF-PQ re-ranking sweep: k * k_factor PQ candidates re-scored exactly")
    p.add_argument("--pq-m", default="auto", help="IVF-PQ sub-quantizers, comma-separated; one build each "
                   "(auto: the preset's rule, 48 at 384-d; e.g. auto,64)")
    p.add_argument("--shards", type=int, default=1, help="build every preset as N shards (build_sharded_index)")
    p.add_argument("--set", action="append", default=[], metavar="PRESET.KEY=VALUE",
                   help="override a preset option (repeatable), e.g. --set ivf.nlist=2048 "
                   "--set hnsw.ef_construction=100")
    p.add_argument("--clusters", type=int, default=2000, help="cluster centres of the synthetic vectors")
    p.add_argument("--local-dim", type=int, default=24, help="dimension of each cluster's own subspace")
    p.add_argument("--spread", type=float, default=0.6, help="norm of a vector's offset from its centre, in the "
                   "cluster's subspace (relative to the unit centre)")
    p.add_argument("--noise", type=float, default=0.25, help="norm of the isotropic noise added on top")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="FAISS threads for building and batch search "
                   "(default: all); single-query latency always uses 1")
    p.add_argument("--latency-queries", type=int, default=None, help="queries timed one by one (default: all)")
    p.add_argument("--batch-repeats", type=int, default=3, help="batch searches per row; the median is reported")
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)
    args.presets = [s.strip() for s in args.presets.split(",") if s.strip()]
    unknown = set(args.presets) - set(PRESETS)
    if unknown or not args.presets:
        p.error(f"--presets: unknown {sorted(unknown)}; choose from {','.join(PRESETS)}")
    for name in ("n", "dim", "queries", "clusters", "local_dim", "batch_repeats", "shards"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.n < K:
        p.error(f"--n must be at least k={K}")
    args.pq_m = [v.strip() if v.strip() == "auto" else int(v) for v in args.pq_m.split(",") if v.strip()]
    args.overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        preset, dot, option = key.partition(".")
        if not sep or not dot or preset not in PRESETS:
            p.error(f"--set {item!r}: expected PRESET.KEY=VALUE with PRESET in {','.join(PRESETS)}")
        import yaml

        args.overrides.setdefault(preset, {})[option] = yaml.safe_load(value)
    return args


# ---- data ---------------------------------------------------------------------------------------------
def clustered_vectors(n: int, nq: int, dim: int, args) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) base and (nq, dim) query vectors, float32, unit norm, from one seeded distribution.

    Cluster sizes are uneven (log-normal weights), the base rows are in random cluster order (an HNSW graph
    built cluster by cluster would be an artefact), and each cluster is generated in one go, so memory stays
    at the output arrays plus one cluster.
    """
    rng = np.random.default_rng(args.seed)
    c = args.clusters
    weights = rng.lognormal(0.0, 1.0, c)
    weights /= weights.sum()
    base_label = rng.choice(c, n, p=weights)
    query_label = rng.choice(c, nq, p=weights)
    base_rows = np.argsort(base_label, kind="stable")
    query_rows = np.argsort(query_label, kind="stable")
    base_bounds = np.searchsorted(base_label[base_rows], np.arange(c + 1))
    query_bounds = np.searchsorted(query_label[query_rows], np.arange(c + 1))
    x = np.empty((n, dim), dtype=np.float32)
    q = np.empty((nq, dim), dtype=np.float32)
    r = min(args.local_dim, dim)
    for j in range(c):
        centre = rng.standard_normal(dim, dtype=np.float32)
        centre /= np.linalg.norm(centre)
        basis = rng.standard_normal((r, dim), dtype=np.float32) / np.float32(math.sqrt(dim))  # rows of norm ~1
        for out, rows, lo, hi in ((x, base_rows, base_bounds[j], base_bounds[j + 1]),
                                  (q, query_rows, query_bounds[j], query_bounds[j + 1])):
            m = hi - lo
            if m == 0:
                continue
            local = rng.standard_normal((m, r), dtype=np.float32) @ basis * np.float32(args.spread / math.sqrt(r))
            iso = rng.standard_normal((m, dim), dtype=np.float32) * np.float32(args.noise / math.sqrt(dim))
            out[rows[lo:hi]] = centre + local + iso
    for a in (x, q):
        faiss.normalize_L2(a)
    return x, q


def exact_top_k(x: np.ndarray, q: np.ndarray, k: int, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k of each query (scores, ids), with faiss.IndexFlatIP in query batches."""
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(x)
    scores = np.empty((len(q), k), dtype=np.float32)
    ids = np.empty((len(q), k), dtype=np.int64)
    for start in range(0, len(q), batch):
        scores[start : start + batch], ids[start : start + batch] = flat.search(q[start : start + batch], k)
    return scores, ids


# ---- presets ------------------------------------------------------------------------------------------
def preset_config(name: str, overrides: dict):
    from omegaconf import OmegaConf

    from towerrec.index import IndexConfig

    d = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "index" / f"{name}.yaml"), resolve=True)
    d.update(overrides)
    if d.get("refine") is False:  # k_factor needs a refine index (build_index would reject it)
        d["search"] = {k: v for k, v in (d.get("search") or {}).items() if k != "k_factor"}
    return IndexConfig.from_any(d)


def serialized_bytes(index: faiss.Index) -> int:
    """Size of faiss.write_index's output, counted as it streams (no copy in memory, nothing on disk)."""
    total = 0

    def count(chunk) -> int:
        nonlocal total
        total += len(chunk)
        return len(chunk)

    writer = faiss.PyCallbackIOWriter(count)
    faiss.write_index(index, writer)
    del writer  # flushes the last block
    return total


def unwrap(index: faiss.Index) -> list[faiss.Index]:
    """The index and the ones it wraps, outermost first (IDMap -> refine -> base)."""
    chain = [faiss.downcast_index(index)]
    while True:
        top = chain[-1]
        if isinstance(top, faiss.IndexIDMap):
            chain.append(faiss.downcast_index(top.index))
        elif isinstance(top, faiss.IndexRefine):
            chain.append(faiss.downcast_index(top.base_index))
        else:
            return chain


@dataclasses.dataclass
class Built:
    preset: str
    label: str  # e.g. "ivfpq PQ48"
    index: faiss.Index
    factory: str
    refine: bool  # the index re-ranks with full vectors (IndexRefineFlat)
    build_s: float
    trained_on: int
    bytes_per_vector: float
    preset_search: dict
    # refine builds: the compressed index inside, searched alone for the rows without re-ranking
    compressed: "faiss.Index | None" = None
    compressed_factory: str | None = None
    compressed_ids: np.ndarray | None = None  # its labels -> our ids (the IDMap2 around the refine index)
    compressed_bytes_per_vector: float | None = None


def build(preset: str, label: str, cfg, x: np.ndarray, ids: np.ndarray, shards: int) -> Built:
    from towerrec.index import build_index, build_sharded_index

    start = time.perf_counter()
    if shards > 1:
        index, parts, info = build_sharded_index(x, ids, shards, cfg)
    else:
        index, info = build_index(x, ids, cfg)
        parts = [index]
    build_s = time.perf_counter() - start
    size = sum(serialized_bytes(p) for p in parts)
    chains = [unwrap(p) for p in parts]
    refines = [next((s for s in chain if isinstance(s, faiss.IndexRefine)), None) for chain in chains]
    built = Built(preset, label, index, info["factory"], refines[0] is not None, build_s, int(info["trained_on"]),
                  size / len(x), dict(cfg.search))
    if built.refine:
        bases = [faiss.downcast_index(r.base_index) for r in refines]
        built.compressed_bytes_per_vector = sum(serialized_bytes(b) for b in bases) / len(x)
        if shards == 1:
            # the IVF-PQ inside the refine wrapper is exactly what `refine: false` builds (same factory, same
            # training sample, same adds): searched alone, it gives the rows without re-ranking
            built.compressed = bases[0]
            built.compressed_factory = without_refine(cfg).resolve(len(x), x.shape[1])
            top = chains[0][0]
            built.compressed_ids = faiss.vector_to_array(top.id_map) if isinstance(top, faiss.IndexIDMap) else None
    return built


def without_refine(cfg):
    """The same preset without exact re-ranking (k_factor only applies to a refine index)."""
    return dataclasses.replace(cfg, refine=False, search={k: v for k, v in cfg.search.items() if k != "k_factor"})


# ---- measuring ----------------------------------------------------------------------------------------
def recall_at_k(labels: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    hits = (labels[:, :k, None] == truth[:, None, :]).any(axis=2).sum(axis=1)
    return float(hits.mean() / k)


def measure(index: faiss.Index, q: np.ndarray, truth: np.ndarray, args, id_map: np.ndarray | None = None) -> dict:
    """Single-query latency (1 FAISS thread), batch QPS (all threads) and recall@10 of the batch results."""
    threads = args.threads or faiss.omp_get_max_threads()
    nlat = min(args.latency_queries or len(q), len(q))
    faiss.omp_set_num_threads(1)
    try:
        for i in range(min(10, nlat)):  # warm-up: caches, lazily built structures
            index.search(q[i : i + 1], K)
        times = np.empty(nlat)
        for i in range(nlat):
            start = time.perf_counter()
            index.search(q[i : i + 1], K)
            times[i] = time.perf_counter() - start
    finally:
        faiss.omp_set_num_threads(threads)
    batch_s = []
    labels = None
    for _ in range(args.batch_repeats):
        start = time.perf_counter()
        _, labels = index.search(q, K)
        batch_s.append(time.perf_counter() - start)
    if id_map is not None:
        labels = np.where(labels >= 0, id_map[np.maximum(labels, 0)], -1)
    ms = times * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()),
        "single_qps": float(nlat / times.sum()), "batch_qps": float(len(q) / statistics.median(batch_s)),
        "batch_threads": threads, "recall": recall_at_k(labels, truth), "latency_queries": nlat,
    }


@dataclasses.dataclass
class Row:
    preset: str
    label: str
    factory: str
    search: dict
    refine: bool
    build_s: float
    trained_on: int
    bytes_per_vector: float  # the serialized index searched in this row
    compressed_bytes_per_vector: float | None  # refine rows: the index without its full-vector copy
    includes_full_vectors: bool
    preset_default: bool
    p50_ms: float
    p99_ms: float
    mean_ms: float
    single_qps: float
    batch_qps: float
    batch_threads: int
    recall: float
    latency_queries: int
    goals: list[str]


def goals_met(row: Row) -> list[str]:
    met = []
    if row.preset in APPROXIMATE and row.recall >= GOAL_A["recall"] and row.p99_ms <= GOAL_A["p99_ms"]:
        met.append("a")
    if (row.preset == "ivfpq" and row.refine and row.compressed_bytes_per_vector is not None
            and row.compressed_bytes_per_vector < GOAL_B["bytes_per_vector"] and row.recall >= GOAL_B["recall"]):
        met.append("b")
    return met


def sweep(built: Built, q: np.ndarray, truth: np.ndarray, args) -> list[Row]:
    from towerrec.index import apply_search_params

    def values(sweep_values, key):  # the sweep plus the preset's own setting
        default = built.preset_search.get(key)
        return sorted(set(sweep_values) | ({default} if default is not None else set()))

    # (index, factory, search params, re-ranked?, label -> id map, bytes/vector, compressed bytes/vector)
    whole = (built.index, built.factory)
    jobs = []
    if built.preset == "flat":
        jobs.append((*whole, {}))
    elif built.preset == "hnsw":
        jobs += [(*whole, {"efSearch": e}) for e in values(args.ef_search, "efSearch")]
    elif built.preset == "ivf":
        jobs += [(*whole, {"nprobe": p}) for p in values(args.ivf_nprobe, "nprobe")]
    else:
        nprobes = values(args.ivfpq_nprobe, "nprobe")
        if built.compressed is not None:
            jobs += [(built.compressed, built.compressed_factory, {"nprobe": p}) for p in nprobes]
        if built.refine:
            k_factors = values(args.k_factor, "k_factor")
            jobs += [(*whole, {"nprobe": p, "k_factor": kf}) for p in nprobes for kf in k_factors]
        else:
            jobs += [(*whole, {"nprobe": p}) for p in nprobes]
    rows = []
    for index, factory, params in jobs:
        compressed = index is built.compressed
        refine = built.refine and not compressed
        apply_search_params(index, params)
        m = measure(index, q, truth, args, built.compressed_ids if compressed else None)
        row = Row(
            built.preset, built.label, factory, params, refine, built.build_s, built.trained_on,
            bytes_per_vector=built.compressed_bytes_per_vector if compressed else built.bytes_per_vector,
            compressed_bytes_per_vector=built.compressed_bytes_per_vector if refine else None,
            includes_full_vectors=built.preset != "ivfpq" or refine,
            preset_default=not compressed and params == built.preset_search, **m, goals=[])
        row.goals = goals_met(row)
        rows.append(row)
        say(f"  {row.label:<12} {fmt_params(params):<22} recall@10 {row.recall:.4f}  p50 {row.p50_ms:7.3f} ms  "
            f"p99 {row.p99_ms:7.3f} ms  batch {row.batch_qps:9.0f} q/s"
            + (f"  goal {','.join(row.goals)}" if row.goals else ""))
    return rows


# ---- report -------------------------------------------------------------------------------------------
def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def fmt_params(params: dict) -> str:
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()) or "-"


def fmt_bytes(row: Row) -> str:
    if row.refine and row.compressed_bytes_per_vector is not None:
        full = row.bytes_per_vector - row.compressed_bytes_per_vector
        return f"{row.compressed_bytes_per_vector:.0f}+{full:.0f}"
    return f"{row.bytes_per_vector:.0f}"


def format_table(rows: list[Row]) -> str:
    head = (f"{'preset':<13}{'search':<24}{'build s':>9}{'B/vec':>11}{'p50 ms':>9}{'p99 ms':>9}{'1-thr q/s':>11}"
            f"{'batch q/s':>11}{'recall@10':>11}  goals")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.label:<13}{fmt_params(r.search) + (' *' if r.preset_default else ''):<24}{r.build_s:>9.1f}"
                     f"{fmt_bytes(r):>11}{r.p50_ms:>9.3f}{r.p99_ms:>9.3f}{r.single_qps:>11.0f}{r.batch_qps:>11.0f}"
                     f"{r.recall:>11.4f}  {','.join(r.goals)}")
    return "\n".join(lines)


def goal_summary(rows: list[Row]) -> dict[str, list[dict]]:
    """Per goal, the row with the lowest p99 that meets it, for each index built (e.g. hnsw, ivf, ivfpq PQ48)."""
    out: dict[str, list[dict]] = {}
    for goal in ("a", "b"):
        best: dict[str, Row] = {}
        for r in rows:
            if goal in r.goals and (r.label not in best or r.p99_ms < best[r.label].p99_ms):
                best[r.label] = r
        out[goal] = [dataclasses.asdict(r) for r in best.values()]
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    threads = faiss.omp_get_max_threads()
    env = {"faiss": faiss.__version__, "numpy": np.__version__, "python": platform.python_version(),
           "machine": platform.machine(), "cpu_count": os.cpu_count(), "faiss_threads": threads,
           "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    load = f", load average {env['load_average'][0]:.1f}" if env["load_average"] else ""
    say(f"faiss {env['faiss']}, {plural(threads, 'thread')} for build and batch search (1 for single-query latency), "
        f"{env['cpu_count']} CPUs{load}")
    if env["load_average"] and env["load_average"][0] > (env["cpu_count"] or 1) * 0.5:
        say("  note: the machine is busy; latencies and build times will be inflated")

    say(f"generating {args.n:,} + {args.queries:,} vectors of dim {args.dim} ({args.clusters} clusters, "
        f"local dim {args.local_dim}, spread {args.spread}, noise {args.noise}, seed {args.seed}); "
        f"{args.n * args.dim * 4 / 2**30:.2f} GiB")
    x, q = clustered_vectors(args.n, args.queries, args.dim, args)
    ids = np.arange(args.n, dtype=np.int64)
    say("exact top-10 (IndexFlatIP)")
    truth_scores, truth = exact_top_k(x, q, K)
    data = {"top1_ip": float(truth_scores[:, 0].mean()), "top10_ip": float(truth_scores[:, K - 1].mean()),
            "random_ip": float(np.mean(np.sum(q[: min(len(q), 1000)] * x[: min(len(q), 1000)], axis=1)))}
    say(f"  mean inner product: 1st neighbour {data['top1_ip']:.3f}, 10th {data['top10_ip']:.3f}, "
        f"random pair {data['random_ip']:.3f}")

    rows: list[Row] = []
    builds = []
    for preset in args.presets:
        cfg = preset_config(preset, args.overrides.get(preset, {}))
        if preset == "ivfpq":
            for m in args.pq_m:
                c = dataclasses.replace(cfg, pq_m=m)
                label = f"ivfpq PQ{c.pq_m_for(args.dim)}"
                builds.append((preset, label, c))
                if c.refine and args.shards > 1:  # the compressed index cannot be taken out of shards
                    builds.append((preset, label, without_refine(c)))
        else:
            builds.append((preset, preset, cfg))
    for preset, label, cfg in builds:
        factory = cfg.resolve(args.n, args.dim)
        say(f"{label}: building {factory}" + (f" in {args.shards} shards" if args.shards > 1 else "")
            + (f", efConstruction {cfg.ef_construction}" if cfg.ef_construction else "")
            + (" (an HNSW graph over 1M vectors takes a long time on few cores)" if preset == "hnsw" else ""))
        built = build(preset, label, cfg, x, ids, args.shards)
        extra = ("" if built.compressed_bytes_per_vector is None else
                 f" ({built.compressed_bytes_per_vector:.1f} without the full vectors kept for re-ranking)")
        say(f"  built in {built.build_s:.1f} s (trained on {built.trained_on:,}), {built.factory}, "
            f"{built.bytes_per_vector:.1f} bytes/vector{extra}")
        rows += sweep(built, q, truth, args)
        del built  # free each index before the next build

    print()
    print(format_table(rows))
    nlat = min(args.latency_queries or args.queries, args.queries)
    print(f"""
n={args.n:,} dim={args.dim} queries={args.queries:,}; recall@10 against the exact inner-product top-10.
*        the preset's own search setting (conf/index/*.yaml)
build s  train + add (towerrec.index.build_index), {plural(threads, 'thread')}
B/vec    serialized index / n. IVF-PQ re-ranking rows show "compressed+full": the refine index keeps every
         full float32 vector ({args.dim * 4} B) next to the PQ codes. IVF-PQ rows without k_factor search the
         compressed index alone (the index that `refine: false` builds).
p50/p99  single-query latency: one query per search call, FAISS limited to 1 thread, {nlat} queries;
         1-thr q/s = {nlat} / their total time. batch q/s: all queries in one call, {plural(threads, 'thread')},
         median of {args.batch_repeats}.
goals    (a) approximate preset, recall@10 >= {GOAL_A['recall']} at p99 <= {GOAL_A['p99_ms']:g} ms;
         (b) IVF-PQ, compressed part < {GOAL_B['bytes_per_vector']:g} B/vector, recall@10 >= {GOAL_B['recall']}
             after exact re-ranking.""")
    summary = goal_summary(rows)
    for goal, best in summary.items():
        if not best:
            print(f"goal ({goal}): not met by any row")
        for r in best:
            print(f"goal ({goal}) met by {r['label']}: fastest {fmt_params(r['search'])} (recall@10 {r['recall']:.4f}, "
                  f"p99 {r['p99_ms']:.3f} ms, {fmt_bytes(Row(**r))} B/vector)")

    result = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "environment": env, "data": data, "rows": [dataclasses.asdict(r) for r in rows], "goals": summary,
              "elapsed_s": time.perf_counter() - T0}
    write_results(args.out, result)
    return result


if __name__ == "__main__":
    main()
