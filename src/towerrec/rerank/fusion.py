"""Fuse LM scores with retrieval scores, and tune the fusion weight on validation users.

Per user, both score vectors over the same candidates are normalised (`zscore`: (x - mean) / std, a constant
vector becoming zeros; or `logsoftmax`: log-probabilities x - logsumexp(x)), then
    fused = (1 - w) * retrieval + w * lm.
w = 0 is the retrieval order, w = 1 the LM's alone.

`tune_weight` picks w from a grid by NDCG@k of the target within each reranked candidate list (a target that
is not among the candidates scores 0 whatever w is; with k <= the number of candidates this is exactly the
full-ranking harness's NDCG@k, where the reranked list comes first). The grid always contains 0 and ties go
to the smallest w, so the tuned weight is never worse than retrieval alone on the users it was tuned on.
Ordering ties inside a list go to the retrieval order (stable sort of candidates given best retrieval first).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

NORMALIZERS = ("zscore", "logsoftmax")
DEFAULT_GRID = tuple(round(0.05 * i, 2) for i in range(21))  # 0, 0.05, ..., 1


def normalize(scores: np.ndarray, method: str = "zscore") -> np.ndarray:
    """(C,) float64 scores of one user's candidates, normalised by `method`."""
    x = np.asarray(scores, dtype=np.float64)
    if x.size == 0:
        return x
    if not np.isfinite(x).all():
        raise ValueError(f"scores to fuse must be finite, got {x}")
    if method == "zscore":
        std = x.std()
        return (x - x.mean()) / std if std > 1e-12 else np.zeros_like(x)
    if method == "logsoftmax":
        m = x.max()
        return x - (m + math.log(np.exp(x - m).sum()))
    raise ValueError(f"rerank.fusion.normalize must be one of {NORMALIZERS}, got {method!r}")


def fuse(retrieval: np.ndarray, lm: np.ndarray, weight: float, method: str = "zscore") -> np.ndarray:
    """(C,) (1 - w) * normalize(retrieval) + w * normalize(lm)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"fusion weight must be in [0, 1], got {weight}")
    r, s = np.asarray(retrieval, dtype=np.float64), np.asarray(lm, dtype=np.float64)
    if r.shape != s.shape:
        raise ValueError(f"retrieval scores {r.shape} and LM scores {s.shape} must cover the same candidates")
    return (1.0 - weight) * normalize(r, method) + weight * normalize(s, method)


def order(scores: np.ndarray) -> np.ndarray:
    """Candidate indices best first; ties keep the given (retrieval) order."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def ndcg_in_list(ranked: np.ndarray, target: int, k: int) -> float:
    """NDCG@k of one target (a candidate index, or -1 if not a candidate) in a ranked candidate list."""
    if target < 0:
        return 0.0
    where = np.flatnonzero(np.asarray(ranked)[:k] == target)
    return 1.0 / math.log2(where[0] + 2) if len(where) else 0.0


def tune_weight(retrieval: Sequence[np.ndarray], lm: Sequence[np.ndarray], targets: Sequence[int], *,
                grid: Sequence[float] = DEFAULT_GRID, method: str = "zscore", k: int = 10
                ) -> tuple[float, dict[float, float]]:
    """(best w, {w: mean NDCG@k}) over users; `targets[u]` = the target's index in user u's candidates or -1."""
    grid = sorted({float(w) for w in grid} | {0.0})
    if not (len(retrieval) == len(lm) == len(targets)) or not len(targets):
        raise ValueError(f"need the same, non-zero number of users: {len(retrieval)} retrieval, {len(lm)} LM, "
                         f"{len(targets)} targets")
    table = {}
    for w in grid:
        table[w] = float(np.mean([ndcg_in_list(order(fuse(r, s, w, method)), t, k)
                                  for r, s, t in zip(retrieval, lm, targets)]))
    best = max(table.values())
    return min(w for w, v in table.items() if v >= best - 1e-12), table
