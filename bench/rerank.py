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
    python bench/rerank.py quality --train-head 2000 --set rerank.dtype=int8     # the hidden-state head
    python bench/rerank.py latency --requests 100 --threads 2                     # listwise and pointwise
    python bench/rerank.py latency --requests 5 --scorers listwise                # smoke
    python bench/rerank.py latency --scorers listwise --compare "rerank.dtype=int8"   # side by side
Extra rerank settings go through --set, e.g. --set rerank.prompt.max_item_tokens=10 rerank.permutations=3.
"""

from __future__ import annotations

import argparse
import dataclasses
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


BASE_OVERRIDES = ["rerank.device=cpu"]


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
    q.add_argument("--train-head", type=int, default=0, metavar="USERS",
                   help="rerank.scorer=head: train the head on this many other users' validation lists first")
    q.add_argument("--head-lists", type=Path, default=None, help="cache of the head's training lists (.npz)")
    q.add_argument("--head-components", type=int, default=16, help="principal directions the head reads")
    lat = p.add_argument_group("latency")
    lat.add_argument("--requests", type=int, default=100)
    lat.add_argument("--warmup", type=int, default=3)
    lat.add_argument("--scorers", default="listwise,pointwise")
    lat.add_argument("--compare", nargs="*", default=[],
                     help="override sets timed beside the configured path, one quoted string each, e.g. "
                          "'rerank.dtype=int8 rerank.prompt.max_item_tokens=8'")
    args = p.parse_args(argv)
    args.artifact = args.artifact or latest_artifact()
    return args


def machine() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "affinity": sorted(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads(),
            "loadavg_1min_at_start": os.getloadavg()[0], "quiet_flag": Path("/tmp/bench/QUIET").exists(),
            "torch": torch.__version__}


def train_head(args, rerank_cfg, split, retriever) -> tuple:
    """A head-scorer Reranker: the head trained on --train-head users outside the evaluation users (their lists'
    features cached in --head-lists when given), saved as head.pt in --rerank-dir (or beside --out)."""
    from towerrec.rerank.evaluate import head_lists, head_users, sample_users
    from towerrec.rerank.head import HeadTraining
    from towerrec.rerank.head import train_head as fit
    from towerrec.rerank.reranker import HEAD_FILE, Reranker

    ev = rerank_cfg["eval"]
    evaluated = np.union1d(sample_users(len(split.users), args.valid_users, int(ev.get("seed", 0))),
                           sample_users(len(split.users), args.test_users, int(ev.get("seed", 0))))
    users = head_users(len(split.users), args.train_head, int(ev.get("seed", 0)) + 1, evaluated)
    base = Reranker.from_config({**rerank_cfg, "scorer": "listwise"})
    cache = args.head_lists
    if cache is not None and cache.is_file():
        blob = np.load(cache)
        if not np.array_equal(blob["users"], users):
            raise ValueError(f"{cache}: cached lists of other users; delete it or change --head-lists")
        counts = blob["counts"]
        features = np.split(blob["features"], np.cumsum(counts)[:-1])
        targets = blob["targets"].tolist()
        say(f"head: {len(users)} training lists from {cache}")
    else:
        say(f"head: features of {len(users)} training users (validation stage, outside the {len(evaluated)} "
            "evaluation users)")
        t = time.perf_counter()
        features, targets = head_lists(base, retriever, split, users)
        say(f"head features in {time.perf_counter() - t:.0f} s")
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, users=users, counts=np.array([len(f) for f in features]),
                     features=np.concatenate(features), targets=np.array(targets))
    head, log = fit(features, targets, HeadTraining(components=args.head_components))
    say(f"head trained: {log}")
    folder = args.rerank_dir or (args.out or REPO / "bench" / "results" / "rerank_quality.json").parent
    path = head.save(Path(folder) / (HEAD_FILE if args.rerank_dir else "rerank_head.pt"))
    settings = dataclasses.replace(base.settings, scorer="head", head=str(path))
    return Reranker(base.model, base.tokenizer, settings), {"head_training": log, "head_file": str(path),
                                                            "head_users": int(len(users))}


def quality(args, cfg, split, retriever) -> dict:
    from towerrec.rerank.evaluate import evaluate_rerank, summary_table
    from towerrec.rerank.reranker import RerankSettings, save_rerank_dir
    from towerrec.utils.io import to_plain

    rerank_cfg = {**to_plain(cfg.rerank), "adapter": None}
    rerank_cfg["eval"] = {**rerank_cfg.get("eval", {}), "valid_users": args.valid_users, "test_users": args.test_users}
    reranker, extra = train_head(args, rerank_cfg, split, retriever) if args.train_head else (None, {})
    if reranker is not None:
        rerank_cfg = {**rerank_cfg, "scorer": "head", "head": reranker.settings.head}
    say(f"quality: {args.valid_users} validation + {args.test_users} test users, top_n {cfg.rerank.top_n}, "
        f"scorer {rerank_cfg['scorer']}, adapter {args.adapter}")
    report = evaluate_rerank(rerank_cfg, retriever, split, cfg.eval, adapter=args.adapter, reranker=reranker)
    report.update(extra)
    print(summary_table(report))
    for method, b in report.get("bootstrap", {}).items():
        say(f"{method}: test NDCG@10 {100 * b['relative_gain']:+.1f}% over retrieval, paired bootstrap 95% "
            f"[{100 * b['ci95_low']:+.1f}%, {100 * b['ci95_high']:+.1f}%] ({b['users']} users, "
            f"{b['users_better']} better, {b['users_worse']} worse)")
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
    # variants: each scorer as configured, then each --compare override set; all timed on the same requests,
    # interleaved request by request, so a noisy moment hits every variant alike
    variants = []
    for scorer in [s.strip() for s in args.scorers.split(",") if s.strip()]:
        variants.append((scorer, scorer, [], None))
        for overrides in args.compare:
            variants.append((f"{scorer} {overrides}", scorer, overrides.split(), scorer))
    rerankers, base_of = {}, {}
    for name, scorer, overrides, base in variants:
        base_of[name] = base
        rcfg = compose_config(args.data, overrides=[*BASE_OVERRIDES, *args.set, *overrides]).rerank
        reranker = Reranker.from_config(rcfg, scorer=scorer)
        for history, cands in requests[: args.warmup]:
            reranker.rank(history, cands)
        rerankers[name] = reranker
    times = {name: [] for name in rerankers}
    for history, cands in requests[args.warmup :]:
        for name, reranker in rerankers.items():
            t = time.perf_counter()
            reranker.rank(history, cands)
            times[name].append(1000 * (time.perf_counter() - t))
    results = {}
    for name, reranker in rerankers.items():
        ts = times[name]
        tokens = []
        if reranker.settings.scorer == "listwise":
            for history, cands in requests[args.warmup :]:
                prompt = reranker.scorer.prompts(reranker.render(history), reranker.render(cands))[0][1]
                tokens.append(len(reranker.tokenizer.encode(prompt.text, add_special_tokens=False)))
        q = statistics.quantiles(ts, n=20) if len(ts) > 1 else ts * 19
        base = results[base_of[name]]["p50_ms"] if base_of[name] else None
        results[name] = {"requests": len(ts), "p50_ms": statistics.median(ts), "p95_ms": q[18],
                         "mean_ms": statistics.fmean(ts), "max_ms": max(ts),
                         "mean_prompt_tokens": statistics.fmean(tokens) if tokens else None,
                         "dtype": reranker.settings.dtype, "prompt": dataclasses.asdict(reranker.settings.prompt),
                         "p50_vs_configured": None if base is None else statistics.median(ts) / base}
        r = results[name]
        say(f"{name}: {r['requests']} requests, {cfg.rerank.top_n} candidates: p50 {r['p50_ms']:.0f} ms, "
            f"p95 {r['p95_ms']:.0f} ms, mean {r['mean_ms']:.0f} ms ({r['dtype']}"
            + (f", {r['mean_prompt_tokens']:.0f} prompt tokens" if tokens else "")
            + (f"; p50 x{r['p50_vs_configured']:.2f} of the configured path)" if base else ")"))
    best = min((r["p50_ms"] for n, r in results.items() if n.startswith("listwise")), default=None)
    return {"latency": results, "goal_listwise_p50_ms": 150.0,
            "met": None if best is None else bool(best <= 150.0)}


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(args.threads or (1 if args.mode == "quality" else 2))
    from towerrec.data.load import load_split
    from towerrec.retrieval import Retriever

    cfg = compose_config(args.data, overrides=[*BASE_OVERRIDES, *args.set])
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
