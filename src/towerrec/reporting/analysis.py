"""Data behind the figures: per-user target ranks, metric-vs-K curves, exposure by popularity, training logs.

Ranks first, metrics after. `rank_users` runs a scorer once over a stage's examples with the harness's exact
protocol (`towerrec.evaluation`: the same history masking, the same seeded tie order) and keeps, per user, the
0-based rank of the target and the top-L list. Everything else is a cheap pure function of those arrays:
Recall/NDCG/MRR for every K = 1..50 (`metrics_at_k`), exposure counts, exposure share by item-popularity
decile and Lorenz curves (`exposure_by_popularity`, `lorenz_curve`). So Recall@10 here equals the harness's
`recall@10` to the last bit, and the Gini of the exposure equals its `gini@L` (both tested).

The two-tower model is scored through its exported artifact (`towerrec.retrieval.ArtifactScorer`, as
`evaluate_artifact` does), baselines through their own scorers (`default_baselines`). `load_training_log` reads the CSV logger's `metrics.csv` of a run directory into
per-step training rows, per-epoch validation rows and the final evaluation of the best checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from towerrec import baselines, evaluation
from towerrec.data.splits import Examples, Split
from towerrec.evaluation import EvalConfig

log = logging.getLogger(__name__)

__all__ = [
    "MISSED",
    "Ranking",
    "TrainingLog",
    "dataset_summary",
    "default_baselines",
    "exposure_by_popularity",
    "exposure_counts",
    "gini",
    "item_popularity",
    "load_training_log",
    "long_tail",
    "lorenz_curve",
    "metrics_at_k",
    "rank_split",
    "rank_users",
]

MISSED = np.iinfo(np.int64).max  # rank of a target that can never be recommended (it is in the history)


# ------------------------------------------------------------------------------------------------- ranks


@dataclasses.dataclass
class Ranking:
    """What one scorer did on one stage: per-user target ranks and top-L lists (rows follow the examples)."""

    ranks: np.ndarray  # (U,) int64 0-based rank of the target; MISSED when excluded as a history item
    top: np.ndarray  # (U, L) int64 item indices, best first; -1 where a slot could not be filled (-inf scores)
    num_items: int

    def __len__(self) -> int:
        return len(self.ranks)

    @property
    def list_len(self) -> int:
        return self.top.shape[1]


def rank_users(
    scorer: evaluation.Scorer,
    examples: Examples,
    num_items: int,
    *,
    exclude_history: bool = EvalConfig.exclude_history,
    tie_seed: int = EvalConfig.tie_seed,
    batch_size: int = EvalConfig.batch_size,
    list_len: int = 10,
    progress: bool = False,
    desc: str = "rank",
) -> Ranking:
    """Score every example once and keep the target ranks and top-`list_len` lists (the harness's protocol)."""
    if list_len < 1:
        raise ValueError(f"list_len must be positive, got {list_len}")
    list_len = min(list_len, num_items)
    ties = evaluation.tie_order(num_items, tie_seed)
    n = len(examples)
    ranks = np.empty(n, dtype=np.int64)
    top = np.empty((n, list_len), dtype=np.int64)
    for chunk in evaluation.score_chunks(scorer, examples, num_items, exclude_history=exclude_history,
                                         batch_size=batch_size, progress=progress, desc=desc):
        r = evaluation.rank_targets(chunk.scores, chunk.targets, ties).cpu()  # (B,)
        ranks[chunk.start : chunk.stop] = torch.where(chunk.missed, MISSED, r).numpy()
        lists = evaluation.top_k(chunk.scores, list_len, ties)  # (B, L)
        shown = chunk.scores.gather(1, lists) > -math.inf  # (B, L)
        top[chunk.start : chunk.stop] = torch.where(shown, lists, -1).cpu().numpy()
    return Ranking(ranks, top, num_items)


def rank_split(scorer: evaluation.Scorer, split: Split, stage: str = "test", eval_cfg: Mapping | None = None,
               *, progress: bool = False, desc: str | None = None) -> Ranking:
    """`rank_users` on a split's valid or test examples, with the list length and options of an eval config
    (`conf/eval/default.yaml`: exclude_history, tie_seed, batch_size, beyond_k = list length)."""
    cfg = EvalConfig.from_any(eval_cfg)
    return rank_users(scorer, split.examples(stage), split.num_items, exclude_history=cfg.exclude_history,
                      tie_seed=cfg.tie_seed, batch_size=cfg.batch_size, list_len=cfg.beyond_k, progress=progress,
                      desc=desc or f"rank {stage}")


def metrics_at_k(ranks: np.ndarray, max_k: int = 50) -> pd.DataFrame:
    """Recall@K, NDCG@K and MRR@K for K = 1..max_k from target ranks (one held-out target per user).

    Returns a frame indexed by k with columns recall, ndcg, mrr (means over users)."""
    ranks = np.asarray(ranks, dtype=np.int64)
    if ranks.ndim != 1 or len(ranks) == 0:
        raise ValueError(f"ranks must be a non-empty 1-D array, got shape {ranks.shape}")
    if (ranks < 0).any():
        raise ValueError("ranks must be non-negative (0 = the target is first)")
    if max_k < 1:
        raise ValueError(f"max_k must be positive, got {max_k}")
    counts = np.bincount(np.minimum(ranks, max_k), minlength=max_k + 1)[:max_k]  # (K,) users per rank r < max_k
    r = np.arange(max_k)
    users = len(ranks)
    return pd.DataFrame(
        {
            "recall": np.cumsum(counts) / users,
            "ndcg": np.cumsum(counts / np.log2(r + 2)) / users,
            "mrr": np.cumsum(counts / (r + 1)) / users,
        },
        index=pd.Index(r + 1, name="k"),
    )


# ---------------------------------------------------------------------------------------------- exposure


def exposure_counts(top: np.ndarray, num_items: int) -> np.ndarray:
    """(N,) int64 number of top-L lists each item appears in (-1 slots ignored)."""
    listed = np.asarray(top).ravel()
    listed = listed[listed >= 0]
    if len(listed) and listed.max() >= num_items:
        raise ValueError(f"top lists hold item {listed.max()}, outside the catalog [0, {num_items})")
    return np.bincount(listed, minlength=num_items).astype(np.int64)


def _popularity_bins(item_counts: np.ndarray, bins: int) -> np.ndarray:
    """(N,) bin of each item, 0 = least popular: items sorted by count (ties by index), cut into equal groups."""
    order = np.argsort(np.asarray(item_counts), kind="stable")
    bin_of = np.empty(len(order), dtype=np.int64)
    for b, members in enumerate(np.array_split(order, bins)):
        bin_of[members] = b
    return bin_of


def exposure_by_popularity(exposure: np.ndarray, item_counts: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Share of recommendation slots per item-popularity bin (deciles by default).

    Items are sorted by training interaction count and cut into `bins` groups of (nearly) equal size; bin 1
    holds the least popular items, bin `bins` the most popular. Columns: items, exposure_share (share of all
    listed slots), interaction_share (share of training interactions: what popularity alone would give)."""
    exposure = np.asarray(exposure, dtype=np.float64)
    counts = np.asarray(item_counts, dtype=np.float64)
    if exposure.shape != counts.shape or exposure.ndim != 1:
        raise ValueError(f"exposure {exposure.shape} and item_counts {counts.shape} must be (N,) arrays of one length")
    if not 1 <= bins <= len(counts):
        raise ValueError(f"bins must be between 1 and the number of items ({len(counts)}), got {bins}")
    bin_of = _popularity_bins(counts, bins)
    items = np.bincount(bin_of, minlength=bins)
    shown = np.bincount(bin_of, weights=exposure, minlength=bins)
    bought = np.bincount(bin_of, weights=counts, minlength=bins)
    return pd.DataFrame(
        {
            "items": items,
            "exposure_share": shown / shown.sum() if shown.sum() else shown,
            "interaction_share": bought / bought.sum() if bought.sum() else bought,
        },
        index=pd.Index(np.arange(1, bins + 1), name="popularity_bin"),
    )


def lorenz_curve(exposure: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x, y), N + 1 points each: cumulative share of items (least exposed first) vs share of exposure."""
    x = np.sort(np.asarray(exposure, dtype=np.float64))
    if x.ndim != 1 or len(x) == 0 or (x < 0).any():
        raise ValueError("exposure must be a non-empty 1-D array of non-negative counts")
    total = x.sum()
    y = np.concatenate([[0.0], np.cumsum(x) / total]) if total else np.linspace(0.0, 1.0, len(x) + 1)
    return np.linspace(0.0, 1.0, len(x) + 1), y


def gini(exposure: np.ndarray) -> float:
    """Gini coefficient of exposure counts (the harness's gini@K): 0 = equal, towards 1 = all on one item."""
    return evaluation._gini(np.asarray(exposure))


# ------------------------------------------------------------------------------------------------ the data


def item_popularity(split: Split, training_only: bool = False) -> np.ndarray:
    """(N,) interactions per item: over the whole sequences, or the training part only (`Split.item_counts`)."""
    if training_only:
        return split.item_counts()
    counts = np.zeros(split.num_items, dtype=np.int64)
    for seq in split.sequences:
        np.add.at(counts, seq, 1)
    return counts


def long_tail(item_counts: np.ndarray) -> pd.DataFrame:
    """Items by popularity, most popular first: columns count and cum_share (of all interactions), indexed by
    the popularity rank (1 = most popular)."""
    counts = np.sort(np.asarray(item_counts, dtype=np.int64))[::-1]
    total = counts.sum()
    return pd.DataFrame({"count": counts, "cum_share": np.cumsum(counts) / total if total else counts * 0.0},
                        index=pd.Index(np.arange(1, len(counts) + 1), name="rank"))


def dataset_summary(split: Split) -> dict[str, float]:
    """Size and shape of a split: users, items, interactions, per-user lengths, density, head/tail shares."""
    lengths = np.array([len(s) for s in split.sequences])
    counts = item_popularity(split)
    tail = long_tail(counts)
    top20 = max(1, int(round(0.2 * split.num_items)))
    return {
        "users": len(split.users),
        "items": split.num_items,
        "interactions": int(lengths.sum()),
        "interactions_per_user_mean": float(lengths.mean()),
        "interactions_per_user_median": float(np.median(lengths)),
        "interactions_per_user_max": int(lengths.max()),
        "density": float(lengths.sum() / (len(split.users) * split.num_items)),
        "share_of_interactions_top20pct_items": float(tail["cum_share"].iloc[top20 - 1]),
        "items_never_in_training": int((split.item_counts() == 0).sum()),
    }


# -------------------------------------------------------------------------------------------------- scorers


def default_baselines(split: Split, kinds: Sequence[str] = ("popularity", "itemknn")) -> dict[str, evaluation.Scorer]:
    """The cheap baselines, fitted on the split's training part with their default settings (the values of
    conf/model/popularity.yaml and conf/model/itemknn.yaml); keyed by a display name."""
    out: dict[str, evaluation.Scorer] = {}
    for kind in kinds:
        if kind == "popularity":
            out["popularity"] = baselines.Popularity(split.item_counts())
        elif kind == "itemknn":
            out["item-KNN"] = baselines.TransitionKNN(split.train_sequences(), split.num_items,
                                                      item_counts=split.item_counts())
        else:
            raise ValueError(f"unknown default baseline {kind!r}: choose from 'popularity', 'itemknn' "
                             "(build others with towerrec.baselines.build_baseline)")
    return out


# ------------------------------------------------------------------------------------------- training logs


@dataclasses.dataclass
class TrainingLog:
    """A run's CSV log: per-step training rows, per-epoch validation rows, the final (best checkpoint) rows."""

    train: pd.DataFrame  # step, epoch, train/* and learning-rate columns
    val: pd.DataFrame  # one row per validated epoch during fit: step, epoch, val/*
    final: dict[str, float]  # val/* and test/* of the evaluated (best) checkpoint


def _find_metrics_csv(path: Path) -> Path:
    if path.is_file():
        return path
    found = sorted((path / "csv").rglob("metrics.csv")) if (path / "csv").is_dir() else []
    found = found or sorted(path.rglob("metrics.csv"))
    if not found:
        raise FileNotFoundError(f"no CSV logger output (metrics.csv) under {path}: was the run made with "
                                "logger=csv (the default)?")
    return max(found, key=lambda p: p.stat().st_mtime)  # the newest version, if several


def load_training_log(run_dir: str | Path) -> TrainingLog:
    """Read `RUN_DIR/csv/**/metrics.csv` (or a metrics.csv path) written by Lightning's CSVLogger.

    Lightning writes one row per logging call, so training and validation values sit on different rows. After
    fit, the pipeline validates and tests the best checkpoint once more: those rows carry the epoch count of
    the finished fit (one past the last trained epoch), and go to `final` rather than the curves."""
    path = _find_metrics_csv(Path(run_dir))
    df = pd.read_csv(path)
    if "step" not in df.columns:
        raise ValueError(f"{path}: no 'step' column; not a Lightning CSVLogger metrics file")
    train_cols = [c for c in df.columns if c.startswith("train/") or c.startswith("lr-")]
    val_cols = [c for c in df.columns if c.startswith("val/")]
    test_cols = [c for c in df.columns if c.startswith("test/")]
    if "epoch" not in df.columns:  # metrics logged outside a fit (a baseline run): no curves, final values only
        final = {c: float(v) for c in (*val_cols, *test_cols) for v in df[c].dropna().tail(1)}
        empty = pd.DataFrame(columns=["step", "epoch"])
        return TrainingLog(empty, empty.copy(), final)

    train = df[["step", "epoch", *train_cols]]
    train = train[train[train_cols].notna().any(axis=1)] if train_cols else train.iloc[:0]
    train = train.groupby("step", as_index=False).first()  # lr and loss rows of one step merged
    train["epoch"] = train["epoch"].ffill().bfill()

    val = df.loc[df[val_cols].notna().any(axis=1), ["step", "epoch", *val_cols]] if val_cols else df.iloc[:0]
    final: dict[str, float] = {}
    tests = df[df[test_cols].notna().any(axis=1)] if test_cols else df.iloc[:0]
    if len(tests):
        end_epoch = tests["epoch"].iloc[-1]
        final.update({c: float(v) for c, v in tests[test_cols].iloc[-1].items() if pd.notna(v)})
        after = val[val["epoch"] >= end_epoch]
        if len(after):
            final.update({c: float(v) for c, v in after[val_cols].iloc[-1].items() if pd.notna(v)})
        val = val[val["epoch"] < end_epoch]
    return TrainingLog(train.reset_index(drop=True), val.reset_index(drop=True), final)
