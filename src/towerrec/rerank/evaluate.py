"""Evaluate LM reranking with the full-ranking harness (`towerrec.evaluation`) on a seeded subset of users.

For each stage, `rerank.eval.{valid,test}_users` users are drawn with `rerank.eval.seed` (the same users for
every method). Each user is embedded and searched exactly as `towerrec.retrieval.evaluate_artifact` does
(`Retriever.embed_histories`, for text and sequence artifacts alike; history items excluded), giving the top
`rerank.top_n` candidates with their retrieval scores. A method orders those candidates; the harness then
ranks the full catalog as: the reordered top-N first, then every other item by retrieval score, history items
excluded (-inf), so every metric (Recall/NDCG/MRR@K, coverage, novelty, ...) is the harness's own and
"retrieval" reproduces `evaluate_artifact` on those users.

Methods: `retrieval` (retrieval order), `lm` (the zero-shot LM score alone; ties in retrieval order), `fused`
(fusion of both with the weight tuned on the validation users, grid including 0), and with an adapter,
`finetuned_lm` / `finetuned_fused` (its own weight tuned the same way). `report["bootstrap"][method]`: the
method's relative test NDCG@10 gain over retrieval with a paired bootstrap 95% interval over the test users.

`head_lists` gives the training lists of `rerank.scorer=head`'s CandidateHead: the validation-stage lists of
other users (`head_users`: never the sampled evaluation users), the LM frozen.

    report = evaluate_rerank(cfg.rerank, retriever, split, cfg.eval)            # dict, see below
    python bench/rerank.py quality --valid-users 300 --test-users 1000           # the Scientific figures

`towerrec.tasks.rerank` is the `stage=rerank` entry point: it loads the artifact and split, evaluates, and
writes the rerank directory (rerank.json with the tuned weight and metrics; the adapter copied into adapter/).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from towerrec import evaluation
from towerrec.data.splits import Examples, Split
from towerrec.rerank import fusion
from towerrec.rerank.head import HeadFeatures
from towerrec.rerank.reranker import Reranker, RerankSettings
from towerrec.retrieval import Retriever
from towerrec.utils.io import to_plain

log = logging.getLogger(__name__)

EVAL_KEYS = {"valid_users": 300, "test_users": 1000, "seed": 0, "metric": "ndcg@10", "grid": list(fusion.DEFAULT_GRID)}


def sample_users(num_total: int, num_users: int | None, seed: int) -> np.ndarray:
    """Sorted indices of `num_users` users out of `num_total` (all when None or larger), seeded."""
    if num_users is None or num_users >= num_total:
        return np.arange(num_total)
    if num_users < 1:
        raise ValueError(f"rerank.eval: the number of users must be positive, got {num_users}")
    return np.sort(np.random.default_rng(seed).choice(num_total, size=num_users, replace=False))


@dataclasses.dataclass
class Candidates:
    """One stage's sampled users and their retrieved top-N."""

    stage: str
    users: np.ndarray  # (U,) user indices in the split
    histories: list[np.ndarray]  # U arrays of split item indices, oldest first
    targets: np.ndarray  # (U,) split item index
    user_emb: torch.Tensor  # (U, D) unit-norm user vectors
    items: list[np.ndarray]  # U arrays (C_u,) of split item indices, retrieval order
    scores: list[np.ndarray]  # U arrays (C_u,) of retrieval scores

    def target_slots(self) -> list[int]:
        """Per user, the target's index among its candidates, or -1."""
        out = []
        for cands, t in zip(self.items, self.targets):
            hit = np.flatnonzero(cands == t)
            out.append(int(hit[0]) if len(hit) else -1)
        return out


class _Catalog:
    """Split item indices <-> artifact positions (the artifact's ItemTable shows the products)."""

    def __init__(self, retriever: Retriever, split: Split):
        art = retriever.artifact
        self.table = art.table
        self.position = self.table.positions_of_items(split.catalog.item_ids)  # (N_split,) -> artifact position
        self.split_of_position = np.full(art.num_items, -1, dtype=np.int64)
        ok = self.position >= 0
        self.split_of_position[self.position[ok]] = np.flatnonzero(ok)
        self.item_emb = torch.from_numpy(np.ascontiguousarray(art.embeddings[np.maximum(self.position, 0)]))  # (N, D)
        self.missing = torch.from_numpy(~ok)

    def item(self, split_index: int, score: float | None = None) -> dict:
        return self.table.product(self.position[split_index], score)


def retrieve(retriever: Retriever, split: Split, stage: str, users: np.ndarray, top_n: int,
             catalog: _Catalog | None = None, batch_size: int = 256) -> Candidates:
    """Embed `users` of `stage` as evaluate_artifact does and search their top_n (history excluded)."""
    catalog = catalog or _Catalog(retriever, split)
    examples = split.examples(stage)
    histories = [examples.histories[u] for u in users]
    user_emb = retriever.embed_histories([catalog.position[h] for h in histories], batch_size=batch_size)  # (U, D)
    exclude = [{int(catalog.table.row_ids[p]) for p in catalog.position[h] if p >= 0} for h in histories]
    hits = retriever.search(user_emb, top_n, exclude)
    items, scores = [], []
    for user_hits in hits:
        split_idx = catalog.split_of_position[catalog.table.positions_of_rows([r for r, _ in user_hits])].tolist()
        keep = [j for j, s in enumerate(split_idx) if s >= 0]  # products the split does not know cannot be ranked
        items.append(np.array([split_idx[j] for j in keep], dtype=np.int64))
        scores.append(np.array([user_hits[j][1] for j in keep], dtype=np.float64))
    return Candidates(stage, users, histories, examples.targets[users], torch.from_numpy(user_emb), items, scores)


def lm_scores(reranker: Reranker, cands: Candidates, catalog: _Catalog, progress: bool = True) -> list[np.ndarray]:
    histories = [[catalog.item(i) for i in h] for h in cands.histories]
    candidates = [[catalog.item(i, s) for i, s in zip(items, scores)]
                  for items, scores in zip(cands.items, cands.scores)]
    return reranker.lm_scores(histories, candidates, progress=progress)


def harness_metrics(cands: Candidates, orders: list[np.ndarray], split: Split, catalog: _Catalog,
                    eval_cfg: evaluation.EvalConfig | Mapping | None = None) -> dict[str, float]:
    """Harness metrics when user u's candidates are shown in order `orders[u]` (indices into cands.items[u]),
    then every other item by retrieval score."""
    cfg = evaluation.EvalConfig.from_any(eval_cfg)
    boost = 10.0  # > any cosine: the reranked list comes first

    def scorer(histories, users):
        users = torch.as_tensor(users, dtype=torch.long)
        scores = cands.user_emb[users] @ catalog.item_emb.T  # (B, N)
        scores[:, catalog.missing] = -float("inf")
        for row, u in enumerate(users.tolist()):
            ranked = cands.items[u][orders[u]]  # (C,) best first
            scores[row, torch.from_numpy(ranked)] = boost + torch.arange(len(ranked), 0, -1, dtype=scores.dtype)
        return scores

    examples = Examples(np.arange(len(cands.users)), cands.histories, cands.targets)
    return evaluation.evaluate(scorer, examples, split.num_items, item_counts=split.item_counts(),
                               item_categories=split.catalog.top_category(), **cfg.kwargs())


def _method_orders(cands: Candidates, lm: list[np.ndarray] | None, weight: float | None, normalize: str):
    if lm is None:  # retrieval order
        return [np.arange(len(c)) for c in cands.items]
    if weight is None:  # the LM alone
        return [fusion.order(s) for s in lm]
    return [fusion.order(fusion.fuse(r, s, weight, normalize)) for r, s in zip(cands.scores, lm)]


def evaluate_rerank(rerank_cfg, retriever: Retriever, split: Split, eval_cfg: Mapping | None = None, *,
                    adapter: str | Path | None = None, reranker: Reranker | None = None,
                    progress: bool = True) -> dict:
    """Tune the fusion weight on validation users, evaluate every method on validation and test users.

    Returns {"settings", "users": {"valid": U, "test": U}, "fusion": {"weight", "grid": {w: ndcg}, ...},
    "metrics": {method: {"val/...": ..., "test/...": ...}}, "seconds": {...}} (finetuned_* with an adapter).
    """
    cfg = to_plain(rerank_cfg)
    ev = {**EVAL_KEYS, **dict(cfg.get("eval") or {})}
    settings = reranker.settings if reranker is not None else RerankSettings.from_config(cfg)
    metric = str(ev["metric"])
    k = int(metric.split("@")[1]) if metric.startswith("ndcg@") else None
    if k is None:
        raise ValueError(f"rerank.eval.metric must be ndcg@K, got {metric!r}")
    if settings.top_n < k:
        log.warning("rerank.top_n=%d < %d: the fusion weight is tuned on the reranked top %d only (the rest of "
                    "the top %d is retrieval's, the same for every weight)", settings.top_n, k, settings.top_n, k)
    catalog = _Catalog(retriever, split)
    seconds: dict[str, float] = {}
    stages = {}
    for stage, key in (("valid", "valid_users"), ("test", "test_users")):
        users = sample_users(len(split.users), ev[key], int(ev["seed"]))
        t = time.perf_counter()
        stages[stage] = retrieve(retriever, split, stage, users, settings.top_n, catalog)
        seconds[f"retrieve_{stage}"] = time.perf_counter() - t

    def prefixed(stage: str, m: dict) -> dict:
        return evaluation.prefix(m, "val" if stage == "valid" else stage)

    metrics: dict[str, dict] = {"retrieval": {}}
    for stage, cands in stages.items():
        metrics["retrieval"].update(prefixed(stage, harness_metrics(cands, _method_orders(cands, None, None, ""),
                                                                    split, catalog, eval_cfg)))
    report = {"settings": dataclasses.asdict(settings), "metric": metric, "fusion": {},
              "users": {s: int(len(c.users)) for s, c in stages.items()}, "metrics": metrics, "seconds": seconds}

    variants = [("", None)] + ([("finetuned_", adapter)] if adapter else [])
    for name, adapter_dir in variants:
        if adapter_dir is None and reranker is not None:
            model = reranker
        else:
            model = Reranker.from_config(cfg, **({"adapter": str(adapter_dir)} if adapter_dir else {}))
        lm = {}
        for stage, cands in stages.items():
            t = time.perf_counter()
            lm[stage] = lm_scores(model, cands, catalog, progress)
            seconds[f"{name}lm_{stage}"] = time.perf_counter() - t
        weight, grid = fusion.tune_weight(stages["valid"].scores, lm["valid"], stages["valid"].target_slots(),
                                          grid=ev["grid"], method=settings.normalize, k=k)
        log.info("%sfusion weight tuned on %d validation users: w=%.2f (%s %.4f at w=0 -> %.4f)", name,
                 len(stages["valid"].users), weight, metric, grid[0.0], grid[weight])
        report["fusion"][f"{name}weight"] = weight
        report["fusion"][f"{name}grid"] = {str(w): v for w, v in grid.items()}
        base = per_user_ndcg(stages["test"], _method_orders(stages["test"], None, None, ""), k)
        for method, w in ((f"{name}lm", None), (f"{name}fused", weight)):
            metrics[method] = {}
            for stage, cands in stages.items():
                orders = _method_orders(cands, lm[stage], w, settings.normalize)
                metrics[method].update(prefixed(stage, harness_metrics(cands, orders, split, catalog, eval_cfg)))
                if stage == "test":
                    report.setdefault("bootstrap", {})[method] = paired_bootstrap(base, per_user_ndcg(cands, orders, k))
        del model
    return report


def head_users(num_total: int, num_users: int, seed: int, exclude: np.ndarray) -> np.ndarray:
    """Sorted indices of `num_users` users out of `num_total` outside `exclude` (the evaluation users), seeded."""
    free = np.setdiff1d(np.arange(num_total), exclude)
    if num_users > len(free):
        raise ValueError(f"{num_users} head-training users asked for, only {len(free)} are outside the "
                         "evaluation users")
    return np.sort(np.random.default_rng(seed).choice(free, size=num_users, replace=False))


def head_lists(reranker: Reranker, retriever: Retriever, split: Split, users: np.ndarray, progress: bool = True
               ) -> tuple[list[np.ndarray], list[int]]:
    """Training lists of `rerank.scorer=head`: `users`' validation-stage top_n (history items excluded, as in
    evaluation) as HeadFeatures of `reranker`'s frozen LM, and each list's target slot (-1: not retrieved).
    Pass users outside the evaluation users (`head_users`); train with `head.train_head`."""
    catalog = _Catalog(retriever, split)
    cands = retrieve(retriever, split, "valid", users, reranker.settings.top_n, catalog)
    feats = HeadFeatures(reranker.model, reranker.tokenizer, reranker.settings.prompt, reranker.settings.batch_size)
    histories = [reranker.render([catalog.item(i) for i in h]) for h in cands.histories]
    candidates = [reranker.render([catalog.item(i) for i in items]) for items in cands.items]
    return feats.features(histories, candidates, progress=progress), cands.target_slots()


def per_user_ndcg(cands: Candidates, orders: list[np.ndarray], k: int = 10) -> np.ndarray:
    """(U,) NDCG@k of each user's target when its candidates are shown in `orders` (the harness's NDCG@k for
    k <= top_n: a target outside the candidates scores 0 in the top k either way)."""
    return np.array([fusion.ndcg_in_list(o, t, k) for o, t in zip(orders, cands.target_slots())])


def paired_bootstrap(base: np.ndarray, new: np.ndarray, samples: int = 2000, seed: int = 0) -> dict[str, float]:
    """Relative gain mean(new) / mean(base) - 1 over users, with a 95% percentile interval from `samples`
    resamplings of the users (the same users for both: paired)."""
    base, new = np.asarray(base, dtype=np.float64), np.asarray(new, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(base), size=(samples, len(base)))  # (S, U)
    b, n = base[idx].mean(1), new[idx].mean(1)
    rel = np.where(b > 0, n / np.where(b > 0, b, 1.0) - 1.0, 0.0)
    lo, hi = np.percentile(rel, [2.5, 97.5])
    return {"relative_gain": float(new.mean() / base.mean() - 1.0) if base.mean() > 0 else 0.0,
            "ci95_low": float(lo), "ci95_high": float(hi), "users": int(len(base)), "samples": samples,
            "users_better": int((new > base).sum()), "users_worse": int((new < base).sum())}


def summary_table(report: Mapping, keys=("recall@10", "ndcg@10")) -> str:
    """Markdown table of the report's methods: validation and test metrics."""
    cols = [f"{p}/{k}" for p in ("val", "test") for k in keys]
    lines = ["| method | " + " | ".join(cols) + " |", "| --- |" + " --- |" * len(cols)]
    for method, m in report["metrics"].items():
        lines.append(f"| {method} | " + " | ".join(f"{m.get(c, float('nan')):.4f}" for c in cols) + " |")
    return "\n".join(lines)
