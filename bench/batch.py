"""Batch recommendations (towerrec.batch): users per second and peak memory as the number of users grows.

Each case runs `recommend_all` in a fresh Python process (so each peak is its own) and prints users/s (over the
whole call: histories file check, embedding, search, chunk files, assembly) and the process's peak RSS after
loading the artifact and at the end of the job. Cases: the artifact's known users, then histories files of
--scale times as many users (JSONL, histories drawn with replacement from the known users, seeded). Flat memory
shows as the same end peak at every user count. Rerank is not timed here (bench/rerank.py latency: ~0.6-1.2 s
per user on CPU).

    python bench/batch.py --data scientific                       # newest Scientific artifact
    python bench/batch.py --artifact DIR --scale 10 --threads 2   # any artifact
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import latest_artifact, say, write_results  # noqa: E402  (bench/ is on sys.path when run as a script)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", type=Path, help="artifact directory (default: the newest of --data)")
    p.add_argument("--data", default="scientific", help="dataset name of the newest artifact to use")
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--chunk-size", type=int, default=1024)
    p.add_argument("--scale", type=int, nargs="*", default=[10], help="histories files of this many times the users")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--child", help=argparse.SUPPRESS)  # one case, run in this process (JSON arguments)
    return p.parse_args(argv)


def rss_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak so far) of this process, MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(spec: dict) -> dict:
    import faiss
    import torch

    from towerrec.artifact import Artifact
    from towerrec.batch import BatchOptions, recommend_all

    torch.set_num_threads(spec["threads"])
    faiss.omp_set_num_threads(spec["threads"])
    art = Artifact.load(spec["artifact"])
    loaded = rss_mb("VmHWM")
    start = time.perf_counter()
    summary = recommend_all(art, spec["out"], BatchOptions(k=spec["k"], chunk_size=spec["chunk_size"]),
                            histories=spec["histories"], development=True, progress=False)
    seconds = time.perf_counter() - start
    return {"users": summary.users, "rows": summary.rows, "chunks": summary.chunks, "seconds": round(seconds, 2),
            "users_per_s": round(summary.users / seconds, 1), "peak_rss_after_load_mb": round(loaded, 1),
            "peak_rss_mb": round(rss_mb("VmHWM"), 1)}


def write_histories(artifact: Path, n: int, path: Path) -> None:
    from towerrec.artifact import Artifact

    users = [items for _, items in Artifact.load(artifact).iter_users()]
    rng = random.Random(0)
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"user_id": f"bench-{i}", "history": rng.choice(users)}) + "\n")


def run_case(args, artifact: Path, tmp: Path, name: str, histories: Path | None) -> dict:
    spec = {"artifact": str(artifact), "out": str(tmp / f"{name}.parquet"), "k": args.k,
            "chunk_size": args.chunk_size, "threads": args.threads,
            "histories": str(histories) if histories else None}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          env=env)
    if proc.returncode:
        raise SystemExit(f"case {name} failed:\n{proc.stderr[-3000:]}")
    return {"case": name, **json.loads(proc.stdout.strip().splitlines()[-1])}


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    artifact = args.artifact or latest_artifact(args.data)
    from towerrec.artifact import Artifact

    known = Artifact.load(artifact, verify=False).num_users
    say(f"artifact {artifact}: {known:,} known users; k {args.k}, chunk {args.chunk_size}, {args.threads} threads")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as d:
        tmp = Path(d)
        results.append(run_case(args, artifact, tmp, "known users", None))
        say(json.dumps(results[-1]))
        for scale in args.scale:
            path = tmp / f"histories-x{scale}.jsonl"
            write_histories(artifact, known * scale, path)
            results.append(run_case(args, artifact, tmp, f"histories file, {scale}x users", path))
            say(json.dumps(results[-1]))
    print(f"\n{'case':<32} {'users':>9} {'seconds':>8} {'users/s':>9} {'peak RSS after load':>20} {'peak RSS':>9}")
    for r in results:
        print(f"{r['case']:<32} {r['users']:>9,} {r['seconds']:>8.1f} {r['users_per_s']:>9,.0f} "
              f"{r['peak_rss_after_load_mb']:>17.0f} MiB {r['peak_rss_mb']:>5.0f} MiB")
    write_results(args.out, {"artifact": str(artifact), "k": args.k, "chunk_size": args.chunk_size,
                             "threads": args.threads, "machine": platform.processor() or platform.machine(),
                             "cpus": os.cpu_count(), "results": results})


if __name__ == "__main__":
    main()
