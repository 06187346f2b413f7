"""`train(cfg)`: the one entry point behind `python train.py`, in a fixed order:
seed -> load and split data -> fit (baseline or two-tower) -> evaluate valid/test -> metrics.json.
Returns (metrics, objects) so Hydra sweepers can optimise `cfg.optimized_metric`.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import hydra
import lightning as L
import numpy as np
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from towerrec import evaluation
from towerrec.data.splits import Split, leave_last_out
from towerrec.data.text import TextConfig, render_items

log = logging.getLogger(__name__)

BASELINES = ("popularity", "itemknn", "zeroshot")
DATA_ONLY_KEYS = ("min_interactions",)


def load_split(data_cfg: DictConfig) -> Split:
    from towerrec.data.loaders import load_dataset

    params = {k: v for k, v in OmegaConf.to_container(data_cfg, resolve=True).items() if k not in DATA_ONLY_KEYS}
    dataset = load_dataset(params)
    split = leave_last_out(dataset, int(data_cfg.get("min_interactions", 3)))
    lengths = np.array([len(s) for s in split.sequences])
    log.info("%s: %d items, %d users, %d interactions (mean %.1f per user), fingerprint %s", split.name,
             split.num_items, len(split.users), lengths.sum(), lengths.mean(), split.fingerprint)
    return split


def evaluate_scorer(scorer, split: Split, eval_cfg: DictConfig, stages=("valid", "test")) -> dict[str, float]:
    """Harness metrics of one scorer on the valid and test examples, slash-prefixed."""
    metrics: dict[str, float] = {}
    counts, categories = split.item_counts(), split.catalog.top_category()
    for stage in stages:
        tag = "val" if stage == "valid" else stage
        m = evaluation.evaluate(scorer, split.examples(stage), split.num_items, item_counts=counts,
                                item_categories=categories, ks=tuple(eval_cfg.ks), beyond_k=eval_cfg.beyond_k,
                                exclude_history=eval_cfg.exclude_history, batch_size=eval_cfg.batch_size,
                                tie_seed=eval_cfg.tie_seed, progress=True, desc=f"eval {stage}")
        metrics.update(evaluation.prefix(m, tag))
    return metrics


def build_baseline(cfg: DictConfig, split: Split):
    from towerrec import baselines

    kind = cfg.model.kind
    if kind == "popularity":
        return baselines.Popularity(split.item_counts())
    if kind == "itemknn":
        m = cfg.model
        return baselines.TransitionKNN(split.train_sequences(), split.num_items, window=m.window, forward=m.forward,
                                       backward=m.backward, decay=m.decay, history=m.history,
                                       item_counts=split.item_counts())
    if kind == "zeroshot":
        from towerrec.encoders import load_encoder

        texts = render_items(split.catalog, TextConfig.from_dict(cfg.text))
        encoder, tokenizer = load_encoder(cfg.model.encoder, corpus=texts)
        emb = baselines.encode_texts(encoder, tokenizer, texts, cfg.model.max_length, cfg.model.batch_size,
                                     cfg.model.pooling)
        return baselines.ZeroShotText(emb, decay=cfg.model.decay, history=cfg.model.history)
    raise ValueError(f"unknown baseline {kind!r}; choose one of {BASELINES} or two_tower")


def instantiate_loggers(cfg: DictConfig) -> list:
    loggers = []
    for name, node in (cfg.get("logger") or {}).items():
        if isinstance(node, DictConfig) and "_target_" in node:
            if "Wandb" in node._target_ and node.get("offline", True):
                os.environ.setdefault("WANDB_MODE", "offline")
            loggers.append(hydra.utils.instantiate(node))
    return loggers


def instantiate_callbacks(cfg: DictConfig, has_logger: bool = True) -> list:
    callbacks = []
    for node in (cfg.get("callbacks") or {}).values():
        if not (isinstance(node, DictConfig) and "_target_" in node):
            continue
        if not has_logger and node._target_.endswith("LearningRateMonitor"):
            continue  # it needs a logger to write to
        callbacks.append(hydra.utils.instantiate(node))
    return callbacks


def build_two_tower(cfg: DictConfig, split: Split):
    """(TwoTower, tokenizer, TextConfig) from `cfg.model` and `cfg.text`; weights as configured (untrained)."""
    from towerrec.encoders import load_encoder
    from towerrec.towers import TwoTower

    m = cfg.model
    text_cfg = TextConfig.from_dict(cfg.text)
    encoder, tokenizer = load_encoder(m.encoder, corpus=render_items(split.catalog, text_cfg))
    projection_dim = m.projection_dim or (encoder.config.hidden_size if m.get("projection") else None)
    model = TwoTower(encoder, pooling=m.pooling, projection_dim=projection_dim, shared_encoder=m.shared_encoder,
                     freeze_layers=m.freeze_layers, dropout=m.get("dropout"),
                     item_id_counts=split.item_counts() if m.item_id_embedding else None)
    return model, tokenizer, text_cfg


def build_module(cfg: DictConfig, model, item_counts: np.ndarray):
    """The RetrievalModule around `model`, with the loss, optimizer and evaluation settings of `cfg`."""
    from towerrec.module import RetrievalModule

    m, loss_cfg = cfg.model, cfg.loss
    return RetrievalModule(
        model, optimizer=hydra.utils.instantiate(m.optimizer),
        scheduler=hydra.utils.instantiate(m.scheduler) if m.get("scheduler") else None,
        temperature=loss_cfg.temperature, learn_temperature=loss_cfg.learn_temperature,
        log_q_correction=loss_cfg.log_q_correction, mask_accidental_hits=loss_cfg.mask_accidental_hits,
        memory_size=loss_cfg.memory_size, cache_chunk_size=loss_cfg.cache_chunk_size, item_counts=item_counts,
        ks=tuple(int(k) for k in cfg.eval.ks), beyond_k=int(cfg.eval.beyond_k), tie_seed=int(cfg.eval.tie_seed),
        exclude_history=cfg.eval.exclude_history, seed=cfg.seed,
    )


def fit_two_tower(cfg: DictConfig, split: Split, loggers: list, run_dir: Path):
    """Build towers, data and trainer from config; fit; validate and test the best checkpoint."""
    from towerrec.data.datamodule import RetrievalDataModule

    m, loss_cfg = cfg.model, cfg.loss
    counts = split.item_counts()
    model, tokenizer, text_cfg = build_two_tower(cfg, split)
    datamodule = RetrievalDataModule(split, tokenizer, text_cfg, uniform_negatives=loss_cfg.uniform_negatives,
                                     seed=cfg.seed, cache_dir=cfg.paths.cache_dir, **m.datamodule)
    module = build_module(cfg, model, counts)
    callbacks = instantiate_callbacks(cfg, has_logger=bool(loggers))
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    train_seconds = time.perf_counter() - start
    ckpt = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    ckpt = ckpt or None
    log.info("evaluating checkpoint %s", ckpt or "(last weights)")
    trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
    trainer.test(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
    if trainer.is_global_zero:
        tokenizer.save_pretrained(run_dir / "tokenizer")
    metrics = {**evaluation.prefix(module.eval_metrics["valid"], "val"),
               **evaluation.prefix(module.eval_metrics["test"], "test"),
               "train/seconds": train_seconds, "train/epochs": float(trainer.current_epoch)}
    return metrics, {"trainer": trainer, "module": module, "datamodule": datamodule, "best_ckpt": ckpt}


def train(cfg: DictConfig) -> tuple[dict[str, float], dict]:
    L.seed_everything(cfg.seed, workers=True)
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.get("stage", "train") == "export":
        return export_only(cfg)
    if cfg.get("stage", "train") == "rerank":  # LoRA fine-tune + evaluate the LM reranker (artifact=PATH)
        from towerrec.rerank.finetune import run_finetune

        return run_finetune(cfg)
    split = load_split(cfg.data)
    loggers = instantiate_loggers(cfg)
    start = time.perf_counter()
    if cfg.model.kind in BASELINES:
        scorer = build_baseline(cfg, split)
        metrics = evaluate_scorer(scorer, split, cfg.eval)
        objects = {"scorer": scorer}
        for lg in loggers:
            lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
            lg.log_metrics(metrics)
    else:
        metrics, objects = fit_two_tower(cfg, split, loggers, run_dir)
        if objects["trainer"].is_global_zero and cfg.export.enabled:
            from towerrec.export import export_run

            objects["artifact"] = export_run(cfg, objects, metrics)
            log.info("exported the serving artifact to %s", objects["artifact"])
    metrics["time/seconds"] = time.perf_counter() - start
    objects["split"] = split
    if rank_zero_only.rank != 0:  # under DDP, rank 0 alone writes and reports
        return metrics, objects
    metrics_path = run_dir / "metrics.json"
    evaluation.save_metrics(metrics_path, metrics)
    for lg in loggers:
        if "Wandb" in type(lg).__name__:
            log_wandb_artifact(lg, metrics_path)
        lg.finalize("success")
    if cfg.get("plots", True):  # PNGs in RUN_DIR/figures (towerrec.plots); after finalize: the CSV log is complete
        from towerrec.plots import save_figures_after_training

        save_figures_after_training(cfg, run_dir, split, objects)
    print(f"\n{split.name} / {cfg.model.kind}  ({run_dir})\n" + evaluation.format_table(metrics))
    return metrics, objects


def export_only(cfg: DictConfig) -> tuple[dict[str, float], dict]:
    """`python train.py stage=export ckpt_path=...`: export a trained checkpoint without training."""
    from towerrec.export import Artifact, export_checkpoint

    if not cfg.get("ckpt_path"):
        raise ValueError("stage=export needs ckpt_path=PATH/TO/CHECKPOINT.ckpt")
    path = export_checkpoint(cfg, cfg.ckpt_path)
    metrics = dict(Artifact.load(path).manifest.get("metrics", {}))
    print(f"exported {cfg.ckpt_path} to {path}\n" + evaluation.format_table(metrics))
    return metrics, {"artifact": path}


def log_wandb_artifact(logger, path: Path) -> None:
    import wandb

    artifact = wandb.Artifact(name=f"metrics-{logger.experiment.id}", type="metrics")
    artifact.add_file(str(path))
    logger.experiment.log_artifact(artifact)


def metric_value(metrics: dict[str, float], name: str | None) -> float | None:
    if not name:
        return None
    if name not in metrics:
        raise KeyError(f"optimized_metric {name!r} is not among the metrics: {sorted(metrics)}")
    return metrics[name]
