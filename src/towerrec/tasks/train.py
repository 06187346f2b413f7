"""`train(cfg)`: the one entry point behind `python train.py`, in a fixed order:
seed -> load and split data -> fit (baseline or two-tower) -> evaluate valid/test -> export -> metrics.json.
Returns (metrics, objects) so Hydra sweepers can optimise `cfg.optimized_metric`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from towerrec import evaluation
from towerrec.baselines import BASELINES, build_baseline
from towerrec.data.datamodule import RetrievalDataModule
from towerrec.data.load import load_split
from towerrec.data.sequences import SequenceDataModule
from towerrec.data.splits import Split
from towerrec.data.text import TextConfig, render_items
from towerrec.model.build import build_sequence, build_two_tower
from towerrec.model.module import RetrievalModule
from towerrec.model.sequence_module import SequenceModule
from towerrec.model.text_encoder import TextEncoderSettings, load_product_text
from towerrec.tasks.export import check_backend, development_key, export_only, export_run
from towerrec.tasks.plots import save_figures_after_training
from towerrec.tasks.rerank import run_rerank
from towerrec.utils.hydra import instantiate_callbacks, instantiate_loggers, log_wandb_artifact
from towerrec.utils.io import to_plain

log = logging.getLogger(__name__)

STAGES = ("train", "export", "rerank")


def two_tower_from_config(cfg: DictConfig, split: Split):
    """(TwoTower, tokenizer, TextConfig, model_config) from `cfg.model` and `cfg.text`, weights untrained.
    `model_config` is what rebuilds the towers later (stored in checkpoints)."""
    model_config = {"model": to_plain(cfg.model), "text": to_plain(cfg.text)}
    text = TextConfig.from_dict(model_config["text"])
    model, tokenizer = build_two_tower(model_config["model"], render_items(split.catalog, text), split.item_counts())
    return model, tokenizer, text, model_config


def build_module(cfg: DictConfig, model, item_counts, model_config: dict | None = None) -> RetrievalModule:
    """The RetrievalModule around `model`, with the loss, optimizer and evaluation settings of `cfg`."""
    m, loss_cfg = cfg.model, cfg.loss
    if loss_cfg.get("kind", "inbatch") != "inbatch":
        raise ValueError(f"loss={loss_cfg.kind} is for the sequence towers (model=sequence); the text two-tower "
                         "model trains with loss=inbatch")
    return RetrievalModule(
        model, optimizer=hydra.utils.instantiate(m.optimizer),
        scheduler=hydra.utils.instantiate(m.scheduler) if m.get("scheduler") else None,
        temperature=loss_cfg.temperature, learn_temperature=loss_cfg.learn_temperature,
        log_q_correction=loss_cfg.log_q_correction, mask_accidental_hits=loss_cfg.mask_accidental_hits,
        memory_size=loss_cfg.memory_size, cache_chunk_size=loss_cfg.cache_chunk_size, item_counts=item_counts,
        eval_config=evaluation.EvalConfig.from_any(cfg.eval), seed=cfg.seed, model_config=model_config,
    )


def sequence_from_config(cfg: DictConfig, split: Split):
    """(SequenceModule, SequenceDataModule, tokenizer or None) from `cfg.model`, `cfg.text` and `cfg.loss`. The
    product text comes as `model.text_encoder.train` says (towerrec.model.text_encoder): frozen text vectors, or
    an encoder whose top layers / all layers train; what can be cached (text vectors, lower-layer token states)
    comes from `paths.cache_dir` when an earlier run computed it.

    The datamodule also keeps what the export needs besides the module (`towerrec.tasks.export.export_run`):
    `text` (the TextConfig), `text_encoder` and `tokenizer` (the encoder that computed the text vectors, whose
    trained layers the export puts back from the module, and its tokenizer; None for an id-only model)."""
    m = to_plain(cfg.model)
    settings = TextEncoderSettings.from_dict(m["text_encoder"])
    if settings.trains and not m.get("text", True):
        raise ValueError(f"model.text_encoder.train={settings.train} trains the product text encoder, but "
                         "model.text=false (id-only) has none; use model.text_encoder.train=frozen")
    text = TextConfig.from_dict(to_plain(cfg.text))
    product, progress = None, bool(cfg.trainer.get("enable_progress_bar", True))
    if m.get("text", True):
        product = load_product_text(m["encoder"], render_items(split.catalog, text), settings,
                                    cache_dir=cfg.paths.cache_dir, seed=cfg.seed, progress=progress)
    L.seed_everything(cfg.seed, workers=True)  # the towers' initial weights do not depend on the cache
    model = build_sequence(m, product.vectors if product else None, split.num_items, split.item_counts(),
                           text_module=product.trainable if product else None)
    loss_cfg = cfg.loss
    module = SequenceModule(
        model, optimizer=hydra.utils.instantiate(cfg.model.optimizer),
        scheduler=hydra.utils.instantiate(cfg.model.scheduler) if cfg.model.get("scheduler") else None,
        temperature=loss_cfg.temperature, learn_temperature=loss_cfg.learn_temperature,
        loss_kind=loss_cfg.get("kind", "inbatch"), log_q_correction=loss_cfg.log_q_correction,
        item_counts=split.item_counts(), eval_config=evaluation.EvalConfig.from_any(cfg.eval), seed=cfg.seed,
        model_config={"model": m, "text": to_plain(cfg.text)}, encoder_lr=settings.lr if settings.trains else None,
        progress=progress)
    datamodule = SequenceDataModule(split, max_len=m["max_len"], seed=cfg.seed, **m["datamodule"])
    datamodule.text = text
    datamodule.text_encoder, datamodule.tokenizer = (product.encoder, product.tokenizer) if product else (None, None)
    return module, datamodule, datamodule.tokenizer


def fit_towers(cfg: DictConfig, split: Split, loggers: list, run_dir: Path):
    """Build the towers (text two-tower or sequence), data and trainer from config; fit; validate and test the best
    checkpoint."""
    if cfg.model.kind == "sequence":
        module, datamodule, tokenizer = sequence_from_config(cfg, split)
    else:
        model, tokenizer, text, model_config = two_tower_from_config(cfg, split)
        datamodule = RetrievalDataModule(split, tokenizer, text, uniform_negatives=cfg.loss.uniform_negatives,
                                         seed=cfg.seed, cache_dir=cfg.paths.cache_dir, **cfg.model.datamodule)
        module = build_module(cfg, model, split.item_counts(), model_config)
    callbacks = instantiate_callbacks(cfg.get("callbacks"), has_logger=bool(loggers))
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
    if trainer.is_global_zero and tokenizer is not None:
        tokenizer.save_pretrained(run_dir / "tokenizer")
    metrics = {**module.run_metrics(), "train/seconds": train_seconds, "train/epochs": float(trainer.current_epoch)}
    return metrics, {"trainer": trainer, "module": module, "datamodule": datamodule, "best_ckpt": ckpt}


def train(cfg: DictConfig) -> tuple[dict[str, float], dict]:
    stage = cfg.get("stage", "train")
    if stage not in STAGES:
        raise ValueError(f"stage={stage!r} is not a stage; choose one of {', '.join(STAGES)}")
    L.seed_everything(cfg.seed, workers=True)
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if stage == "export":
        return export_only(cfg)
    if stage == "rerank":  # LoRA fine-tune + evaluate the LM reranker (artifact=PATH)
        return run_rerank(cfg)
    if cfg.model.kind in ("two_tower", "sequence") and cfg.export.enabled:
        development_key(cfg)  # refuses real data without a user-id secret before hours of training, not after
        check_backend(cfg)  # index.backend=milvus: the collection's server is reachable, likewise
    split = load_split(to_plain(cfg.data))
    loggers = instantiate_loggers(cfg.get("logger"))
    start = time.perf_counter()
    if cfg.model.kind in BASELINES:
        scorer = build_baseline(to_plain(cfg.model), split, TextConfig.from_dict(to_plain(cfg.get("text"))))
        metrics = evaluation.evaluate_split(scorer, split, evaluation.EvalConfig.from_any(cfg.eval))
        objects = {"scorer": scorer}
        for lg in loggers:
            lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
            lg.log_metrics(metrics)
    else:
        metrics, objects = fit_towers(cfg, split, loggers, run_dir)
        if objects["trainer"].is_global_zero and cfg.export.enabled:  # two-tower and sequence runs alike
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
    if cfg.get("plots", True):  # PNGs in RUN_DIR/figures; after finalize: the CSV log is complete
        save_figures_after_training(cfg, run_dir, split, objects)
    print(f"\n{split.name} / {cfg.model.kind}  ({run_dir})\n" + evaluation.format_table(metrics))
    return metrics, objects
