"""Leak-free full-ranking evaluation of next-item recommenders.

Protocol
--------
* One held-out target per user (leave-last-out, see `towerrec.data.splits`); the scorer sees only the
  user's history, which holds items strictly before the target in time.
* Full ranking: the scorer returns a score for every one of the N catalog items; there are no sampled
  negatives, so numbers are comparable across models and catalog sizes stay honest.
* `exclude_history=True`: the user's history items get a score of -inf before ranking, so items the user
  already interacted with are never recommended. A target that is itself in the history (a repeat
  interaction) therefore counts as a miss at every K, whatever score the model gave it.
* The target's rank (0-based) = number of items scored strictly higher + number of items with an equal
  score that come earlier in `tie_order`, a seeded pseudo-random permutation of the catalog. Ties are
  broken deterministically but never in favour of low item ids, so a constant scorer cannot look good
  because popular or old items happen to have small ids. Top-K lists use the same order: score
  descending, then tie_order ascending, so rank r <=> the target is at position r of the full list.
* Scores must not be NaN or +inf (a ValueError names the user and item); -inf is allowed and means
  "never recommend" (such items are left out of the top-K lists used for beyond-accuracy metrics).

Metrics (means over users, one target per user)
-----------------------------------------------
* for each K in `ks`: `recall@K` (= hit rate), `ndcg@K` = 1/log2(rank+2) if rank < K else 0,
  `mrr@K` = 1/(rank+1) if rank < K else 0.
* over the top-`beyond_k` list of every user (K = beyond_k, clipped to N):
  `coverage@K` = |union of recommended items| / N;
  `diversity@K` = mean over users of the share of item pairs in the list whose top-level categories
  differ (only with `item_categories`; users with fewer than two listed items are left out);
  `novelty@K` = mean over all recommended (user, item) slots of -log2 p(i), with
  p(i) = (count_i + 1) / (sum(count) + N) from training popularity `item_counts`;
  `gini@K` = Gini coefficient of the exposure counts of all N items (never recommended = 0 exposure).
* `num_users`.

Memory: users are scored `batch_size` at a time (fewer when N is so large that a chunk of float32 scores
would exceed CHUNK_BYTES), so no users x items matrix is ever held.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from towerrec.data.splits import Examples, Split
from towerrec.utils.io import check_fields
from towerrec.utils.metrics import format_table, prefix, save_metrics

log = logging.getLogger(__name__)

__all__ = [
    "CHUNK_BYTES",
    "EvalConfig",
    "Scorer",
    "chunk_rows",
    "evaluate",
    "evaluate_split",
    "format_table",
    "prefix",
    "rank_targets",
    "save_metrics",
    "tie_order",
    "top_k",
]

# scorer(histories_chunk, users_chunk) -> (B, N) scores over all catalog items, higher = better
Scorer = Callable[[list[np.ndarray], np.ndarray], torch.Tensor]

CHUNK_BYTES = 256 * 2**20  # upper bound for one chunk of float32 scores


# --------------------------------------------------------------------------------------------- ranking


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """The protocol's settings (`conf/eval/default.yaml`); the one home of their defaults in code."""

    ks: tuple[int, ...] = (5, 10, 20, 50)
    beyond_k: int = 10  # list length for coverage / diversity / novelty / gini
    exclude_history: bool = True
    batch_size: int = 256  # users scored at a time
    tie_seed: int = 0
    both_protocols: bool = True  # also report accuracy with history items the other way (`<stage>_kept/...`)

    @classmethod
    def from_any(cls, cfg) -> "EvalConfig":
        """From an EvalConfig, a mapping / DictConfig of the `eval` group, or None (the defaults)."""
        if isinstance(cfg, EvalConfig):
            return cfg
        d = dict(cfg or {})
        check_fields(cls, d, "eval")
        if "ks" in d:
            d["ks"] = tuple(int(k) for k in d["ks"])
        for key, kind in (("beyond_k", int), ("exclude_history", bool), ("batch_size", int), ("tie_seed", int),
                          ("both_protocols", bool)):
            if key in d:
                d[key] = kind(d[key])
        return cls(**d)

    def kwargs(self) -> dict:
        """Keyword arguments of `evaluate`."""
        d = dataclasses.asdict(self)
        d.pop("both_protocols")
        return d


def tie_order(num_items: int, seed: int = 0) -> torch.Tensor:
    """(N,) long: the tie-break rank of each item (lower wins a tie), a seeded random permutation.

    Built with NumPy's PCG64 generator so it does not depend on the torch version or device.
    """
    if num_items < 1:
        raise ValueError(f"num_items must be positive, got {num_items}")
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.permutation(num_items).astype(np.int64))


def _check_tie_order(scores: torch.Tensor, ties: torch.Tensor) -> torch.Tensor:
    if scores.dim() != 2:
        raise ValueError(f"scores must be a (users, items) matrix, got shape {tuple(scores.shape)}")
    if ties.shape != (scores.shape[1],):
        raise ValueError(f"tie_order has shape {tuple(ties.shape)}, expected ({scores.shape[1]},): one rank per item")
    return ties.to(device=scores.device, dtype=torch.long)


def rank_targets(scores: torch.Tensor, targets: torch.Tensor, tie_order: torch.Tensor) -> torch.Tensor:
    """(B,) long 0-based rank of each target: items scored higher + tied items earlier in tie_order.

    scores: (B, N); targets: (B,) item indices; tie_order: (N,) tie-break rank of each item.
    """
    ties = _check_tie_order(scores, tie_order)
    targets = targets.to(device=scores.device, dtype=torch.long)
    if targets.shape != (scores.shape[0],):
        raise ValueError(f"targets has shape {tuple(targets.shape)}, expected ({scores.shape[0]},)")
    target_score = scores.gather(1, targets[:, None])  # (B, 1)
    target_tie = ties[targets][:, None]  # (B, 1)
    higher = (scores > target_score).sum(1)  # (B,)
    tied_before = ((scores == target_score) & (ties[None, :] < target_tie)).sum(1)  # (B,)
    return higher + tied_before


def top_k(scores: torch.Tensor, k: int, tie_order: torch.Tensor) -> torch.Tensor:
    """(B, k) long item indices ordered by score descending, then tie_order ascending.

    Linear in N (no full sort): columns are laid out in tie order, the k-th largest score found with
    topk, and the tied items at that threshold taken first-come in tie order.
    """
    ties = _check_tie_order(scores, tie_order)
    b, n = scores.shape
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of items ({n}), got {k}")
    by_tie = torch.argsort(ties)  # (N,) item at each tie position
    s = scores[:, by_tie]  # (B, N) columns in tie order
    kth = torch.topk(s, k, dim=1).values[:, -1:]  # (B, 1) k-th largest score
    above = s > kth  # (B, N)
    tied = s == kth  # (B, N)
    room = k - above.sum(1, keepdim=True)  # (B, 1) slots left for items tied at the threshold (>= 1)
    take = above | (tied & (tied.cumsum(1) <= room))  # (B, N) exactly k per row
    cols = take.nonzero()[:, 1].view(b, k)  # (B, k) tie positions, ascending within each row
    order = torch.sort(s.gather(1, cols), dim=1, descending=True, stable=True).indices  # (B, k)
    return by_tie[cols.gather(1, order)]  # (B, k)


# ------------------------------------------------------------------------------------------ evaluation


def chunk_rows(batch_size: int, num_items: int) -> int:
    """Users per chunk: batch_size, lowered so a (rows, N) float32 block stays under CHUNK_BYTES."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return max(1, min(batch_size, CHUNK_BYTES // (4 * num_items)))


@dataclasses.dataclass
class ScoredChunk:
    """One chunk of users as the protocol scores them: rows start..stop of the examples."""

    start: int
    stop: int
    scores: torch.Tensor  # (B, N), history items at -inf when excluded
    targets: torch.Tensor  # (B,) int64
    missed: torch.Tensor  # (B,) bool: the target is in the history (excluded: it can never be recommended)


def score_chunks(scorer: Scorer, examples: Examples, num_items: int, *, exclude_history: bool = True,
                 batch_size: int = 256, progress: bool = False, desc: str = "eval"):
    """Yield `ScoredChunk`s over all examples: the scorer's checked (B, N) scores, history items masked.
    The one scoring loop behind `evaluate` and the per-user rankings of `towerrec.reporting.analysis`."""
    targets_all = _check_examples(examples, num_items)
    rows = chunk_rows(batch_size, num_items)
    n = len(examples)
    with torch.no_grad(), tqdm(total=n, desc=desc, unit="user", disable=not progress) as bar:
        for start in range(0, n, rows):
            stop = min(start + rows, n)
            histories = list(examples.histories[start:stop])
            users = np.asarray(examples.users[start:stop])
            targets = torch.from_numpy(targets_all[start:stop])  # (B,)
            scores = _score(scorer, histories, users, num_items, start, desc)  # (B, N)
            missed = torch.zeros(len(targets), dtype=torch.bool)  # (B,) target hidden in the history
            if exclude_history:
                scores, missed = _mask_history(scores, histories, targets, num_items, start)
            yield ScoredChunk(start, stop, scores, targets, missed)
            bar.update(stop - start)


def evaluate(
    scorer: Scorer,
    examples: Examples,
    num_items: int,
    *,
    item_counts: np.ndarray,
    item_categories: np.ndarray | None = None,
    ks: Sequence[int] = EvalConfig.ks,
    beyond_k: int = EvalConfig.beyond_k,
    exclude_history: bool = EvalConfig.exclude_history,
    batch_size: int = EvalConfig.batch_size,
    tie_seed: int = EvalConfig.tie_seed,
    progress: bool = False,
    desc: str = "eval",
) -> dict[str, float]:
    """Full-ranking metrics of `scorer` on `examples` (see the module docstring for the protocol)."""
    ks = _check_ks(ks)
    if beyond_k < 1:
        raise ValueError(f"beyond_k must be positive, got {beyond_k}")
    self_info = _self_information(item_counts, num_items)  # (N,) float64
    categories = None if item_categories is None else _category_codes(item_categories, num_items)
    ties = tie_order(num_items, tie_seed)
    list_len = min(beyond_k, num_items)
    num_users = len(examples)

    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg", "mrr")}
    exposure = torch.zeros(num_items, dtype=torch.long)  # (N,)
    novelty_sum, slots = 0.0, 0
    diversity_sum, diverse_users = 0.0, 0

    for chunk in score_chunks(scorer, examples, num_items, exclude_history=exclude_history, batch_size=batch_size,
                              progress=progress, desc=desc):
        scores, targets, missed = chunk.scores, chunk.targets, chunk.missed
        ranks = rank_targets(scores, targets, ties).cpu().double()  # (B,)
        for k in ks:
            hit = (ranks < k) & ~missed  # (B,)
            sums[f"recall@{k}"] += hit.sum().item()
            sums[f"ndcg@{k}"] += torch.where(hit, 1.0 / torch.log2(ranks + 2), 0.0).sum().item()
            sums[f"mrr@{k}"] += torch.where(hit, 1.0 / (ranks + 1), 0.0).sum().item()

        lists = top_k(scores, list_len, ties)  # (B, L)
        shown = (scores.gather(1, lists) > -math.inf).cpu()  # (B, L) leaves out -inf (masked) items
        lists = lists.cpu()
        listed = lists[shown]  # (S,)
        exposure += torch.bincount(listed, minlength=num_items)
        novelty_sum += self_info[listed].sum().item()
        slots += listed.numel()
        if categories is not None:
            shares = _differing_pair_share(categories[lists], shown)  # (B,) NaN without pairs
            valid = ~torch.isnan(shares)
            diversity_sum += shares[valid].sum().item()
            diverse_users += int(valid.sum())

    metrics = {name: total / num_users for name, total in sums.items()}
    k = beyond_k
    metrics[f"coverage@{k}"] = int((exposure > 0).sum()) / num_items
    if categories is not None and diverse_users:
        metrics[f"diversity@{k}"] = diversity_sum / diverse_users
    metrics[f"novelty@{k}"] = novelty_sum / slots if slots else 0.0
    metrics[f"gini@{k}"] = _gini(exposure.numpy())
    metrics["num_users"] = float(num_users)
    return metrics


def _check_ks(ks: Iterable[int]) -> list[int]:
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be a non-empty list of positive cut-offs, got {ks}")
    return ks


def _check_examples(examples: Examples, num_items: int) -> np.ndarray:
    """(U,) int64 targets, after checking the examples are consistent and in the catalog."""
    if num_items < 1:
        raise ValueError(f"num_items must be positive, got {num_items}")
    n = len(examples.targets)
    if n == 0:
        raise ValueError("there are no examples to evaluate (0 users)")
    if len(examples.histories) != n or len(examples.users) != n:
        raise ValueError(
            f"examples are inconsistent: {len(examples.users)} users, {len(examples.histories)} histories, "
            f"{n} targets (expected one of each per user)"
        )
    targets = np.asarray(examples.targets)
    if not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(f"examples.targets must hold integer item indices, got dtype {targets.dtype}")
    bad = np.flatnonzero((targets < 0) | (targets >= num_items))
    if len(bad):
        i = bad[0]
        raise ValueError(
            f"examples.targets[{i}] = {targets[i]} (user {examples.users[i]!r}) is not an item index "
            f"in [0, {num_items}); {len(bad)} target(s) out of range"
        )
    return targets.astype(np.int64)


def _self_information(item_counts: np.ndarray, num_items: int) -> torch.Tensor:
    """(N,) float64 -log2 p(i), p(i) = (count_i + 1) / (sum(count) + N) (add-one smoothing)."""
    counts = np.asarray(item_counts, dtype=np.float64)
    if counts.shape != (num_items,):
        raise ValueError(f"item_counts has shape {counts.shape}, expected ({num_items},): one count per item")
    if not np.isfinite(counts).all() or (counts < 0).any():
        raise ValueError("item_counts must be finite and non-negative")
    p = (counts + 1) / (counts.sum() + num_items)
    return torch.from_numpy(-np.log2(p))


def _category_codes(item_categories: np.ndarray, num_items: int) -> torch.Tensor:
    """(N,) long code of each item's category label (missing labels share one code)."""
    labels = np.asarray(item_categories, dtype=object)
    if labels.shape != (num_items,):
        raise ValueError(f"item_categories has shape {labels.shape}, expected ({num_items},): one label per item")
    codes, _ = pd.factorize(labels, use_na_sentinel=True)
    codes = np.where(codes < 0, codes.max() + 1, codes)  # NaN/None -> its own "unknown" code
    return torch.from_numpy(codes.astype(np.int64))


def _score(scorer: Scorer, histories: list[np.ndarray], users: np.ndarray, num_items: int, start: int, desc: str):
    """Call the scorer on one chunk and check its output: (B, N), floating, no NaN or +inf."""
    scores = scorer(histories, users)
    if isinstance(scores, np.ndarray):
        scores = torch.from_numpy(scores)
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"{desc}: the scorer must return a torch.Tensor, got {type(scores).__name__}")
    expected = (len(histories), num_items)
    if tuple(scores.shape) != expected:
        raise ValueError(
            f"{desc}: the scorer returned scores of shape {tuple(scores.shape)}, expected {expected} "
            "(one row per user of the chunk, one column per catalog item)"
        )
    if not scores.is_floating_point():
        scores = scores.double()
    elif scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.float()
    bad = torch.isnan(scores) | (scores == math.inf)  # (B, N)
    if bad.any():
        row, col = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{desc}: the scorer returned a non-finite score ({scores[row, col].item()}) for example "
            f"{start + row} (user {users[row]!r}), item {col}; {int(bad.sum())} such score(s) in this chunk. "
            "NaN/+inf scores cannot be ranked: fix the model, or use -inf to never recommend an item"
        )
    return scores


def _mask_history(
    scores: torch.Tensor, histories: list[np.ndarray], targets: torch.Tensor, num_items: int, start: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Copy of scores with each user's history items at -inf, and (B,) bool: target was in the history."""
    b = len(histories)
    lengths = torch.tensor([len(h) for h in histories], dtype=torch.long)  # (B,)
    missed = torch.zeros(b, dtype=torch.bool)
    if int(lengths.sum()) == 0:
        return scores, missed
    cols = torch.from_numpy(np.concatenate([np.asarray(h) for h in histories]).astype(np.int64))  # (H,)
    rows = torch.repeat_interleave(torch.arange(b), lengths)  # (H,)
    bad = (cols < 0) | (cols >= num_items)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(
            f"the history of example {start + int(rows[i])} holds item index {int(cols[i])}, "
            f"outside the catalog [0, {num_items})"
        )
    missed[rows[cols == targets[rows]]] = True
    device = scores.device
    minus_inf = torch.tensor(-math.inf, dtype=scores.dtype, device=device)
    return scores.index_put((rows.to(device), cols.to(device)), minus_inf), missed  # copy: scorer's tensor untouched


def _differing_pair_share(codes: torch.Tensor, shown: torch.Tensor) -> torch.Tensor:
    """(B,) share of pairs of shown items whose category codes differ; NaN for lists with < 2 items.

    codes, shown: (B, L). Differing pairs = all pairs - same-category pairs, counted per category.
    """
    per_category = torch.zeros(codes.shape[0], int(codes.max()) + 1, dtype=torch.float64)  # (B, C)
    per_category.scatter_add_(1, codes, shown.double())
    n = shown.sum(1).double()  # (B,)
    pairs = n * (n - 1) / 2  # (B,)
    same = (per_category * (per_category - 1) / 2).sum(1)  # (B,)
    return torch.where(pairs > 0, (pairs - same) / pairs.clamp(min=1), math.nan)


def _gini(exposure: np.ndarray) -> float:
    """Gini coefficient of non-negative counts: 0 = equal exposure, -> 1 = all on one item."""
    x = np.sort(np.asarray(exposure, dtype=np.float64))
    n, total = len(x), x.sum()
    if total == 0:
        return 0.0
    i = np.arange(1, n + 1)
    return float(((2 * i - n - 1) * x).sum() / (n * total))


# ------------------------------------------------------------------------------------------- reporting


ACCURACY = ("recall", "ndcg", "mrr")


def other_protocol(cfg: EvalConfig) -> tuple[str, EvalConfig]:
    """The protocol a run reports beside its own: ('kept', history kept in the ranking, RecBole's protocol)
    when the config excludes history items, else ('excluded', ours)."""
    return ("kept" if cfg.exclude_history else "excluded"), dataclasses.replace(cfg, exclude_history=not cfg.exclude_history)


def protocol_metrics(metrics: Mapping[str, float], tag: str, protocol: str) -> dict[str, float]:
    """Accuracy metrics of the other protocol under `<tag>_<protocol>/`, e.g. 'test_kept/ndcg@10'."""
    return {f"{tag}_{protocol}/{k}": v for k, v in metrics.items() if k.split("@")[0] in ACCURACY}


def evaluate_split(scorer: Scorer, split: Split, cfg: EvalConfig | None = None, stages: Sequence[str] = ("valid", "test"),
                   progress: bool = True) -> dict[str, float]:
    """Harness metrics of one scorer on a split's valid and/or test examples, slash-prefixed (`val/`, `test/`)."""
    cfg = EvalConfig.from_any(cfg)
    metrics: dict[str, float] = {}
    counts, categories = split.item_counts(), split.catalog.top_category()
    protocol, other = other_protocol(cfg)
    for stage in stages:
        examples = split.examples(stage)
        m = evaluate(scorer, examples, split.num_items, item_counts=counts, item_categories=categories,
                     progress=progress, desc=f"eval {stage}", **cfg.kwargs())
        metrics.update(prefix(m, stage_tag(stage)))
        if cfg.both_protocols:
            m = evaluate(scorer, examples, split.num_items, item_counts=counts, progress=progress,
                         desc=f"eval {stage} ({protocol})", **other.kwargs())
            metrics.update(protocol_metrics(m, stage_tag(stage), protocol))
    return metrics


def stage_tag(stage: str) -> str:
    """The metric prefix of a split stage: 'valid' -> 'val', 'test' -> 'test'."""
    return "val" if stage == "valid" else stage
