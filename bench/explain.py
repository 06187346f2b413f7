"""Explanations (towerrec.rerank.explain, checked by towerrec.rerank.grounding) on a real dataset: how often they
are grounded, and what they cost.

For --users seeded test users of an exported artifact's dataset, the history is the user's items (oldest
first, as product dicts from the artifact's items table) and the products are `Retriever.recommend`'s top
--top-k (history excluded). `Explainer.explain_many` explains all of them (first answers batched per user).

Reported:
  raw grounded rate    share of FIRST answers that are well-formed and pass `check_grounded`
  final grounded rate  share of products that end with an explanation shown (grounded, possibly after
                       regeneration); the rest are refused (text None), never shown ungrounded
  shown ungrounded     final texts re-checked independently (must be 0)
  what was flagged     counts by kind (brand / category / product / number / example / malformed)
  time per explanation mean wall time of explain_many per user / products
  request latency      per user: retrieval (recommend) + explanations of its top-k, p50/p95 (seconds)
With --describe N, also `Explainer.describe` (personalized copy) for the top product of the first N users.

    python bench/explain.py --users 200                  # Scientific, 600 explanations, ~15-30 min on one core
    python bench/explain.py --users 5 --out /tmp/x.json  # smoke
Latency figures need a quiet machine (nothing else on the cores); --threads sets torch threads.
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import REPO, compose_config, latest_artifact, say, write_results  # noqa: E402  (bench/ is on sys.path when run as a script)

GOAL = 0.95


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="scientific", help="data config the artifact was trained on")
    p.add_argument("--artifact", type=Path, default=None,
                   help="an exported artifact directory (default: the newest Scientific one under logs/train/runs)")
    p.add_argument("--users", type=int, default=200)
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--describe", type=int, default=0, help="also product copy for the first N users' top product")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", nargs="*", default=[], help="extra Hydra overrides, e.g. rerank.explain.one_shot=false")
    p.add_argument("--samples", type=int, default=30, help="explanations kept verbatim in the JSON")
    p.add_argument("--verbose", action="store_true", help="log every raw answer and what became of it")
    p.add_argument("--out", type=Path, default=REPO / "bench/results/explain.json")
    args = p.parse_args(argv)
    args.artifact = args.artifact or latest_artifact()
    return args


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(args.threads)
    if args.verbose:
        import logging

        logging.basicConfig(level=logging.INFO)
        logging.getLogger("towerrec.rerank.explain").setLevel(logging.DEBUG)
    from omegaconf import OmegaConf

    from towerrec.data.load import load_split
    from towerrec.rerank.explain import Explainer
    from towerrec.rerank.finetune import item_dicts
    from towerrec.rerank.grounding import check_grounded
    from towerrec.rerank.lm import load_lm
    from towerrec.rerank.reranker import RerankSettings
    from towerrec.retrieval import Retriever

    cfg = compose_config(args.data, overrides=args.set)
    split = load_split(cfg.data)
    retriever = Retriever(args.artifact)
    settings = RerankSettings.from_config(cfg.rerank)
    model, tokenizer = load_lm(settings.lm_config())
    explain_cfg = OmegaConf.to_container(cfg.rerank.explain, resolve=True)
    explainer = Explainer.for_artifact(model, tokenizer, explain_cfg, retriever.artifact)
    say(f"vocabulary: {explainer.vocabulary.kinds()}; model {settings.model_path} {next(model.parameters()).dtype}, "
        f"{torch.get_num_threads()} thread(s)")

    test = split.examples("test")
    users = np.sort(np.random.default_rng(args.seed).choice(len(test), size=min(args.users, len(test)),
                                                             replace=False))
    position = retriever.artifact.position_of_item.get_indexer(split.catalog.item_ids)
    records, latencies, per_item = [], [], []
    for n, u in enumerate(users):
        hist_pos = position[test.histories[u]]
        history = item_dicts(retriever.items, hist_pos[hist_pos >= 0])
        start = time.perf_counter()
        recs = retriever.recommend([h["item_id"] for h in history], k=args.top_k)
        t_explain = time.perf_counter()
        out = explainer.explain_many(history, recs)
        end = time.perf_counter()
        latencies.append(end - start)
        per_item.append((end - t_explain) / max(len(recs), 1))
        for rec, e in zip(recs, out):
            recheck = check_grounded(e.text, history, rec, explainer.vocabulary,
                                     numbers_from_history=explainer.cfg.numbers_from_history) if e.text else None
            records.append({"user": int(u), "item_id": rec["item_id"], "title": rec["title"], "text": e.text,
                            "grounded": e.grounded, "attempts": e.attempts, "flagged": e.flagged,
                            "first_ok": e.grounded and e.attempts == 1,
                            "shown_ungrounded": bool(recheck is not None and not recheck.grounded)})
        if (n + 1) % 10 == 0 or n + 1 == len(users):
            done = len(records)
            say(f"{n + 1}/{len(users)} users: raw {sum(r['first_ok'] for r in records) / done:.3f}, final "
                f"{sum(r['text'] is not None for r in records) / done:.3f}, {statistics.mean(per_item):.2f} s/expl.")

    total = len(records)
    flagged_kinds = collections.Counter(f.split(":")[0] for r in records for f in r["flagged"])
    result = {
        "command": "python bench/explain.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "affinity": sorted(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads(),
                    "loadavg_1min_at_end": os.getloadavg()[0], "quiet_flag": Path("/tmp/bench/QUIET").exists()},
        "users": len(users), "explanations": total, "top_k": args.top_k, "artifact": str(args.artifact),
        "config": explain_cfg, "model": settings.model_path,
        "raw_grounded_rate": sum(r["first_ok"] for r in records) / total,
        "final_grounded_rate": sum(r["text"] is not None for r in records) / total,
        "refused_rate": sum(r["text"] is None for r in records) / total,
        "shown_ungrounded": sum(r["shown_ungrounded"] for r in records),
        "attempts": dict(sorted(collections.Counter(r["attempts"] for r in records).items())),
        "flagged_kinds": dict(flagged_kinds.most_common()),
        "seconds_per_explanation_mean": statistics.mean(per_item),
        "request_latency_s": {"p50": pct(latencies, 50), "p95": pct(latencies, 95), "mean": statistics.mean(latencies),
                              "what": f"recommend top-{args.top_k} + explain_many, one user per request"},
        "goal": {"final_grounded_rate": GOAL},
        "samples": records[: args.samples],
        "flagged_examples": [r for r in records if r["flagged"]][: args.samples],
    }
    result["goal"]["met"] = result["final_grounded_rate"] >= GOAL and result["shown_ungrounded"] == 0
    if args.describe:
        copies, t = [], []
        for u in users[: args.describe]:
            hist_pos = position[test.histories[u]]
            history = item_dicts(retriever.items, hist_pos[hist_pos >= 0])
            rec = retriever.recommend([h["item_id"] for h in history], k=1)[0]
            start = time.perf_counter()
            e = explainer.describe(history, rec)
            t.append(time.perf_counter() - start)
            copies.append({"user": int(u), "title": rec["title"], "text": e.text, "attempts": e.attempts,
                           "flagged": e.flagged, "first_ok": e.grounded and e.attempts == 1})
        result["describe"] = {"n": len(copies), "raw_grounded_rate": sum(c["first_ok"] for c in copies) / len(copies),
                              "final_grounded_rate": sum(c["text"] is not None for c in copies) / len(copies),
                              "seconds_mean": statistics.mean(t), "samples": copies[: args.samples]}
    say(f"{total} explanations for {len(users)} users: raw grounded {result['raw_grounded_rate']:.3f}, final "
        f"{result['final_grounded_rate']:.3f} (refused {result['refused_rate']:.3f}, shown ungrounded "
        f"{result['shown_ungrounded']}), goal >= {GOAL}: {'met' if result['goal']['met'] else 'NOT met'}")
    say(f"attempts {result['attempts']}; flagged {result['flagged_kinds']}")
    say(f"{result['seconds_per_explanation_mean']:.2f} s per explanation; request (recommend + {args.top_k} "
        f"explanations) p50 {result['request_latency_s']['p50']:.2f} s, p95 {result['request_latency_s']['p95']:.2f} s")
    if args.describe:
        d = result["describe"]
        say(f"describe: {d['n']} copies, raw {d['raw_grounded_rate']:.3f}, final {d['final_grounded_rate']:.3f}, "
            f"{d['seconds_mean']:.2f} s each")
    write_results(args.out, result)
    return result


if __name__ == "__main__":
    main()
