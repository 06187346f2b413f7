"""Property-based fuzzing of the service from its own OpenAPI schema (schemathesis), counting test cases,
server errors (5xx) and schema violations.

Starts `python serve.py` on an artifact with the LM stages on (by default the tiny random-init LM, so
/describe, rerank and explanations run their real code paths quickly), then runs
`schemathesis run URL/openapi.json --checks all` in positive and negative modes: every operation gets
schema examples (the service publishes examples with real ids of the served artifact), boundary values
(coverage phase) and random inputs, valid and invalid. Every response is checked: no 5xx, status code
documented, body matching the documented schema and content type, invalid input rejected, valid input
accepted, auth enforced. The reload endpoint is fuzzed without the token (it must answer 401).
Then the raw cases of the test suite (`tests/helpers/serve.py` `probe`, also run by tests/serving/test_fuzz.py)
go to the same server, with and without the reload token: NaN, Infinity, 1e309, huge integers, lone
surrogates, NUL and control characters, deep and oversized bodies, over-long artifact paths, clients that
disconnect mid-body; none may be a 5xx, and /metrics must count exactly the responses the client received.
The server's own /metrics are read afterwards as a second count of 5xx answers.

    python bench/serve_fuzz.py                                   # Scientific artifact, 100 examples/operation
    python bench/serve_fuzz.py --artifact logs/train/runs/RUN/artifact --max-examples 30
    python bench/serve_fuzz.py --lm none --out bench/results/serve_fuzz.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from common import latest_artifact, write_results  # noqa: E402
from helpers.serve import http_counts, probe  # noqa: E402
from serve_load import running_server  # noqa: E402

TOKEN = "serve-fuzz-token"  # the reload token of the fuzzed server (the raw cases send it, and wrong ones)

SCHEMA_CHECKS = ("response_schema_conformance", "status_code_conformance", "content_type_conformance",
                 "response_headers_conformance")


def server_errors(metrics_text: str) -> dict[str, int]:
    """{'METHOD route status': count} of the 5xx answers the server counted."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            if s.name == "towerrec_http_requests_total" and s.labels.get("status", "").startswith("5"):
                out[f"{s.labels['method']} {s.labels['route']} {s.labels['status']}"] = int(s.value)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--artifact", type=Path, default=None,
                   help="an exported artifact directory (default: the newest Scientific one under logs/train/runs)")
    p.add_argument("--lm", default="random_init", help="rerank.model_path for the LM stages (random_init, "
                                                       "smollm2, a directory) or 'none' (LM stages off)")
    p.add_argument("--max-examples", type=int, default=100, help="schemathesis test cases per operation and phase")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--server-cpus", help="taskset CPU list of the server")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra serve.py overrides")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    args.artifact = args.artifact or latest_artifact()

    overrides = [f"reload_token={TOKEN}", *args.set]
    max_body_bytes = next((int(o.split("=", 1)[1]) for o in args.set if o.startswith("service.max_body_bytes=")),
                          65536)
    if args.lm != "none":
        overrides += [f"rerank.model_path={args.lm}", "service.rerank.enabled=true", "service.explain.enabled=true"]
    report_path = Path(tempfile.mkdtemp(prefix="serve_fuzz_")) / "schemathesis.json"
    result = {"artifact": str(args.artifact), "lm": args.lm, "overrides": overrides, "max_examples": args.max_examples,
              "seed": args.seed}
    with running_server(args.artifact, overrides, args.server_cpus) as server:
        cmd = [str(Path(sys.executable).with_name("schemathesis")), "run", server.url + "/openapi.json",
               "--checks", "all", "--mode", "all", "--max-examples", str(args.max_examples), "--seed", str(args.seed),
               "--workers", "1", "--request-timeout", "60", "--no-color", "--report", "json",
               "--report-json-path", str(report_path)]
        before = server_errors(httpx.get(server.url + "/metrics").text)  # e.g. /readyz 503 while loading
        start = time.perf_counter()
        run = subprocess.run(cmd, capture_output=True, text=True, cwd=report_path.parent,
                             env={**os.environ, "NO_COLOR": "1"})
        result["seconds"] = round(time.perf_counter() - start, 1)
        counted_before, disconnects_before = http_counts(httpx.get(server.url + "/metrics").text)
        seen, raw_failures, disconnects = probe(server.url, TOKEN, max_body_bytes)
        time.sleep(2)  # the server notices the disconnects asynchronously
        metrics_text = httpx.get(server.url + "/metrics").text
        counted, disconnected = http_counts(metrics_text)
        result["raw"] = {"responses": dict(sorted(seen.items())), "failures": raw_failures,
                         "disconnects_made": disconnects, "disconnects_counted": disconnected - disconnects_before,
                         "metrics_match_clients": counted - counted_before == seen and not counted_before - counted}
        after = server_errors(metrics_text)
        result["server_5xx"] = {k: n - before.get(k, 0) for k, n in after.items() if n > before.get(k, 0)}
        result["server_log"] = str(server.log_path)
    print(run.stdout[-6000:])
    if run.returncode not in (0, 1) or not report_path.is_file():
        print(run.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"schemathesis did not run (exit {run.returncode})")
    report = json.loads(report_path.read_text())
    failures = report.get("failures") or []
    kinds = {f"{f.get('code')} {f.get('title')}": {"count": f.get("count"), "operations": f.get("operations")}
             for f in failures}
    cases = report["test_cases"]
    result.update({"schemathesis_version": report.get("schemathesis_version"), "exit_code": run.returncode,
                   "test_cases": cases["generated"], "cases_with_failures": cases["with_failures"],
                   "unique_failures": cases["unique_failures"], "errored": cases["errored"],
                   "failure_kinds": kinds, "phases": {k: v["status"] for k, v in report["phases"].items()},
                   "operations": report["operations"]["tested"], "schemathesis_report": str(report_path)})
    print(f"schemathesis {result['schemathesis_version']}: {result['test_cases']} test cases over "
          f"{result['operations']} operations in {result['seconds']} s; failures: {result['unique_failures']} "
          f"unique ({kinds or 'none'}); server 5xx (from /metrics): {result['server_5xx']}")
    raw = result["raw"]
    print(f"raw cases: {sum(seen.values())} responses {raw['responses']}, failures: {raw_failures or 'none'}; "
          f"/metrics matches what the client saw: {raw['metrics_match_clients']}; "
          f"disconnects {raw['disconnects_counted']}/{disconnects} counted as such")
    write_results(args.out, result)
    raw_ok = not raw_failures and raw["metrics_match_clients"] and raw["disconnects_counted"] == disconnects
    return 0 if run.returncode == 0 and not result["server_5xx"] and raw_ok else 1


if __name__ == "__main__":
    sys.exit(main())
