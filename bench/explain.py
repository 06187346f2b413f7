"""Explanations (towerrec.rerank.explain, checked by towerrec.rerank.grounding) on a real dataset, free and
template mode on the same users: how often they are grounded, and what they cost.

For --users seeded test users of an exported artifact's dataset, the history is the user's items (oldest
first, as product dicts from the artifact's items table) and the products are `Retriever.recommend`'s top
--top-k (history excluded). For each --mode (free, template or both), `Explainer.explain_many` explains all of
them (free: first answers batched per user, constrained decoding unless --set rerank.explain.constrain=false).

Reported per mode:
  raw grounded rate    share of FIRST answers that are well-formed and pass `check_grounded`
  final grounded rate  share of products that end with an explanation shown (grounded, possibly after
                       regeneration); the rest are refused (text None), never shown ungrounded
  shown ungrounded     final texts re-checked independently with the full check (must be 0)
  what was flagged     counts by kind (brand / category / product / number / attribute / claim / example /
                       misspelled / malformed)
  time per explanation mean wall time of explain_many per user / products
  request latency      per user: retrieval (recommend) + explanations of its top-k, p50/p95 (seconds)
  samples              --samples seeded (user, product) pairs, the same for every mode, verbatim
With --describe N, also `Explainer.describe` (product copy) for the top product of the first N users; with
--timing N, the first attempt's generation for N users with and without constrained decoding (free mode).

Long runs split into parts on the same users: `--part 2/4` explains the second quarter of them (write each to
its own --out), and `--merge A.json B.json ... --out ALL.json` sums the parts into one result.

    python bench/explain.py --users 200 --mode template --out bench/results/explain_template.json
    python bench/explain.py --users 200 --mode free --part 1/4 --out /tmp/free1.json   # ... 4/4, then --merge
    python bench/explain.py --users 5 --out /tmp/x.json                                 # smoke, both modes
Latency figures need a quiet machine (nothing else on the cores); --threads sets torch threads.
"""

from __future__ import annotations

import argparse
import collections
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

GOAL = 0.95
MODES = ("free", "template")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="scientific", help="data config the artifact was trained on")
    p.add_argument("--artifact", type=Path, default=None,
                   help="an exported artifact directory (default: the newest Scientific one under logs/train/runs)")
    p.add_argument("--mode", choices=[*MODES, "both"], default="both")
    p.add_argument("--users", type=int, default=200)
    p.add_argument("--part", default="1/1", help="I/N: only the I-th of N equal slices of the seeded users")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--describe", type=int, default=0, help="also product copy for the first N users' top product")
    p.add_argument("--timing", type=int, default=0,
                   help="also time free mode's first generation with and without constraints for N users")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", nargs="*", default=[], help="extra Hydra overrides, e.g. rerank.explain.one_shot=false")
    p.add_argument("--samples", type=int, default=20, help="(user, product) pairs kept verbatim per mode")
    p.add_argument("--verbose", action="store_true", help="log every raw answer and what became of it")
    p.add_argument("--merge", nargs="*", type=Path, default=None, help="merge these part results into --out")
    p.add_argument("--out", type=Path, default=REPO / "bench/results/explain.json")
    args = p.parse_args(argv)
    if args.merge is None:
        args.artifact = args.artifact or latest_artifact()
    index, _, parts = args.part.partition("/")
    if not (index.isdigit() and parts.isdigit() and 1 <= int(index) <= int(parts)):
        p.error(f"--part must be I/N with 1 <= I <= N, got {args.part!r}")
    args.part = (int(index), int(parts))
    return args


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def summarize(records: list[dict], latencies: list[float], sample_keys: list) -> dict:
    """One mode's figures from its records (see the module docstring)."""
    total = len(records)
    flagged_kinds = collections.Counter(f.split(":")[0] for r in records for f in r["flagged"])
    by_key = {(r["user"], r["item_id"]): r for r in records}
    result = {
        "explanations": total,
        "raw_grounded_rate": sum(r["first_ok"] for r in records) / total,
        "final_grounded_rate": sum(r["text"] is not None for r in records) / total,
        "refused_rate": sum(r["text"] is None for r in records) / total,
        "shown_ungrounded": sum(r["shown_ungrounded"] for r in records),
        "attempts": {str(k): v for k, v in sorted(collections.Counter(r["attempts"] for r in records).items())},
        "flagged_kinds": dict(flagged_kinds.most_common()),
        "seconds_per_explanation_mean": statistics.mean(r["seconds"] for r in records),
        "request_latency_s": {"p50": pct(latencies, 50), "p95": pct(latencies, 95),
                              "mean": statistics.mean(latencies) if latencies else float("nan")},
        "samples": [by_key[k] for k in sample_keys if k in by_key],
        "flagged_examples": [r for r in records if r["flagged"]][:10],
    }
    result["goal_met"] = result["final_grounded_rate"] >= GOAL and result["shown_ungrounded"] == 0
    return result


def describe_summary(copies: list[dict], seconds: list[float], samples: int) -> dict:
    return {"n": len(copies), "raw_grounded_rate": sum(c["first_ok"] for c in copies) / len(copies),
            "final_grounded_rate": sum(c["text"] is not None for c in copies) / len(copies),
            "shown_ungrounded": sum(c["shown_ungrounded"] for c in copies), "seconds_mean": statistics.mean(seconds),
            "samples": copies[:samples], "copies": copies, "seconds": seconds}


def merge(paths: list[Path], out: Path) -> dict:
    """Parts of one run (same seeded users; each part may hold one mode or both) summed into one result."""
    parts = [json.loads(p.read_text()) for p in paths]
    first = parts[0]
    result = {k: first[k] for k in ("artifact", "config", "model", "top_k", "machine", "vocabulary", "samples",
                                    "samples_seed")}
    result["command"] = [p["command"] for p in parts]
    result["users"] = first["users"]
    result["modes"] = {}
    modes = list(dict.fromkeys(m for p in parts for m in p["modes"]))
    records = {m: [r for p in parts if m in p["modes"] for r in p["modes"][m]["records"]] for m in modes}
    keys = [(r["user"], r["item_id"]) for r in records[modes[0]]]  # samples: pairs every mode explained
    keys = [k for k in keys if all(k in {(r["user"], r["item_id"]) for r in records[m]} for m in modes)]
    picked = np.random.default_rng(first["samples_seed"]).choice(len(keys), size=min(first["samples"], len(keys)),
                                                                 replace=False)
    for mode in modes:
        mine = [p for p in parts if mode in p["modes"]]
        latencies = [x for p in mine for x in p["modes"][mode]["latencies"]]
        result["modes"][mode] = {"users": sum(p["users_in_part"] for p in mine),
                                 **summarize(records[mode], latencies, [keys[i] for i in sorted(picked)])}
    described = [p["describe"] for p in parts if "describe" in p]
    if described:
        result["describe"] = {m: describe_summary([c for d in described if m in d for c in d[m].get(
                                                      "copies", d[m]["samples"])],
                                                  [x for d in described if m in d for x in d[m].get(
                                                      "seconds", [d[m]["seconds_mean"]] * d[m]["n"])],
                                                  first["samples"])
                              for m in dict.fromkeys(m for d in described for m in d)}
    timing = next((p["timing"] for p in parts if "timing" in p), None)
    if timing:
        result["timing"] = timing
    write_results(out, result)
    report(result)
    return result


def report(result: dict) -> None:
    for mode, m in result["modes"].items():
        say(f"{mode}: {m['explanations']} explanations: raw grounded {m['raw_grounded_rate']:.3f}, final "
            f"{m['final_grounded_rate']:.3f} (refused {m['refused_rate']:.3f}, shown ungrounded "
            f"{m['shown_ungrounded']}), "
            f"goal >= {GOAL}: {'met' if m['goal_met'] else 'NOT met'}; {m['seconds_per_explanation_mean']:.2f} s each; "
            f"flagged {m['flagged_kinds']}")


def explain_users(explainer, mode, users, histories, retriever, top_k, recheck):
    """Records and per-user latencies of one mode."""
    records, latencies = [], []
    for n, (u, history) in enumerate(zip(users, histories)):
        start = time.perf_counter()
        recs = retriever.recommend([h["item_id"] for h in history], k=top_k)
        t_explain = time.perf_counter()
        out = explainer.explain_many(history, recs)
        end = time.perf_counter()
        latencies.append(end - start)
        for rec, e in zip(recs, out):
            shown_bad = e.text is not None and not recheck(e.text, history, rec).grounded
            records.append({"user": int(u), "item_id": rec["item_id"], "title": rec["title"],
                            "history": [h["title"] for h in history[-5:]][::-1], "text": e.text,
                            "grounded": e.grounded, "refused": e.text is None, "attempts": e.attempts,
                            "flagged": e.flagged, "first_ok": e.grounded and e.attempts == 1,
                            "shown_ungrounded": bool(shown_bad), "seconds": (end - t_explain) / max(len(recs), 1)})
        if (n + 1) % 10 == 0 or n + 1 == len(users):
            done = len(records)
            say(f"{mode} {n + 1}/{len(users)} users: raw {sum(r['first_ok'] for r in records) / done:.3f}, final "
                f"{sum(r['text'] is not None for r in records) / done:.3f}, "
                f"{statistics.mean(r['seconds'] for r in records):.2f} s/expl.")
    return records, latencies


def time_constraints(explainer, users, histories, retriever, top_k) -> dict:
    """Free mode's first attempt (one batched generate per user) with and without constrained decoding."""
    cfg = explainer.cfg
    seconds = {"constrained": [], "unconstrained": []}
    tokens = {"constrained": 0, "unconstrained": 0}
    for history in histories:
        recs = retriever.recommend([h["item_id"] for h in history], k=top_k)
        prefix = explainer.explain_prefixes(history, recs)
        prompts = [explainer.prompt(history, r, cfg.explain_task, prefix=p) for r, p in zip(recs, prefix)]
        for name in ("unconstrained", "constrained"):
            start = time.perf_counter()
            allow = [explainer.allowance(history, r) for r in recs] if name == "constrained" else None
            ids = explainer.generate_ids(prompts, cfg.max_new_tokens, allowances=allow, prefix=prefix)
            seconds[name].append(time.perf_counter() - start)
            tokens[name] += sum(len(i) for i in ids)
    return {"users": len(histories), "top_k": top_k,
            **{f"{n}_s_per_user": statistics.mean(v) for n, v in seconds.items()},
            **{f"{n}_ms_per_token": 1000 * sum(seconds[n]) / max(tokens[n], 1) for n in seconds}}


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.merge is not None:
        return merge(args.merge, args.out)
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
    modes = MODES if args.mode == "both" else (args.mode,)
    explainers = {m: Explainer.for_artifact(model, tokenizer, {**explain_cfg, "mode": m}, retriever.artifact)
                  for m in modes}
    any_ex = next(iter(explainers.values()))
    vocab = any_ex.vocabulary
    say(f"vocabulary: {vocab.kinds()}, {len(vocab.attributes)} attribute words; model {settings.model_path} "
        f"{next(model.parameters()).dtype}, {torch.get_num_threads()} thread(s)")

    test = split.examples("test")
    users = np.sort(np.random.default_rng(args.seed).choice(len(test), size=min(args.users, len(test)),
                                                             replace=False))
    index, parts = args.part
    mine = np.array_split(users, parts)[index - 1]
    position = retriever.artifact.position_of_item.get_indexer(split.catalog.item_ids)

    def history_of(u):
        hist_pos = position[test.histories[u]]
        return item_dicts(retriever.items, hist_pos[hist_pos >= 0])

    histories = [history_of(u) for u in mine]

    def recheck(text, history, rec):
        return check_grounded(text, history, rec, vocab, numbers_from_history=any_ex.cfg.numbers_from_history)

    result = {
        "command": "python bench/explain.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "affinity": sorted(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads(),
                    "loadavg_1min_at_start": os.getloadavg()[0]},
        "users": len(users), "users_in_part": len(mine), "part": f"{index}/{parts}", "top_k": args.top_k,
        "artifact": str(args.artifact), "config": explain_cfg, "model": settings.model_path,
        "vocabulary": {**vocab.kinds(), "attribute_words": len(vocab.attributes)},
        "samples": args.samples, "samples_seed": args.seed, "modes": {},
    }
    for mode, explainer in explainers.items():
        records, latencies = explain_users(explainer, mode, mine, histories, retriever, args.top_k, recheck)
        keys = [(r["user"], r["item_id"]) for r in records]
        picked = sorted(np.random.default_rng(args.seed).choice(len(keys), size=min(args.samples, len(keys)),
                                                                replace=False).tolist())
        result["modes"][mode] = {**summarize(records, latencies, [keys[i] for i in picked]),
                                 "records": records, "latencies": latencies}
    if args.describe:
        result["describe"] = {}
        for mode, explainer in explainers.items():
            copies, t = [], []
            for u, history in list(zip(mine, histories))[: args.describe]:
                rec = retriever.recommend([h["item_id"] for h in history], k=1)[0]
                start = time.perf_counter()
                e = explainer.describe(history, rec)
                t.append(time.perf_counter() - start)
                copies.append({"user": int(u), "title": rec["title"], "text": e.text, "attempts": e.attempts,
                               "flagged": e.flagged, "first_ok": e.grounded and e.attempts == 1,
                               "shown_ungrounded": e.text is not None and not recheck(e.text, history, rec).grounded})
            result["describe"][mode] = describe_summary(copies, t, args.samples)
            say(f"describe {mode}: {result['describe'][mode]['final_grounded_rate']:.3f} grounded, "
                f"{statistics.mean(t):.2f} s each")
    if args.timing:
        free = explainers.get("free") or Explainer.for_artifact(model, tokenizer, {**explain_cfg, "mode": "free"},
                                                                retriever.artifact)
        result["timing"] = time_constraints(free, mine[: args.timing], histories[: args.timing], retriever,
                                            args.top_k)
        say(f"timing: {result['timing']}")
    report(result)
    write_results(args.out, result)
    return result


if __name__ == "__main__":
    main()
