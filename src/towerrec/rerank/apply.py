"""The rerank stage applied to retrieved items, one way for the service and the batch job.

A reranker is anything with `.rank(history, candidates, query=None)` (`towerrec.rerank.Reranker`, or a test
double): history and candidates are product dicts (oldest first / retrieval order), each candidate with its
retrieval `score`; it answers with a `RerankResult`-like object (`order`, `lm_score`, `fused_score`).
`rerank_items` hands it the items, checks the answer is a ranking of them (`checked_ranking`: the component
is pluggable) and returns the items in its order with the fused score as `score` (the retrieval score where
the LM did not score, beyond its top_n) and `lm_score`. Light on imports: no torch here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from towerrec.artifact.format import RERANK_DIR
from towerrec.artifact.items import ItemTable

RERANK_FILE = "rerank.json"  # what makes a directory a rerank directory (written by reranker.save_rerank_dir)
DEFAULT_CANDIDATES = 20


def rerank_candidates(reranker, configured: int | None = None) -> int:
    """Retrieval candidates handed to the LM: `configured`, else the reranker's top_n (20 if it has none)."""
    if configured is not None:
        return int(configured)
    return int(getattr(getattr(reranker, "settings", None), "top_n", DEFAULT_CANDIDATES))


def find_rerank_dir(setting: str | None, artifact_dir: str | Path, key: str) -> Path | None:
    """The rerank directory (`stage=rerank` output) a setting names: a path, `auto` (ARTIFACT/rerank when it
    holds rerank.json, else None) or None/"none"/"null" (none). `key` names the setting in the error."""
    if setting in (None, "", "none", "null"):
        return None
    path = Path(artifact_dir) / RERANK_DIR if setting == "auto" else Path(setting)
    if (path / RERANK_FILE).is_file():
        return path
    if setting != "auto":
        raise FileNotFoundError(f"{key}={setting}: no {RERANK_FILE} there")
    return None


def lm_history(table: ItemTable, positions: np.ndarray, max_items: int) -> list[dict]:
    """The shopper's newest `max_items` products (at least one; oldest first) as the LM stages read them."""
    return [table.products[p] for p in positions[-max(1, max_items):]]


def checked_ranking(result, n: int) -> tuple[list[int], list[float], list[float]]:
    """(order, lm scores, fused scores) of a reranker's `RerankResult` over `n` candidates, as plain lists;
    ValueError unless `order` is a permutation of range(n) and both scores are (n,) floats, finite or NaN."""
    order = np.asarray(result.order)
    if order.shape != (n,) or not np.issubdtype(order.dtype, np.integer):
        raise ValueError(f"order must be ({n},) integers, got {order.shape} {order.dtype}")
    if not np.array_equal(np.sort(order), np.arange(n)):
        raise ValueError(f"order must be a permutation of range({n})")
    scores = []
    for name in ("lm_score", "fused_score"):
        x = np.asarray(getattr(result, name), dtype=np.float64)
        if x.shape != (n,):
            raise ValueError(f"{name} must be ({n},) scores, got shape {x.shape}")
        if np.isinf(x).any():
            raise ValueError(f"{name} must be finite or NaN (not scored), got {x.tolist()}")
        scores.append(x.tolist())
    return order.tolist(), scores[0], scores[1]


def reordered(items: Sequence[dict], result) -> list[dict]:
    """Copies of `items` (dicts with a retrieval `score`) in the reranker's order, best first, `score` the fused
    score and `lm_score` the LM's (None where not scored); ValueError (`checked_ranking`) for a bad answer."""
    order, lm, fused = checked_ranking(result, len(items))
    return [{**items[i], "score": items[i]["score"] if math.isnan(fused[i]) else fused[i],
             "lm_score": None if math.isnan(lm[i]) else lm[i]} for i in order]


def rank_candidates(reranker, table: ItemTable, history_positions: np.ndarray, items: Sequence[dict],
                    max_history: int, query: str | None = None):
    """The reranker's raw answer for `items` (dicts with the table `_position` and retrieval `score` of each):
    the history as `lm_history` and the candidates as the artifact's product dicts."""
    history = lm_history(table, history_positions, max_history)
    candidates = [table.product(it["_position"], it["score"]) for it in items]
    return reranker.rank(history, candidates, query=query)
