"""Figures and the data behind them (towerrec.analysis, towerrec.sweeps, towerrec.plots).

The rank-based curves must equal the harness's metrics exactly (same masking, same tie order); exposure,
Lorenz and Gini are checked on hand-worked arrays; the sweep loader on a hand-made multirun layout; every
plot function on small inputs (a Figure with the expected panels, a valid PNG); and one tiny in-process
`train()` run must leave its PNGs in RUN_DIR/figures, which the CLI can recreate.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from towerrec import evaluation
from towerrec.data.splits import Examples
from towerrec.reporting import analysis, plots
from towerrec.reporting.sweeps import load_sweep, swept_params
from towerrec.tasks import plots as plots_task

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY_RUN = ["experiment=tiny", "data.num_users=120", "data.num_items=100", "model.datamodule.batch_size=16",
            "model.datamodule.eval_batch_size=64", "trainer.enable_progress_bar=false", "debug=fast", "logger=csv"]


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


# ------------------------------------------------------------------------------------------ ranks and curves


@pytest.mark.parametrize("exclude_history", [True, False])
def test_curves_from_ranks_equal_the_harness_metrics(tiny_split, exclude_history):
    split = tiny_split
    examples = split.examples("test")
    for name, scorer in analysis.default_baselines(split).items():
        expected = evaluation.evaluate(scorer, examples, split.num_items, item_counts=split.item_counts(),
                                       ks=(1, 5, 10, 50), beyond_k=10, exclude_history=exclude_history,
                                       batch_size=16, tie_seed=3)
        ranking = analysis.rank_users(scorer, examples, split.num_items, exclude_history=exclude_history,
                                      tie_seed=3, batch_size=16, list_len=10)
        curves = analysis.metrics_at_k(ranking.ranks, 50)
        for k in (1, 5, 10, 50):
            for metric in ("recall", "ndcg", "mrr"):
                assert curves.loc[k, metric] == pytest.approx(expected[f"{metric}@{k}"], abs=1e-12), (name, metric, k)
        exposure = analysis.exposure_counts(ranking.top, split.num_items)
        assert analysis.gini(exposure) == pytest.approx(expected["gini@10"], abs=1e-12)
        assert (exposure > 0).mean() == pytest.approx(expected["coverage@10"])
    assert list(curves.index) == list(range(1, 51))


def test_a_target_in_the_history_is_missed_and_leaves_the_history_out_of_the_list():
    # 4 items; item 3 scores best for everyone; user 0's target (3) is in its history
    def scorer(histories, users):
        return torch.tensor([[0.1, 0.2, 0.3, 0.9]]).expand(len(histories), -1).clone()

    examples = Examples(np.array(["a", "b"], dtype=object), [np.array([3, 0]), np.array([0])], np.array([3, 2]))
    ranking = analysis.rank_users(scorer, examples, 4, list_len=4)
    assert ranking.ranks[0] == analysis.MISSED
    assert ranking.ranks[1] == 1  # item 3 first, then item 2 (item 0 masked)
    assert ranking.top[0].tolist() == [2, 1, -1, -1]  # two masked items: two empty slots
    assert ranking.top[1].tolist() == [3, 2, 1, -1]
    curves = analysis.metrics_at_k(ranking.ranks, 4)
    assert curves["recall"].tolist() == [0.0, 0.5, 0.5, 0.5]


def test_metrics_at_k_by_hand():
    curves = analysis.metrics_at_k(np.array([0, 2, analysis.MISSED]), max_k=3)
    assert curves.loc[1].tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3])
    assert curves.loc[3, "recall"] == pytest.approx(2 / 3)
    assert curves.loc[3, "ndcg"] == pytest.approx((1 + 1 / math.log2(4)) / 3)
    assert curves.loc[3, "mrr"] == pytest.approx((1 + 1 / 3) / 3)
    with pytest.raises(ValueError, match="non-negative"):
        analysis.metrics_at_k(np.array([-1]))
    with pytest.raises(ValueError, match="non-empty"):
        analysis.metrics_at_k(np.array([], dtype=np.int64))


def test_exposure_by_popularity_and_lorenz_by_hand():
    counts = np.array([3, 0, 2, 1])  # popularity order (least first): items 1, 3, 2, 0
    exposure = analysis.exposure_counts(np.array([[0, 2], [0, -1]]), 4)
    assert exposure.tolist() == [2, 0, 1, 0]
    table = analysis.exposure_by_popularity(exposure, counts, bins=2)  # bin 1 = items {1, 3}, bin 2 = {2, 0}
    assert table["items"].tolist() == [2, 2]
    assert table["exposure_share"].tolist() == pytest.approx([0.0, 1.0])
    assert table["interaction_share"].tolist() == pytest.approx([1 / 6, 5 / 6])

    x, y = analysis.lorenz_curve(exposure)  # sorted exposure 0, 0, 1, 2
    assert x.tolist() == pytest.approx([0, 0.25, 0.5, 0.75, 1])
    assert y.tolist() == pytest.approx([0, 0, 0, 1 / 3, 1])
    assert analysis.gini(np.ones(5)) == 0.0
    x, y = analysis.lorenz_curve(np.zeros(3))  # nothing shown: the diagonal, not a division by zero
    assert y.tolist() == pytest.approx(x.tolist())
    with pytest.raises(ValueError, match="outside the catalog"):
        analysis.exposure_counts(np.array([[5]]), 4)
    with pytest.raises(ValueError, match="bins"):
        analysis.exposure_by_popularity(exposure, counts, bins=5)


def test_dataset_summary_and_long_tail(tiny_split):
    summary = analysis.dataset_summary(tiny_split)
    lengths = [len(s) for s in tiny_split.sequences]
    assert summary["users"] == len(lengths) and summary["items"] == tiny_split.num_items
    assert summary["interactions"] == sum(lengths)
    assert 0 < summary["share_of_interactions_top20pct_items"] <= 1
    tail = analysis.long_tail(analysis.item_popularity(tiny_split))
    assert tail["count"].is_monotonic_decreasing and tail["cum_share"].iloc[-1] == pytest.approx(1.0)
    assert analysis.item_popularity(tiny_split, training_only=True).tolist() == tiny_split.item_counts().tolist()


def test_default_baselines_use_the_settings_of_their_config_files(tiny_split):
    from omegaconf import OmegaConf

    knn = analysis.default_baselines(tiny_split, ["itemknn"])["item-KNN"]
    conf = OmegaConf.load(ROOT / "conf" / "model" / "itemknn.yaml")
    assert (knn.decay, knn.history) == (conf.decay, conf.history)
    import inspect

    from towerrec.baselines import TransitionKNN

    defaults = {k: p.default for k, p in inspect.signature(TransitionKNN).parameters.items()}
    for key in ("window", "forward", "backward", "decay", "history"):
        assert defaults[key] == conf[key], key
    with pytest.raises(ValueError, match="unknown default baseline 'zeroshot'"):
        analysis.default_baselines(tiny_split, ["zeroshot"])


# ---------------------------------------------------------------------------------------------- training log


def _write_csv_log(run_dir: Path) -> Path:
    """A CSVLogger file as a 2-epoch run writes it: lr and loss rows, validation per epoch, then the best
    checkpoint validated and tested once more at epoch 2."""
    rows = [
        {"epoch": None, "step": 4, "lr-AdamW": 1e-3},
        {"epoch": 0, "step": 4, "train/loss": 3.0},
        {"epoch": 0, "step": 9, "train/loss": 2.5},
        {"epoch": 0, "step": 9, "val/recall@10": 0.2, "val/ndcg@10": 0.1},
        {"epoch": None, "step": 14, "lr-AdamW": 5e-4},
        {"epoch": 1, "step": 14, "train/loss": 2.0},
        {"epoch": 1, "step": 19, "val/recall@10": 0.3, "val/ndcg@10": 0.15},
        {"epoch": 2, "step": 20, "val/recall@10": 0.3, "val/ndcg@10": 0.15},
        {"epoch": 2, "step": 20, "test/recall@10": 0.25, "test/ndcg@10": 0.12},
    ]
    path = run_dir / "csv" / "metrics.csv"
    path.parent.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_training_log_splits_training_validation_and_final_rows(tmp_path):
    _write_csv_log(tmp_path)
    tl = analysis.load_training_log(tmp_path)
    assert tl.train["step"].tolist() == [4, 9, 14]
    assert tl.train["train/loss"].tolist() == [3.0, 2.5, 2.0]
    assert tl.train["lr-AdamW"].tolist()[0] == 1e-3 and tl.train["epoch"].tolist() == [0, 0, 1]
    assert tl.val["epoch"].tolist() == [0, 1] and tl.val["val/recall@10"].tolist() == [0.2, 0.3]
    assert tl.final == {"val/recall@10": 0.3, "val/ndcg@10": 0.15, "test/recall@10": 0.25, "test/ndcg@10": 0.12}
    with pytest.raises(FileNotFoundError, match="logger=csv"):
        analysis.load_training_log(tmp_path / "nothing-here")


def test_training_log_of_a_baseline_run_has_final_values_only(tmp_path, tiny_split):
    path = tmp_path / "csv" / "metrics.csv"  # a baseline run logs its metrics once, outside any fit
    path.parent.mkdir(parents=True)
    pd.DataFrame([{"step": 0, "val/recall@10": 0.2, "test/recall@10": 0.3}]).to_csv(path, index=False)
    tl = analysis.load_training_log(tmp_path)
    assert tl.train.empty and tl.val.empty and tl.final == {"val/recall@10": 0.2, "test/recall@10": 0.3}
    assert "training" not in plots.save_run_figures(tmp_path, tiny_split, {})  # nothing to draw: no training.png


# ----------------------------------------------------------------------------------------------------- sweeps


def _job(root: Path, name: str, overrides: list[str], metrics: dict | None = None, error: bool = False) -> None:
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    if error:
        (job / "error.log").write_text("Traceback ...")


def test_load_sweep_reads_jobs_overrides_metrics_and_optuna_results(tmp_path):
    fixed = ["experiment=tiny", "+callbacks.fail.job=1"]
    _job(tmp_path, "0", [*fixed, "loss.temperature=0.05", "model.pooling=mean"], {"val/ndcg@10": 0.1})
    _job(tmp_path, "2", [*fixed, "loss.temperature=0.1", "model.pooling=cls"], error=True)
    _job(tmp_path, "10", [*fixed, "loss.temperature=0.02", "model.pooling=cls"], {"val/ndcg@10": 0.2, "x": None})
    _job(tmp_path, "3", [*fixed, "loss.temperature=0.03", "model.pooling=mean"])  # still running
    (tmp_path / "optimization_results.yaml").write_text("name: optuna\nbest_params:\n  loss.temperature: 0.02\n"
                                                        "best_value: 0.2\n")
    df = load_sweep(tmp_path)
    assert df["job"].tolist() == ["0", "2", "3", "10"]  # numeric order, not text order
    assert df["status"].tolist() == ["ok", "failed", "incomplete", "ok"]
    assert df["loss.temperature"].tolist() == [0.05, 0.1, 0.03, 0.02]
    assert df["callbacks.fail.job"].tolist() == [1, 1, 1, 1]  # '+key' counts as key, typed
    assert df.loc[3, "val/ndcg@10"] == 0.2 and math.isnan(df.loc[3, "x"]) and math.isnan(df.loc[1, "val/ndcg@10"])
    assert df.attrs["params"] == ["experiment", "callbacks.fail.job", "loss.temperature", "model.pooling"]
    assert swept_params(df) == ["loss.temperature", "model.pooling"]
    assert df.attrs["optuna"]["best_value"] == 0.2


def test_load_sweep_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_sweep(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no Hydra job"):
        load_sweep(tmp_path)
    _job(tmp_path, "0", ["loss.temperature=0.05", "model.x=(unbalanced"])
    with pytest.raises(ValueError, match=r"overrides.yaml, line 2: cannot parse the override"):
        load_sweep(tmp_path)


def test_load_sweep_finds_jobs_of_several_sweeps_under_a_multiruns_root(tmp_path):
    _job(tmp_path / "2026-01-01" / "10-00-00", "0", ["loss.temperature=0.05"], {"val/ndcg@10": 0.1})
    _job(tmp_path / "2026-01-02" / "09-00-00", "0", ["loss.temperature=0.07"], {"val/ndcg@10": 0.3})
    df = load_sweep(tmp_path)
    assert df["job"].tolist() == ["2026-01-01/10-00-00/0", "2026-01-02/09-00-00/0"]


# ------------------------------------------------------------------------------------------------------ plots


def _rankings(split):
    return plots.rank_models(analysis.default_baselines(split), split, "test", progress=False)


def test_plot_functions_return_figures_that_save_as_png(tiny_split, tmp_path):
    split = tiny_split
    rankings = _rankings(split)
    curves = {name: analysis.metrics_at_k(r.ranks) for name, r in rankings.items()}
    exposures = {name: analysis.exposure_counts(r.top, split.num_items) for name, r in rankings.items()}
    _write_csv_log(tmp_path / "run")
    figures = {
        "data": plots.plot_data_stats(split),
        "k": plots.plot_metrics_at_k(curves, title="test"),
        "bias": plots.plot_popularity_bias(exposures, split.item_counts(), list_len=10),
        "training": plots.plot_training_curves(tmp_path / "run"),
    }
    for name, fig in figures.items():
        assert isinstance(fig, Figure)
        assert _is_png(plots.save_figure(fig, tmp_path / f"{name}.png")), name
    k_axes = figures["k"].axes
    assert [ax.get_ylabel() for ax in k_axes] == ["Recall@K", "NDCG@K"]
    assert [line.get_label() for line in k_axes[0].get_lines()][:2] == ["popularity", "item-KNN"]
    recall_line = k_axes[0].get_lines()[1]
    assert recall_line.get_ydata().tolist() == pytest.approx(curves["item-KNN"]["recall"].tolist())
    bias_axes = figures["bias"].axes
    assert len(bias_axes[0].patches) == 2 * 10  # one bar per model and decile
    legend = [t.get_text() for t in bias_axes[1].get_legend().get_texts()]
    assert legend[0].startswith("popularity (Gini ") and legend[-1].startswith("training interactions")
    assert len(figures["training"].axes) == 3  # loss, validation, learning rate
    with pytest.raises(ValueError, match="no curves"):
        plots.plot_metrics_at_k({})


def test_plot_sweep_numeric_and_categorical_panels(tmp_path):
    for i, (t, pooling, ndcg) in enumerate([(0.02, "mean", 0.1), (0.05, "cls", 0.3), (0.5, "mean", 0.2)]):
        _job(tmp_path, str(i), ["experiment=tiny", f"loss.temperature={t}", f"model.pooling={pooling}"],
             {"val/ndcg@10": ndcg})
    _job(tmp_path, "3", ["experiment=tiny", "loss.temperature=0.1", "model.pooling=mean"], error=True)
    df = load_sweep(tmp_path)
    fig = plots.plot_sweep(df, "val/ndcg@10")
    temp_ax, pooling_ax = fig.axes
    assert temp_ax.get_xlabel() == "loss.temperature" and temp_ax.get_xscale() == "log"  # 0.02..0.5: 25x
    assert [t.get_text() for t in pooling_ax.get_xticklabels()] == ["cls", "mean"]
    assert "3 finished jobs (1 failed or unfinished)" in fig.get_suptitle()
    assert _is_png(plots.save_figure(fig, tmp_path / "sweep.png"))
    with pytest.raises(ValueError, match="no swept hyperparameter"):
        plots.plot_sweep(df[df["job"] == "0"])  # one job: nothing varies
    with pytest.raises(ValueError, match=r"\['val/missing'\] not in the sweep table"):
        plots.plot_sweep(df, "val/missing")


def test_save_run_figures_writes_every_png(tiny_split, tmp_path):
    run_dir = tmp_path / "run"
    _write_csv_log(run_dir)
    written = plots.save_run_figures(run_dir, tiny_split, _rankings(tiny_split))
    assert set(written) == {"data", "training", "metrics_at_k", "metrics_at_k_csv", "popularity_bias"}
    for name, path in written.items():
        assert path.parent == run_dir / "figures"
        assert path.suffix == ".csv" or _is_png(path), name
    table = pd.read_csv(written["metrics_at_k_csv"])
    assert set(table["model"]) == {"popularity", "item-KNN"} and table["k"].max() == 50


def test_a_plotting_failure_is_logged_not_raised(tiny_split, tmp_path, monkeypatch, caplog):
    from omegaconf import OmegaConf

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(analysis, "default_baselines", broken)
    cfg = OmegaConf.create({"model": {"kind": "popularity"}, "eval": {}})
    with caplog.at_level(logging.ERROR, logger="towerrec.tasks.plots"):
        assert plots_task.save_figures_after_training(cfg, tmp_path, tiny_split, {"scorer": lambda h, u: None}) == {}
    assert "could not save the run's figures" in caplog.text and "boom" in caplog.text


# --------------------------------------------------------------------------------------- train.py and the CLI


def _train(overrides: list[str], tmp: Path) -> tuple[Path, dict]:
    """(run_dir, metrics) of an in-process `train()`, composed as `python train.py` would be in tmp/run."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    from towerrec.tasks.train import train

    run_dir = tmp / "run"
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, f"paths.log_dir={tmp / 'logs'}",
                                          f"paths.cache_dir={tmp / 'cache'}"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")  # as `python train.py` leaves it, for the CLI
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        metrics, _ = train(cfg)
    finally:
        torch.set_num_threads(threads)
        HydraConfig.instance().cfg = None
    return run_dir, metrics


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """(run_dir, metrics): one run of the default model (the sequence towers) on experiment=tiny on a small world (a few seconds)."""
    return _train(TINY_RUN, tmp_path_factory.mktemp("tiny_run"))


def test_train_leaves_the_figures_in_its_run_dir(tiny_run):
    run_dir, metrics = tiny_run
    for name in ("data", "training", "metrics_at_k", "popularity_bias"):
        assert _is_png(run_dir / "figures" / f"{name}.png"), name
    table = pd.read_csv(run_dir / "figures" / "metrics_at_k.csv").set_index(["model", "k"])
    assert set(table.index.get_level_values("model")) == {"sequence", "popularity", "item-KNN"}
    # the exported model, re-ranked for the figures, scores what training's own test evaluation scored
    for k in (5, 10, 20, 50):
        assert table.loc[("sequence", k), "recall"] == pytest.approx(metrics[f"test/recall@{k}"], abs=1e-6)
        assert table.loc[("sequence", k), "ndcg"] == pytest.approx(metrics[f"test/ndcg@{k}"], abs=1e-6)


def test_a_baseline_run_leaves_its_figures_too(tmp_path):
    run_dir, metrics = _train(["model=itemknn", "data.num_users=80", "data.num_items=60", "logger=csv"], tmp_path)
    assert {p.name for p in (run_dir / "figures").iterdir()} == {"data.png", "metrics_at_k.png", "metrics_at_k.csv",
                                                                "popularity_bias.png"}  # no training to plot
    table = pd.read_csv(run_dir / "figures" / "metrics_at_k.csv").set_index(["model", "k"])
    assert set(table.index.get_level_values("model")) == {"item-KNN", "popularity"}
    assert table.loc[("item-KNN", 10), "ndcg"] == pytest.approx(metrics["test/ndcg@10"], abs=1e-12)


def test_cli_recreates_the_figures_of_a_finished_run(tiny_run, tmp_path, monkeypatch):
    run_dir, metrics = tiny_run
    out = tmp_path / "again"
    monkeypatch.chdir(ROOT)
    assert plots_task.main([str(run_dir), "--baselines", "popularity", "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"data.png", "training.png", "metrics_at_k.png", "metrics_at_k.csv",
                                              "popularity_bias.png"}
    table = pd.read_csv(out / "metrics_at_k.csv").set_index(["model", "k"])
    assert set(table.index.get_level_values("model")) == {"sequence", "popularity"}
    assert table.loc[("sequence", 10), "recall"] == pytest.approx(metrics["test/recall@10"], abs=1e-6)
    with pytest.raises(SystemExit):
        plots_task.main([str(run_dir), "--baselines", "bogus"])


def test_plots_false_skips_the_figures(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from towerrec.tasks import train as train_task

    called = []
    monkeypatch.setattr(train_task, "save_figures_after_training", lambda *a, **k: called.append(a))
    cfg = OmegaConf.create({"seed": 0, "stage": "train", "plots": False, "paths": {"output_dir": str(tmp_path)},
                            "data": {}, "model": {"kind": "popularity"}, "eval": {}, "logger": None})

    class FakeSplit:
        name, num_items = "fake", 1

    monkeypatch.setattr(train_task, "load_split", lambda data: FakeSplit())
    monkeypatch.setattr(train_task, "build_baseline", lambda params, split, text: None)
    monkeypatch.setattr(train_task.evaluation, "evaluate_split", lambda *a, **k: {"test/recall@10": 0.5})
    train_task.train(cfg)
    assert called == [] and (tmp_path / "metrics.json").is_file()
    train_task.train(OmegaConf.merge(cfg, {"plots": True}))
    assert len(called) == 1
