"""Figures of a dataset, a training run and a sweep, and the PNG files `train.py` leaves in its run directory.

Every `plot_*` function is pure: data in, a new `matplotlib.figure.Figure` out. Figures are built without
pyplot, so there is no global figure state and no GUI backend: the same code saves PNGs from a training job
or a headless server and shows inline in a notebook (return the figure from a cell, after
`%matplotlib inline`). The data behind each figure comes from `towerrec.reporting.analysis` and `towerrec.reporting.sweeps`.

At the end of a successful `python train.py` (unless `plots=false`), `towerrec.tasks.plots` ranks the
test users once with the run's model and with the popularity and item-KNN baselines and writes into
`RUN_DIR/figures/`:

    data.png              interactions per user, item popularity long tail
    training.png          training loss, validation Recall@10 / NDCG@10, learning rate (runs that train towers)
    metrics_at_k.png      Recall@K and NDCG@K for K = 1..50, the run's model against the baselines
    popularity_bias.png   share of top-10 exposure by item-popularity decile, Lorenz curves with Gini
    metrics_at_k.csv      the numbers behind metrics_at_k.png

The same files for a finished run, with zero-shot MiniLM among the baselines if wanted:

    python -m towerrec.tasks.plots RUN_DIR [--baselines popularity,itemknn,zeroshot] [--data scientific]
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from towerrec.data.splits import Split
from towerrec.reporting import analysis
from towerrec.reporting.analysis import Ranking, TrainingLog
from towerrec.reporting.sweeps import STATUS_OK, swept_params

log = logging.getLogger(__name__)

__all__ = [
    "plot_data_stats",
    "plot_metrics_at_k",
    "plot_popularity_bias",
    "plot_sweep",
    "plot_training_curves",
    "rank_models",
    "save_figure",
    "save_run_figures",
]

FIGURES_DIR = "figures"
DPI = 110
# fixed colours, so a model looks the same in every figure of a run
MODEL_COLORS = {"two-tower": "#1f77b4", "item-KNN": "#ff7f0e", "zero-shot": "#2ca02c", "popularity": "#7f7f7f",
                "sequence": "#d62728"}
OTHER_COLORS = ("#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#d62728")
DISPLAY_NAMES = {"two_tower": "two-tower", "sequence": "sequence", "itemknn": "item-KNN", "zeroshot": "zero-shot",
                 "popularity": "popularity"}


def _colors(names: Sequence[str]) -> dict[str, str]:
    others = iter(OTHER_COLORS * (len(names) // len(OTHER_COLORS) + 1))
    return {n: MODEL_COLORS.get(n) or next(others) for n in names}


def _new_figure(ncols: int, nrows: int = 1, width: float = 5.0, height: float = 3.8) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    return fig, axes


# -------------------------------------------------------------------------------------------------- data


def plot_data_stats(split: Split) -> Figure:
    """Two panels: the distribution of interactions per user, and item popularity by rank (the long tail)."""
    lengths = np.array([len(s) for s in split.sequences])
    tail = analysis.long_tail(analysis.item_popularity(split))
    fig, (left, right) = _new_figure(2)

    bins = np.arange(lengths.min(), lengths.max() + 2) - 0.5 if lengths.max() - lengths.min() < 60 else 50
    left.hist(lengths, bins=bins, color="#1f77b4")
    if lengths.max() > 5 * np.median(lengths):  # a long tail of very active users: counts on a log axis
        left.set_yscale("log")
    left.set(xlabel="interactions per user", ylabel="users",
             title=f"{len(lengths):,} users, median {np.median(lengths):g} interactions")

    right.plot(tail.index, tail["count"], color="#1f77b4")
    right.set_yscale("symlog", linthresh=1)
    right.set(xlabel="item rank by popularity", ylabel="interactions", title=f"{split.num_items:,} items: long tail")
    head = max(1, int(round(0.2 * len(tail))))
    share = tail["cum_share"].iloc[head - 1]
    right.axvline(head, color="k", ls=":", lw=1)
    right.annotate(f"top 20% of items:\n{share:.0%} of interactions", xy=(head, tail["count"].iloc[head - 1]),
                   xytext=(0.45, 0.75), textcoords="axes fraction", arrowprops={"arrowstyle": "->", "lw": 0.8})
    fig.suptitle(f"{split.name}: the data")
    return fig


# ---------------------------------------------------------------------------------------------- training


def plot_training_curves(training_log: TrainingLog | str | Path, metrics: Sequence[str] = ("recall@10", "ndcg@10"),
                         smooth: int = 10) -> Figure:
    """Training loss per step (raw and a `smooth`-step moving average), validation metrics per epoch against
    the step they were measured at, and the learning rate when it was logged. The best checkpoint's final
    test values are written in the validation panel's title."""
    tl = training_log if isinstance(training_log, TrainingLog) else analysis.load_training_log(training_log)
    if tl.train.empty and tl.val.empty:
        raise ValueError("the training log holds no training or validation rows to plot")
    lr_cols = [c for c in tl.train.columns if c.startswith("lr-")]
    fig, axes = _new_figure(3 if lr_cols else 2, width=4.6)
    loss_ax, val_ax = axes[0], axes[1]

    if "train/loss" in tl.train.columns:
        loss = tl.train[["step", "train/loss"]].dropna()
        loss_ax.plot(loss["step"], loss["train/loss"], color="#1f77b4", alpha=0.35, lw=1, label="per step")
        if len(loss) >= smooth > 1:
            avg = loss["train/loss"].rolling(smooth, min_periods=1).mean()
            loss_ax.plot(loss["step"], avg, color="#1f77b4", lw=2, label=f"mean of {smooth}")
        loss_ax.legend(fontsize=8)
    loss_ax.set(xlabel="step", ylabel="in-batch softmax loss", title="training loss")

    for i, name in enumerate(metrics):
        col = f"val/{name}"
        if col in tl.val.columns:
            rows = tl.val[["step", "epoch", col]].dropna()
            val_ax.plot(rows["step"], rows[col], marker="o", color=OTHER_COLORS[i % len(OTHER_COLORS)], label=name)
    if len(tl.val):
        top = np.nanmax(tl.val[[f"val/{m}" for m in metrics if f"val/{m}" in tl.val.columns]].to_numpy())
        val_ax.set_ylim(0, 1.2 * top if np.isfinite(top) and top > 0 else 1)
        for step, epoch in zip(tl.val["step"], tl.val["epoch"]):
            val_ax.annotate(f"epoch {int(epoch)}", (step, 0.02), xycoords=("data", "axes fraction"), fontsize=7,
                            ha="center", va="bottom", color="0.4")
        val_ax.legend(fontsize=8, loc="upper left")
    test = ", ".join(f"{m} {tl.final[f'test/{m}']:.4f}" for m in metrics if f"test/{m}" in tl.final)
    val_ax.set(xlabel="step", ylabel="validation metric",
               title="validation" + (f"\nbest checkpoint, test: {test}" if test else ""))
    if len(tl.train):
        val_ax.set_xlim(loss_ax.get_xlim())

    if lr_cols:
        lr_ax = axes[2]
        for col in lr_cols:
            rows = tl.train[["step", col]].dropna()
            lr_ax.plot(rows["step"], rows[col], label=col.removeprefix("lr-"))
        lr_ax.set(xlabel="step", ylabel="learning rate", title="learning rate")
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    return fig


# ---------------------------------------------------------------------------------------------- accuracy


def plot_metrics_at_k(curves: Mapping[str, pd.DataFrame], title: str | None = None, mark_k: int | None = 10) -> Figure:
    """Recall@K and NDCG@K against K for each model; `curves`: name -> `analysis.metrics_at_k` frame."""
    if not curves:
        raise ValueError("no curves to plot: pass {model name: analysis.metrics_at_k(ranking.ranks)}")
    colors = _colors(list(curves))
    fig, axes = _new_figure(2)
    for ax, metric, label in zip(axes, ("recall", "ndcg"), ("Recall@K", "NDCG@K")):
        for name, frame in curves.items():
            if metric not in frame.columns:
                raise ValueError(f"curve {name!r} has no {metric!r} column (columns: {list(frame.columns)})")
            ax.plot(frame.index, frame[metric], color=colors[name], lw=2, label=name)
        if mark_k:
            ax.axvline(mark_k, color="k", ls=":", lw=1)
        ax.set(xlabel="K", ylabel=label, title=f"{label}, full ranking")
        ax.set_xlim(1, max(int(f.index.max()) for f in curves.values()))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=9)
    if title:
        fig.suptitle(title)
    return fig


# ------------------------------------------------------------------------------------------ popularity bias


def plot_popularity_bias(exposures: Mapping[str, np.ndarray], item_counts: np.ndarray, bins: int = 10,
                         list_len: int | None = None, title: str | None = None) -> Figure:
    """Who gets shown. Left: share of recommendation slots per item-popularity decile (1 = least popular items,
    by training interactions) for each model, against the share of training interactions. Right: Lorenz
    curves of exposure over items (Gini in the legend; the diagonal is equal exposure).

    `exposures`: model name -> (N,) exposure counts (`analysis.exposure_counts(ranking.top, N)`)."""
    if not exposures:
        raise ValueError("no exposures to plot: pass {model name: analysis.exposure_counts(top, num_items)}")
    colors = _colors(list(exposures))
    fig, (bars, lorenz) = _new_figure(2, width=5.4)
    width = 0.8 / len(exposures)
    x = np.arange(1, bins + 1)
    for i, (name, exposure) in enumerate(exposures.items()):
        table = analysis.exposure_by_popularity(exposure, item_counts, bins)
        bars.bar(x - 0.4 + width * (i + 0.5), table["exposure_share"], width, color=colors[name], label=name)
        lx, ly = analysis.lorenz_curve(exposure)
        lorenz.plot(lx, ly, color=colors[name], lw=2, label=f"{name} (Gini {analysis.gini(exposure):.2f})")
    base = analysis.exposure_by_popularity(np.asarray(item_counts), item_counts, bins)
    bars.step(np.r_[x - 0.5, x[-1] + 0.5], np.r_[base["interaction_share"], base["interaction_share"].iloc[-1]],
              where="post", color="k", lw=1.2, label="training interactions")
    shown = f"top-{list_len} " if list_len else ""
    bars.set(xlabel="item popularity decile (1 = least popular)", ylabel=f"share of {shown}slots",
             title="exposure by item popularity", xticks=x)
    bars.legend(fontsize=8)
    lx, ly = analysis.lorenz_curve(np.asarray(item_counts))
    lorenz.plot(lx, ly, color="k", lw=1.2, ls="--", label=f"training interactions (Gini {analysis.gini(item_counts):.2f})")
    lorenz.plot([0, 1], [0, 1], color="0.6", lw=1, ls=":")
    lorenz.set(xlabel="share of items (least exposed first)", ylabel="share of exposure", title="Lorenz curve",
               xlim=(0, 1), ylim=(0, 1))
    lorenz.legend(fontsize=8, loc="upper left")
    if title:
        fig.suptitle(title)
    return fig


# -------------------------------------------------------------------------------------------------- sweeps


def plot_sweep(df: pd.DataFrame, metric: str = "val/ndcg@10", params: Sequence[str] | None = None,
               ncols: int = 3) -> Figure:
    """`metric` against each swept hyperparameter (`towerrec.reporting.sweeps.load_sweep` table), one panel each.

    Numeric parameters are a scatter (log x when positive and spanning more than 20x), others one column of
    points per value with the mean marked. The best job is starred; failed jobs are counted in the title."""
    params = list(params) if params is not None else swept_params(df)
    if not params:
        raise ValueError("no swept hyperparameter: every override takes a single value across the jobs "
                         f"(overrides: {df.attrs.get('params')}); pass params=[...] to plot some anyway")
    missing = [p for p in (*params, metric) if p not in df.columns]
    if missing:
        raise ValueError(f"column(s) {missing} not in the sweep table (columns: {list(df.columns)})")
    done = df[(df["status"] == STATUS_OK) & df[metric].notna()] if "status" in df.columns else df[df[metric].notna()]
    if done.empty:
        raise ValueError(f"no finished job has a value for {metric!r}")
    best = done[metric].idxmax()
    ncols = min(ncols, len(params))
    nrows = math.ceil(len(params) / ncols)
    fig, axes = _new_figure(ncols, nrows, width=4.2, height=3.4)
    rng = np.random.default_rng(0)
    for ax, param in zip(axes, params):
        values = done[param]
        numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
        if numeric:
            x = values.astype(float)
            ax.scatter(x, done[metric], color="#1f77b4", alpha=0.8)
            ax.scatter([x[best]], [done.loc[best, metric]], marker="*", s=200, color="#d62728", zorder=3, label="best")
            if (x > 0).all() and x.max() / x.min() > 20:
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())  # labels at the decades only: no overlapping text
            if x.nunique() <= 6:  # a grid: tick the values tried, join the mean at each
                means = done.groupby(x)[metric].mean()
                ax.plot(means.index, means.to_numpy(), color="k", lw=1, marker="_", ms=20, label="mean")
                ax.set_xticks(means.index, [f"{v:g}" for v in means.index])
                ax.minorticks_off()
        else:
            labels = sorted(values.astype(str).unique())
            pos = values.astype(str).map({v: i for i, v in enumerate(labels)}).astype(float)
            ax.scatter(pos + rng.uniform(-0.08, 0.08, len(pos)), done[metric], color="#1f77b4", alpha=0.8)
            means = done.groupby(values.astype(str))[metric].mean()
            ax.scatter(range(len(labels)), [means[v] for v in labels], marker="_", s=400, color="k", label="mean")
            ax.scatter([pos[best]], [done.loc[best, metric]], marker="*", s=200, color="#d62728", zorder=3, label="best")
            ax.set_xticks(range(len(labels)), labels)
        ax.set(xlabel=param, ylabel=metric)
        ax.grid(alpha=0.3)
    for ax in axes[len(params):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=8)
    failed = len(df) - len(done)
    fig.suptitle(f"{metric} over {len(done)} finished jobs" + (f" ({failed} failed or unfinished)" if failed else ""))
    return fig


# ------------------------------------------------------------------------------------------- run figures


def save_figure(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def save_run_figures(run_dir: str | Path, split: Split, rankings: Mapping[str, Ranking], *,
                     item_counts: np.ndarray | None = None, out_dir: str | Path | None = None,
                     stage: str = "test", max_k: int = 50) -> dict[str, Path]:
    """Write the figures of a run into `out_dir` (default RUN_DIR/figures): data.png, training.png (when the
    run has a CSV log), and, for the given rankings (model name -> `analysis.rank_split` result),
    metrics_at_k.png, metrics_at_k.csv and popularity_bias.png. Returns name -> path."""
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir else run_dir / FIGURES_DIR
    counts = split.item_counts() if item_counts is None else item_counts
    written: dict[str, Path] = {"data": save_figure(plot_data_stats(split), out / "data.png")}
    try:
        training_log = analysis.load_training_log(run_dir)
    except FileNotFoundError:
        training_log = None
    if training_log is not None and not (training_log.train.empty and training_log.val.empty):
        written["training"] = save_figure(plot_training_curves(training_log), out / "training.png")
    if rankings:
        curves = {name: analysis.metrics_at_k(r.ranks, max_k) for name, r in rankings.items()}
        users = len(next(iter(rankings.values())))
        title = f"{split.name}, {stage} ({users:,} users, {split.num_items:,} items)"
        written["metrics_at_k"] = save_figure(plot_metrics_at_k(curves, title), out / "metrics_at_k.png")
        table = pd.concat({name: c for name, c in curves.items()}, names=["model"]).reset_index()
        table.to_csv(out / "metrics_at_k.csv", index=False)
        written["metrics_at_k_csv"] = out / "metrics_at_k.csv"
        exposures = {name: analysis.exposure_counts(r.top, split.num_items) for name, r in rankings.items()}
        list_len = next(iter(rankings.values())).list_len
        fig = plot_popularity_bias(exposures, counts, list_len=list_len, title=title)
        written["popularity_bias"] = save_figure(fig, out / "popularity_bias.png")
    for path in written.values():
        log.info("wrote %s", path)
    return written


def rank_models(scorers: Mapping[str, object], split: Split, stage: str = "test",
                eval_cfg: Mapping | None = None, progress: bool = True) -> dict[str, Ranking]:
    """`analysis.rank_split` for each named scorer."""
    return {name: analysis.rank_split(s, split, stage, eval_cfg, progress=progress, desc=f"rank {name}")
            for name, s in scorers.items()}
