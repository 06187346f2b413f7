"""The figures of a training run: after `python train.py` (rank zero), and for a finished run from the command line:

    python -m towerrec.tasks.plots RUN_DIR [--baselines popularity,itemknn,zeroshot] [--data scientific]

The run's model (its scorer, or the exported artifact of a tower run) and the baselines rank the test users
once more; `towerrec.reporting.plots.save_run_figures` writes RUN_DIR/figures/.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from towerrec.baselines import BASELINES, build_baseline
from towerrec.data.load import load_split
from towerrec.data.splits import Split
from towerrec.data.text import TextConfig
from towerrec.reporting import analysis
from towerrec.reporting.plots import DISPLAY_NAMES, FIGURES_DIR, rank_models, save_run_figures
from towerrec.retrieval import ArtifactScorer
from towerrec.utils.io import to_plain

log = logging.getLogger(__name__)


def _model_scorer(cfg, split: Split, objects: Mapping) -> tuple[str, object] | None:
    """(display name, scorer) of the run's own model, or None when it cannot be scored (no export)."""
    kind = cfg.model.kind
    if "scorer" in objects:
        return DISPLAY_NAMES.get(kind, kind), objects["scorer"]
    artifact = objects.get("artifact")
    if artifact is None:
        log.info("figures: the towers were not exported (export.enabled=false): no K curves for it")
        return None
    batch = int(cfg.model.datamodule.eval_batch_size) if "datamodule" in cfg.model else 256
    return DISPLAY_NAMES.get(kind, kind), ArtifactScorer(artifact, split, "test", batch_size=batch, progress=True)


def save_figures_after_training(cfg, run_dir: str | Path, split: Split, objects: Mapping) -> dict[str, Path]:
    """The figures of a finished `towerrec.tasks.train` run (rank zero), in RUN_DIR/figures.

    The run's model (its scorer, or the exported artifact of a tower run) and the popularity and item-KNN
    baselines rank the test users once more. A failure here is logged, not raised: the run's metrics and
    artifact are already written, and a figure is not worth losing them over."""
    try:
        own = _model_scorer(cfg, split, objects)
        scorers = dict([own]) if own else {}
        for name, scorer in analysis.default_baselines(split).items():
            scorers.setdefault(name, scorer)
        rankings = rank_models(scorers, split, "test", cfg.get("eval"))
        return save_run_figures(run_dir, split, rankings)
    except Exception:
        log.exception("could not save the run's figures in %s (plots=false skips them)", Path(run_dir) / FIGURES_DIR)
        return {}


# ----------------------------------------------------------------------------------------------------- CLI


def _run_config(run_dir: Path, conf_dir: Path, data: str | None):
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: RUN_DIR must be a train.py run directory")
    cfg = OmegaConf.load(path)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
        if data:
            overrides = [f"data={data}"] + ([f"text={data}"] if (conf_dir / "text" / f"{data}.yaml").is_file() else [])
            composed = _compose(conf_dir, overrides)
            cfg.data, cfg.text = composed.data, composed.text
    return cfg


def _compose(conf_dir: Path, overrides: list[str]):
    if not (conf_dir / "train.yaml").is_file():
        raise FileNotFoundError(f"{conf_dir / 'train.yaml'} not found: pass --conf-dir (the project's conf/ folder)")
    with initialize_config_dir(config_dir=str(conf_dir.resolve()), version_base="1.3"):
        return compose("train", overrides=overrides)


def _baseline_scorers(kinds: Sequence[str], cfg, split: Split, conf_dir: Path) -> dict[str, object]:
    cheap = [k for k in kinds if k in ("popularity", "itemknn")]
    scorers: dict[str, object] = dict(analysis.default_baselines(split, cheap))
    for kind in kinds:
        if kind in cheap:
            continue
        model_cfg = cfg.copy()
        with open_dict(model_cfg):
            model_cfg.model = _compose(conf_dir, [f"model={kind}"]).model
        scorers[DISPLAY_NAMES.get(kind, kind)] = build_baseline(to_plain(model_cfg.model), split,
                                                                TextConfig.from_dict(to_plain(model_cfg.text)))
    return scorers


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m towerrec.tasks.plots",
                                     description="(Re)create the figures of a finished train.py run.")
    parser.add_argument("run_dir", type=Path, help="a train.py run directory (holds .hydra/ and metrics.json)")
    parser.add_argument("--data", help="data config name (conf/data/NAME.yaml) instead of the run's saved one")
    parser.add_argument("--baselines", default="popularity,itemknn",
                        help="comma-separated baselines to compare with: popularity, itemknn, zeroshot")
    parser.add_argument("--stage", default="test", choices=("valid", "test"))
    parser.add_argument("--out", type=Path, help="output folder (default RUN_DIR/figures)")
    parser.add_argument("--conf-dir", type=Path, default=Path("conf"), help="the project's Hydra conf/ folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    run_dir = args.run_dir
    cfg = _run_config(run_dir, args.conf_dir, args.data)
    split = load_split(to_plain(cfg.data))
    kinds = [k.strip() for k in args.baselines.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in BASELINES]
    if unknown:
        parser.error(f"--baselines: unknown {unknown}; choose from {list(BASELINES)}")
    scorers: dict[str, object] = {}
    if (run_dir / "artifact").is_dir():
        batch = int(cfg.model.datamodule.eval_batch_size) if "datamodule" in cfg.model else 256
        name = DISPLAY_NAMES.get(cfg.model.kind, cfg.model.kind)
        scorers[name] = ArtifactScorer(run_dir / "artifact", split, args.stage, batch_size=batch, progress=True)
    elif cfg.model.kind in BASELINES and cfg.model.kind not in kinds:
        kinds.insert(0, cfg.model.kind)
    scorers.update(_baseline_scorers(kinds, cfg, split, args.conf_dir))
    rankings = rank_models(scorers, split, args.stage, cfg.get("eval"))
    for name, ranking in rankings.items():
        at10 = analysis.metrics_at_k(ranking.ranks, 10).iloc[-1]
        print(f"{name:>12}: {args.stage} recall@10 {at10['recall']:.4f}  ndcg@10 {at10['ndcg']:.4f}")
    written = save_run_figures(run_dir, split, rankings, out_dir=args.out, stage=args.stage)
    for path in written.values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
