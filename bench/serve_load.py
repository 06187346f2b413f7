"""Load test of the recommendation service: N concurrent clients against POST /recommend for a fixed time.

Starts `python serve.py` on an artifact (default: the Scientific run), waits for /readyz, records the
server's resident memory, then runs a closed loop: each of `--clients` asyncio clients (one httpx
AsyncClient, one keep-alive connection per client) sends a request, waits for the answer, sends the next,
until `--duration` seconds have passed after `--warmup` unrecorded seconds. Requests are real shoppers:
the history (item ids, oldest first, the newest `--history-items`) of users drawn from a pool of
`--pool` users (0: every user); `--requests user` sends known user ids instead (artifacts with users.parquet).
A small pool repeats users, so the service's user-vector cache answers most requests; `--pool 0` on a big
user base makes almost every request embed a new history with the user tower.

Reported: completed requests, QPS, latency p50/p90/p99/max (client side: connection + server time), errors
by status, what served the requests (retrieval / rerank / degraded / popularity) and the latency of each of
those answers, cache hits and LM
fallbacks (from /metrics), resident memory when ready, after the run and at peak (VmHWM), and the
machine's load. The client runs in this process; with `--server-cpus` / `--client-cpus` each is pinned
(taskset) to its own cores, otherwise they share the machine.

    python bench/serve_load.py                                        # Scientific, 50 clients, 60 s
    python bench/serve_load.py --rerank                               # the same with LM rerank on
    python bench/serve_load.py --memory-only [--rerank]               # resident memory only
    python bench/serve_load.py --server-cpus 0 --client-cpus 1 --out bench/results/serve_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, compose_config, latest_artifact, write_results  # noqa: E402

# ------------------------------------------------------------------------------------------ the server


class ServerProcess:
    def __init__(self, proc: subprocess.Popen, url: str, log_path: Path):
        self.proc, self.url, self.log_path = proc, url, log_path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def memory_mib(self) -> dict:
        """Resident memory of the server now and at peak (Linux /proc), MiB; with worker processes
        (service.workers), summed over the supervisor and its workers, with their proportional set size (PSS:
        shared pages, e.g. the memory-mapped index and the libraries, counted once) and each worker's RSS."""
        import psutil

        main = psutil.Process(self.pid)
        procs = [main, *main.children(recursive=True)]
        infos = [p.memory_full_info() for p in procs]
        out = {"rss_mib": round(sum(i.rss for i in infos) / 2**20, 1),
               "peak_rss_mib": round(_peak_rss(self.pid) / 1024, 1)}
        if len(procs) > 1:
            out["pss_mib"] = round(sum(i.pss for i in infos) / 2**20, 1)
            out["worker_rss_mib"] = [round(i.rss / 2**20, 1) for i in infos[1:]]
        return out


def _peak_rss(pid: int) -> int:
    """VmHWM of a process, KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "VmHWM":
            return int(value.split()[0])
    return 0


@contextlib.contextmanager
def running_server(artifact: Path, overrides=(), cpus: str | None = None, ready_timeout: float = 900.0,
                   workers: int = 1):
    """`python serve.py artifacts=ARTIFACT port=0 ...` in a subprocess until the block ends (SIGTERM); ready
    once `workers` different server processes have answered /readyz with 200."""
    run_dir = Path(tempfile.mkdtemp(prefix="serve_bench_"))
    cmd = [sys.executable, str(REPO / "serve.py"), f"artifacts={artifact}", "port=0", f"hydra.run.dir={run_dir}",
           *overrides]
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    log_path = run_dir / "server.log"
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = open(log_path, "w")
    try:
        url = None
        deadline = time.monotonic() + ready_timeout
        while url is None:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the server exited ({proc.poll()}); its log: {log_path}")
            log.write(line)
            m = re.search(r"Uvicorn running on (http://\S+)", line)
            url = m and m.group(1)
        threading.Thread(target=lambda: [log.write(x) for x in proc.stdout], daemon=True).start()
        ready: set[int] = set()
        while True:
            try:
                r = httpx.get(url + "/readyz", timeout=10)  # a new connection each time: any worker answers
                if r.status_code == 200:
                    ready.add(r.json()["pid"])
                    if len(ready) >= workers:
                        break
                    continue
                if r.json().get("error"):
                    raise RuntimeError(f"the server failed to load: {r.json()['error']}")
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"the server did not get ready; its log: {log_path}")
            time.sleep(0.5)
        yield ServerProcess(proc, url, log_path)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.flush()


# ------------------------------------------------------------------------------------------ requests


def request_bodies(artifact: Path, args) -> tuple[list[dict], str]:
    """Request bodies for the load (and where the users came from)."""
    from towerrec.artifact.format import USERS_FILE

    rng = random.Random(args.seed)
    users_file = artifact / USERS_FILE
    if users_file.is_file():
        import pandas as pd

        table = pd.read_parquet(users_file)
        users = [(str(u), [str(i) for i in items]) for u, items in zip(table["user_id"], table["items"])]
        source = f"{USERS_FILE} ({len(users)} users)"
    else:
        if args.requests == "user":
            raise SystemExit(f"--requests user needs {users_file}; use --requests history")
        from towerrec.data.load import load_split

        split = load_split(compose_config(args.data).data)
        ids = np.asarray(split.catalog.item_ids, dtype=object)
        users = [(str(u), [str(i) for i in ids[seq[:-1]]]) for u, seq in zip(split.users, split.sequences)]
        source = f"data={args.data} test histories ({len(users)} users)"
    if args.pool:
        users = rng.sample(users, min(args.pool, len(users)))
    bodies = []
    for user_id, history in users:
        body = {"user_id": user_id} if args.requests == "user" else {"history": history[-args.history_items:]}
        bodies.append({**body, "k": args.k, "rerank": args.rerank})
    return bodies, source


def parse_metrics(text: str) -> dict[str, float]:
    """{'name{label=v,...}': value} of the counters (and stage time / batch size sums) the report uses."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            counter = s.name.endswith("_total") and s.name.startswith(
                ("towerrec_user_vector_cache", "towerrec_stage_fallbacks", "towerrec_recommendations"))
            summary = s.name.endswith(("_sum", "_count")) and s.name.startswith(
                ("towerrec_stage_duration_seconds", "towerrec_embed_batch_size"))
            if counter or summary:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}"] = s.value
    return out


async def closed_loop(url: str, bodies: list[dict], clients: int, warmup: float, duration: float, seed: int) -> dict:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    records: list[tuple[float, float, str, str | None]] = []  # (start, latency s, status, served_by)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        t0 = time.perf_counter()
        record_from, end = t0 + warmup, t0 + warmup + duration

        async def worker(i: int):
            rng = random.Random(seed * 1000 + i)
            while time.perf_counter() < end:
                body = bodies[rng.randrange(len(bodies))]
                start = time.perf_counter()
                served = None
                try:
                    r = await client.post("/recommend", json=body)
                    status = str(r.status_code)
                    if r.status_code == 200:
                        served = r.json()["served_by"]
                except Exception as e:  # a transport error counts as an error
                    status = type(e).__name__
                if start >= record_from:
                    records.append((start, time.perf_counter() - start, status, served))

        await asyncio.gather(*(worker(i) for i in range(clients)))
        finished = time.perf_counter()
    lat = np.array([r[1] for r in records]) * 1000
    statuses: dict[str, int] = {}
    served: dict[str, int] = {}
    for _, _, status, by in records:
        statuses[status] = statuses.get(status, 0) + 1
        if by:
            served[by] = served.get(by, 0) + 1
    window = finished - record_from
    by_served = {by: percentiles(np.array([r[1] for r in records if r[3] == by]) * 1000) for by in served}
    return {"requests": len(records), "seconds": round(window, 2), "qps": round(len(records) / window, 1),
            "latency_ms": percentiles(lat), "latency_ms_by_served_by": by_served,
            "errors": sum(n for s, n in statuses.items() if s != "200"), "statuses": statuses, "served_by": served}


def percentiles(lat: np.ndarray) -> dict:
    """p50 / p90 / p99 / max / mean of latencies in ms ({} for none)."""
    if not len(lat):
        return {}
    return {"p50": round(float(np.percentile(lat, 50)), 1), "p90": round(float(np.percentile(lat, 90)), 1),
            "p99": round(float(np.percentile(lat, 99)), 1), "max": round(float(lat.max()), 1),
            "mean": round(float(lat.mean()), 1)}


# ------------------------------------------------------------------------------------------ main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--artifact", type=Path, default=None,
                   help="an exported artifact directory (default: the newest Scientific one under logs/train/runs)")
    p.add_argument("--data", default="scientific", help="where histories come from when the artifact has no "
                                                        "users.parquet (a conf/data group)")
    p.add_argument("--requests", choices=("history", "user"), default="history")
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--pool", type=int, default=0, help="distinct users requests are drawn from (0: all)")
    p.add_argument("--history-items", type=int, default=20, help="newest history items sent per request")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--rerank", action="store_true", help="LM rerank on (server and requests)")
    p.add_argument("--rerank-budget-ms", type=float, default=None)
    p.add_argument("--memory-only", action="store_true", help="start, report resident memory, stop")
    p.add_argument("--server-cpus", help="taskset CPU list of the server, e.g. 0")
    p.add_argument("--client-cpus", help="taskset CPU list of this client process, e.g. 1")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra serve.py overrides")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    args.artifact = args.artifact or latest_artifact()

    if args.client_cpus:
        os.sched_setaffinity(0, {int(c) for c in args.client_cpus.split(",")})
    overrides = list(args.set)
    if args.rerank:
        overrides.append("service.rerank.enabled=true")
        if args.rerank_budget_ms:
            overrides.append(f"service.rerank.budget_ms={args.rerank_budget_ms}")
    result = {"artifact": str(args.artifact), "overrides": overrides, "clients": args.clients,
              "duration_s": args.duration, "warmup_s": args.warmup, "requests_kind": args.requests, "pool": args.pool,
              "history_items": args.history_items, "k": args.k, "rerank": args.rerank,
              "server_cpus": args.server_cpus, "client_cpus": args.client_cpus,
              "env": {"cpus": os.cpu_count(), "python": platform.python_version(), "loadavg_before": os.getloadavg(),
                      "quiet_flag": Path("/tmp/bench/QUIET").exists()}}
    bodies = None
    if not args.memory_only:
        bodies, source = request_bodies(args.artifact, args)
        result["users"] = source
        print(f"{len(bodies)} request bodies from {source}")
    start = time.perf_counter()
    with running_server(args.artifact, overrides, args.server_cpus) as server:
        result["startup_s"] = round(time.perf_counter() - start, 1)
        result["memory_ready"] = server.memory_mib()
        print(f"server ready at {server.url} in {result['startup_s']} s; memory {result['memory_ready']}")
        if not args.memory_only:
            before = parse_metrics(httpx.get(server.url + "/metrics").text)
            stats = asyncio.run(closed_loop(server.url, bodies, args.clients, args.warmup, args.duration, args.seed))
            after = parse_metrics(httpx.get(server.url + "/metrics").text)
            result.update(stats)
            result["server_counters"] = {k: after[k] - before.get(k, 0.0) for k in after if after[k] != before.get(k)}
            result["memory_after"] = server.memory_mib()
    result["env"]["loadavg_after"] = os.getloadavg()

    if not args.memory_only:
        lat = result["latency_ms"]
        print(f"\n{args.clients} clients x {args.duration:g} s (+{args.warmup:g} s warm-up), POST /recommend "
              f"({args.requests}, pool {args.pool or 'all'}, rerank {args.rerank})")
        print(f"  requests {result['requests']}  QPS {result['qps']}  errors {result['errors']}  statuses "
              f"{result['statuses']}")
        print(f"  latency ms: p50 {lat.get('p50')}  p90 {lat.get('p90')}  p99 {lat.get('p99')}  max {lat.get('max')}")
        print(f"  served_by {result['served_by']}; latency ms by served_by {result['latency_ms_by_served_by']}")
        print(f"  server counters (delta): {result['server_counters']}")
        print(f"  memory after: {result['memory_after']}")
    print(f"  load average before/after: {result['env']['loadavg_before']} / {result['env']['loadavg_after']}")
    write_results(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
