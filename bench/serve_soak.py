"""Soak test of POST /recommend: a steady load for many minutes with artifact reloads in between.

Starts `python serve.py` (pinned with --server-cpus, reloads enabled with a generated token), then runs `wrk`
(bench/serve_wrk.py's Lua requests, pinned with --client-cpus) one minute at a time at about --rate requests
per second (each connection waits connections / rate seconds between its requests: wrk's `delay()`), and
halfway through each of the first --reloads minutes reloads the served artifact with POST /admin/reload.
After `--warmup` seconds of the same load (the user-vector cache fills), resident memory is read, and again at
the end. Printed and written (`--out`): per minute the QPS, p50 / p99 / max latency, errors and the reload's
status and seconds; memory at the start and the end and its growth; errors in all.

    python bench/serve_soak.py --artifact RUN/artifact --requests new --rate 540 --minutes 10 --reloads 10 \
        --server-cpus 0 --client-cpus 1 --set development=true --out bench/results/serve_soak_synthetic.json
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402
from serve_load import running_server  # noqa: E402
from serve_wrk import lua_script, parse_load_args, run_wrk  # noqa: E402


def reload_later(url: str, token: str, after_s: float, into: dict) -> threading.Thread:
    """POST /admin/reload after `after_s` seconds, in a thread; its status and time land in `into`."""

    def go():
        time.sleep(after_s)
        start = time.perf_counter()
        r = httpx.post(url + "/admin/reload", headers={"Authorization": f"Bearer {token}"}, timeout=300)
        into.update(reload_status=r.status_code, reload_s=round(time.perf_counter() - start, 2))

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--artifact", type=Path, required=True, help="an exported artifact directory")
    p.add_argument("--requests", choices=("user", "new", "history"), default="new")
    p.add_argument("--rate", type=float, required=True, help="target requests per second (e.g. half the maximum "
                                                             "bench/serve_wrk.py measured)")
    p.add_argument("--minutes", type=int, default=10)
    p.add_argument("--reloads", type=int, default=10, help="reloads, one in each of the first N minutes")
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--warmup", type=float, default=30.0)
    args = parse_load_args(p, argv)
    if args.rate <= 0 or args.minutes < 1 or not 0 <= args.reloads <= args.minutes:
        raise SystemExit("--rate must be positive, --minutes >= 1 and 0 <= --reloads <= --minutes")
    args.filter = args.rerank = False  # what serve_wrk's Lua script reads
    delay_ms = args.connections * 1000.0 / args.rate
    script = Path(tempfile.mkdtemp(prefix="soak_")) / "soak.lua"
    script.write_text(lua_script(args, args.artifact) + f"\ndelay = function() return {delay_ms:.3f} end\n")
    token = secrets.token_urlsafe(16)
    os.environ["TOWERREC_RELOAD_TOKEN"] = token  # the server's reload token (running_server passes the env)
    result = {"artifact": str(args.artifact), "requests_kind": args.requests, "rate_target": args.rate,
              "connections": args.connections, "delay_ms": round(delay_ms, 2), "minutes": args.minutes,
              "reloads": args.reloads, "overrides": list(args.set), "server_cpus": args.server_cpus,
              "client_cpus": args.client_cpus, "loadavg_before": os.getloadavg(), "per_minute": []}
    with running_server(args.artifact, list(args.set), args.server_cpus) as server:
        run_wrk(server.url, script, args.connections, args.warmup, args.client_cpus)
        result["memory_start"] = server.memory_mib()
        for minute in range(args.minutes):
            row: dict = {"minute": minute + 1}
            reloader = reload_later(server.url, token, 30.0, row) if minute < args.reloads else None
            row.update(run_wrk(server.url, script, args.connections, 60, args.client_cpus))
            if reloader is not None:
                reloader.join(300)
            result["per_minute"].append(row)
            lat = row["latency_ms"]
            print(f"minute {minute + 1}: QPS {row['qps']}, p50 {lat['p50']} ms, p99 {lat['p99']} ms, max "
                  f"{lat['max']} ms, errors {row['errors'] or 0}"
                  + (f", reload {row.get('reload_status')} in {row.get('reload_s')} s" if reloader else ""),
                  flush=True)
        result["memory_end"] = server.memory_mib()
    rss0, rss1 = result["memory_start"]["rss_mib"], result["memory_end"]["rss_mib"]
    rows = result["per_minute"]
    result.update(memory_growth=round(rss1 / rss0 - 1, 4), loadavg_after=os.getloadavg(),
                  errors=sum(sum(r["errors"].values()) for r in rows),
                  reloads_ok=sum(r.get("reload_status") == 200 for r in rows),
                  p99_max_ms=max(r["latency_ms"]["p99"] for r in rows),
                  qps_mean=round(sum(r["qps"] for r in rows) / len(rows), 1))
    print(f"soak: {args.minutes} min at ~{result['qps_mean']} QPS (target {args.rate:g}), {result['errors']} errors, "
          f"{result['reloads_ok']}/{args.reloads} reloads ok, worst minute p99 {result['p99_max_ms']} ms, memory "
          f"{rss0} -> {rss1} MiB ({result['memory_growth']:+.1%})")
    write_results(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
