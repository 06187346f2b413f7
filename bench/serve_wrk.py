"""Load test of POST /recommend with `wrk` (Debian package `wrk`), the figures for the serving targets.

Starts `python serve.py` on an artifact (`serve_load.running_server`, pinned with --server-cpus), writes a Lua
script and runs `wrk -t1 -c CONNECTIONS -d DURATION --latency` against it (pinned with --client-cpus), after
`--warmup` seconds of the same load that are not recorded. Request kinds (`--requests`):
- `user`: known user ids of the artifact's users.parquet, cycled in a shuffled order;
- `new`: a new history per request, `--history-items` item ids drawn at random in Lua (a user-vector cache
  miss each time: the user tower runs for every request);
- `history`: the stored users' real histories (their newest `--history-items`), cycled.
`--filter` adds the top category of the catalog as `filters.category`. `--rerank` turns the LM on in the
server and in every request.

Printed and written (`--out`): requests, QPS, p50 / p90 / p99 / max latency (wrk's, microsecond resolution),
non-2xx responses and socket errors, and the server's resident memory before and after (all its processes).
`--workers 1,2` runs one server after the other (service.workers=1, then 2) with the same load and reports the
QPS ratio.

    python bench/serve_wrk.py --artifact RUN/artifact --requests new --server-cpus 0 --client-cpus 1 \
        --set development=true --out bench/results/serve_wrk_synthetic_new.json
    python bench/serve_wrk.py --artifact RUN/artifact --requests new --workers 1,2 --server-cpus 0,1 \
        --client-cpus 0,1 --set development=true --out bench/results/serve_wrk_synthetic_workers.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402
from serve_load import running_server  # noqa: E402

LUA_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"non2xx":%d,"connect":%d,"read":%d,"write":%d,"timeout":%d}\n', summary.requests,
    summary.duration, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.status, e.connect, e.read, e.write, e.timeout))
end
"""


def lua_string(s: str) -> str:
    return json.dumps(s)  # a JSON string literal is a valid Lua string literal for ASCII ids


def lua_script(args, artifact: Path) -> str:
    """The wrk script: a request() that builds the next body, and done() printing one JSON line."""
    import pandas as pd

    from towerrec.artifact.format import ITEMS_FILE, USERS_FILE

    rng = random.Random(args.seed)
    extra = f', "k": {args.k}, "rerank": {str(args.rerank).lower()}'
    if args.filter:
        items = pd.read_parquet(artifact / ITEMS_FILE, columns=["category"])
        top = items["category"].astype(str).str.split(" > ").str[0].value_counts().index[0]
        extra += f', "filters": {{"category": {json.dumps(top)}}}'
    head = ['wrk.method = "POST"', 'wrk.headers["Content-Type"] = "application/json"',
            f"local extra = {lua_string(extra)}"]
    if args.requests == "new":
        ids = pd.read_parquet(artifact / ITEMS_FILE, columns=["item_id"])["item_id"].astype(str).tolist()
        body = [f"local ids = {{{', '.join(lua_string(i) for i in ids)}}}",
                f"math.randomseed({args.seed})",
                "request = function()",
                "  local h = {}",
                f"  for j = 1, {args.history_items} do h[j] = '\"' .. ids[math.random(#ids)] .. '\"' end",
                "  local body = '{\"history\": [' .. table.concat(h, ', ') .. ']' .. extra .. '}'",
                "  return wrk.format(nil, '/recommend', nil, body)",
                "end"]
    else:
        users = pd.read_parquet(artifact / USERS_FILE)
        rows = list(zip(users["user_id"].astype(str), users["items"]))
        rng.shuffle(rows)
        if args.requests == "user":
            bodies = [f'{{"user_id": {json.dumps(u)}' for u, _ in rows]
        else:
            bodies = [f'{{"history": {json.dumps([str(i) for i in items[-args.history_items:]])}' for _, items in rows]
        body = [f"local bodies = {{{', '.join(lua_string(b) for b in bodies)}}}", "local i = 0",
                "request = function()", "  i = i % #bodies + 1",
                "  return wrk.format(nil, '/recommend', nil, bodies[i] .. extra .. '}')", "end"]
    return "\n".join([*head, *body, LUA_DONE])


def run_wrk(url: str, script: Path, connections: int, seconds: float, cpus: str | None) -> dict:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "--latency", "--timeout", "10s", "-s", str(script),
           url]
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    m = re.search(r"^WRKJSON (\{.*\})$", out, re.M)
    if m is None:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    r = json.loads(m.group(1))
    ms = {k[:-3]: round(r[k] / 1000, 2) for k in ("p50_us", "p90_us", "p99_us", "max_us")}
    errors = {k: r[k] for k in ("non2xx", "connect", "read", "write", "timeout") if r[k]}
    return {"requests": r["requests"], "qps": round(r["requests"] / (r["duration_us"] / 1e6), 1), "latency_ms": ms,
            "errors": errors}


def parse_load_args(p: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """The options this bench and bench/serve_soak.py share (the requests, the pinning, the server), parsed;
    exits when wrk is missing."""
    p.add_argument("--history-items", type=int, default=5)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--server-cpus", help="taskset CPU list of the server, e.g. 0")
    p.add_argument("--client-cpus", help="taskset CPU list of wrk, e.g. 1")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra serve.py overrides")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk (Debian), brew install wrk (macOS)")
    return args


def measure(args, script: Path, overrides: list[str], workers: int) -> dict:
    """One server (`workers` processes), warm-up, then the recorded wrk run."""
    result = {"workers": workers, "loadavg_before": os.getloadavg()}
    overrides = overrides + ([f"service.workers={workers}"] if workers > 1 else [])
    with running_server(args.artifact, overrides, args.server_cpus, workers=workers) as server:
        result["memory_ready"] = server.memory_mib()
        if args.warmup > 0:
            run_wrk(server.url, script, args.connections, args.warmup, args.client_cpus)
        result.update(run_wrk(server.url, script, args.connections, args.duration, args.client_cpus))
        result["memory_after"] = server.memory_mib()
    result["loadavg_after"] = os.getloadavg()
    lat = result["latency_ms"]
    print(f"wrk -t1 -c{args.connections} {args.duration:g} s, POST /recommend ({args.requests}"
          f"{', category filter' if args.filter else ''}{', rerank' if args.rerank else ''}), {workers} worker(s): "
          f"{result['requests']} requests, QPS {result['qps']}, p50 {lat['p50']} ms, p90 {lat['p90']} ms, "
          f"p99 {lat['p99']} ms, max {lat['max']} ms, errors {result['errors'] or 0}; memory "
          f"{result['memory_ready']} -> {result['memory_after']}; load {result['loadavg_before']} -> "
          f"{result['loadavg_after']}")
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--artifact", type=Path, required=True, help="an exported artifact directory")
    p.add_argument("--requests", choices=("user", "new", "history"), default="new")
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--warmup", type=float, default=10.0)
    p.add_argument("--filter", action="store_true", help="a category filter on every request")
    p.add_argument("--rerank", action="store_true", help="LM rerank on (server and requests)")
    p.add_argument("--workers", default="1", help="service.workers, or a comma list run one after another and "
                                                  "compared (QPS ratio to the first), e.g. 1,2")
    args = parse_load_args(p, argv)
    workers = [int(w) for w in str(args.workers).split(",")]
    overrides = list(args.set) + (["service.rerank.enabled=true"] if args.rerank else [])
    script = Path(tempfile.mkdtemp(prefix="wrk_")) / "load.lua"
    script.write_text(lua_script(args, args.artifact))
    result = {"artifact": str(args.artifact), "requests_kind": args.requests, "connections": args.connections,
              "duration_s": args.duration, "warmup_s": args.warmup, "history_items": args.history_items, "k": args.k,
              "filter": args.filter, "rerank": args.rerank, "overrides": overrides, "server_cpus": args.server_cpus,
              "client_cpus": args.client_cpus}
    runs = [measure(args, script, overrides, n) for n in workers]
    if len(runs) == 1:
        result.update(runs[0])
    else:
        result["runs"] = runs
        result["qps_ratio"] = {str(r["workers"]): round(r["qps"] / runs[0]["qps"], 3) for r in runs}
        print("QPS against", workers[0], "worker(s):", result["qps_ratio"])
    write_results(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
