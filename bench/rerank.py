"""LM reranking (towerrec.rerank): ranking quality on a real dataset and per-request latency.

quality: seeded subsets of validation and test users (the same users for every method) of an exported
artifact's dataset; retrieval top-N, then the harness metrics of retrieval alone, the zero-shot LM alone, and
their fusion with the weight tuned on the validation users (grid including 0), plus the fine-tuned LM and its
fusion when --adapter is given. Prints a table, writes JSON (and with --rerank-dir a rerank directory whose
rerank.json holds the tuned weight).

latency: requests built from test users of the same dataset (history = their items, candidates =
`Retriever.recommend` top-N), timed around `Reranker.rank` only (what the service calls; retrieval excluded),
after warm-up, on --threads torch threads; p50/p95 per scorer. Run it on a quiet machine: other jobs on the
cores inflate it.

    python bench/rerank.py quality --valid-users 300 --test-users 500             # Scientific, ~20-40 min
    python bench/rerank.py quality --adapter DIR                                  # + fine-tuned rows
    python bench/rerank.py latency --requests 100 --threads 2                     # listwise and pointwise
    python bench/rerank.py latency --requests 5 --scorers listwise                # smoke
Extra rerank settings go through --set, e.g. --set rerank.prompt.max_item_tokens=10 rerank.permutations=3.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import REPO, compose_config, latest_artifact, say, write_results  # noqa: E402  (bench/ is on sys.path when run as a script)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["quality", "latency"])
    p.add_argument("--data", default="scientific", help="data config the artifact was trained on")
    p.add_argument("--artifact", type=Path, default=None,
                   help="an exported artifact directory (default: the newest Scientific one under logs/train/runs)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: quality 1, latency 2)")
    p.add_argument("--set", nargs="*", default=[], help="extra Hydra overrides, e.g. rerank.permutations=3")
    p.add_argument("--out", type=Path, default=None, help="JSON results (default bench/results/rerank_<mode>.json)")
    q = p.add_argument_group("quality")
    q.add_argument("--valid-users", type=int, default=300)
    q.add_argument("--test-users", type=int, default=500)
    q.add_argument("--adapter", type=Path, default=None, help="LoRA adapter directory: adds fine-tuned rows")
    q.add_argument("--rerank-dir", type=Path, default=None, help="also write a rerank directory (tuned weight)")
    lat = p.add_argument_group("latency")
    lat.add_argument("--requests", type=int, default=100)
    lat.add_argument("--warmup", type=int, default=3)
    lat.add_argument("--scorers", default="listwise,pointwise")
    args = p.parse_args(argv)
    args.artifact = args.artifact or latest_artifact()
    return args


def machine() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "affinity": sorted(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads(),
            "loadavg_1min_at_start": os.getloadavg()[0], "quiet_flag": Path("/tmp/bench/QUIET").exists(),
            "torch": torch.__version__}


def quality(args, cfg, split, retriever) -> dict:
    from towerrec.rerank.evaluate import evaluate_rerank, summary_table
    from towerrec.rerank.reranker import RerankSettings, save_rerank_dir
    from towerrec.utils.io import to_plain

    rerank_cfg = {**to_plain(cfg.rerank), "adapter": None}
    rerank_cfg["eval"] = {**rerank_cfg.get("eval", {}), "valid_users": args.valid_users, "test_users": args.test_users}
    say(f"quality: {args.valid_users} validation + {args.test_users} test users, top_n {cfg.rerank.top_n}, "
        f"scorer {cfg.rerank.scorer}, adapter {args.adapter}")
    report = evaluate_rerank(rerank_cfg, retriever, split, cfg.eval, adapter=args.adapter)
    print(summary_table(report))
    m = report["metrics"]
    best = "finetuned_fused" if args.adapter else "fused"
    base_test, base_val = m["retrieval"]["test/ndcg@10"], m["retrieval"]["val/ndcg@10"]
    goal = {"method": best, "test_ndcg@10_relative_gain": (m[best]["test/ndcg@10"] - base_test) / base_test,
            "val_ndcg@10_not_lower": m[best]["val/ndcg@10"] >= base_val - 1e-12, "goal_relative_gain": 0.03}
    goal["met"] = bool(goal["test_ndcg@10_relative_gain"] >= 0.03 and goal["val_ndcg@10_not_lower"])
    say(f"{best}: test NDCG@10 {m[best]['test/ndcg@10']:.4f} vs retrieval {base_test:.4f} "
        f"({100 * goal['test_ndcg@10_relative_gain']:+.1f}%), validation not lower: {goal['val_ndcg@10_not_lower']}")
    for key, value in report["fusion"].items():
        if key.endswith("weight"):
            say(f"tuned {key}: {value}")
    if args.rerank_dir:
        import dataclasses

        settings = dataclasses.replace(RerankSettings.from_config(rerank_cfg), weight=report["fusion"]["weight"])
        save_rerank_dir(args.rerank_dir, settings, metrics=m["fused"], extra={"report": report})
        say(f"wrote {args.rerank_dir}/rerank.json")
    return {"report": report, "goal": goal}


def latency(args, cfg, split, retriever) -> dict:
    from towerrec.rerank.reranker import Reranker

    examples = split.examples("test")
    rng = np.random.default_rng(0)
    users = rng.choice(len(examples), size=min(args.requests + args.warmup, len(examples)), replace=False)
    items = retriever.items.set_index("item_id")
    ids = split.catalog.item_ids
    requests = []
    for u in users:
        history_ids = [str(ids[i]) for i in examples.histories[u]]
        history = [{"item_id": i, "title": items.at[i, "title"], "brand": items.at[i, "brand"]} for i in history_ids]
        requests.append((history, retriever.recommend(history_ids, k=int(cfg.rerank.top_n))))
    results = {}
    for scorer in [s.strip() for s in args.scorers.split(",") if s.strip()]:
        reranker = Reranker.from_config(cfg.rerank, scorer=scorer)
        for history, cands in requests[: args.warmup]:
            reranker.rank(history, cands)
        times, tokens = [], []
        for history, cands in requests[args.warmup :]:
            t = time.perf_counter()
            reranker.rank(history, cands)
            times.append(1000 * (time.perf_counter() - t))
        if scorer == "listwise":
            for history, cands in requests[args.warmup :]:
                prompt = reranker.scorer.prompts(reranker.render(history), reranker.render(cands))[0][1]
                tokens.append(len(reranker.tokenizer.encode(prompt.text, add_special_tokens=False)))
        q = statistics.quantiles(times, n=20) if len(times) > 1 else times * 19
        results[scorer] = {"requests": len(times), "p50_ms": statistics.median(times), "p95_ms": q[18],
                           "mean_ms": statistics.fmean(times), "max_ms": max(times),
                           "mean_prompt_tokens": statistics.fmean(tokens) if tokens else None,
                           "dtype": str(next(reranker.model.parameters()).dtype)}
        r = results[scorer]
        say(f"{scorer}: {r['requests']} requests, {cfg.rerank.top_n} candidates: p50 {r['p50_ms']:.0f} ms, "
            f"p95 {r['p95_ms']:.0f} ms, mean {r['mean_ms']:.0f} ms ({r['dtype']}"
            + (f", {r['mean_prompt_tokens']:.0f} prompt tokens)" if tokens else ")"))
        del reranker
    goal = results.get("listwise", {}).get("p50_ms")
    return {"latency": results, "goal_listwise_p50_ms": 300.0,
            "met": None if goal is None else bool(goal <= 300.0)}


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(args.threads or (1 if args.mode == "quality" else 2))
    from towerrec.data.load import load_split
    from towerrec.retrieval import Retriever

    cfg = compose_config(args.data, overrides=["rerank.device=cpu", *args.set])
    split = load_split(cfg.data)
    retriever = Retriever(args.artifact)
    say(f"{args.data}: {len(split.users)} users, {split.num_items} items; artifact {args.artifact}")
    t = time.perf_counter()
    result = quality(args, cfg, split, retriever) if args.mode == "quality" else latency(args, cfg, split, retriever)
    result = {"mode": args.mode, "command": "python bench/rerank.py " + " ".join(sys.argv[1:]), "data": args.data,
              "artifact": str(args.artifact), "machine": machine(), "wall_s": time.perf_counter() - t, **result}
    say(f"done in {result['wall_s']:.0f} s")
    out = args.out or REPO / "bench" / "results" / f"rerank_{args.mode}.json"
    write_results(out, json.loads(json.dumps(result, default=str)))


if __name__ == "__main__":
    main()
