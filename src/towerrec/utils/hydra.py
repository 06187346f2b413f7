"""Hydra glue for the task layer: loggers and callbacks from config, the optimised metric, wandb artifacts."""

from __future__ import annotations

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf


def instantiate_loggers(logger_cfg: DictConfig | None) -> list:
    """Lightning loggers of the `logger` group (wandb offline unless `offline: false`)."""
    loggers = []
    for node in (logger_cfg or {}).values():
        if isinstance(node, DictConfig) and "_target_" in node:
            if "Wandb" in node._target_ and node.get("offline", True):
                os.environ.setdefault("WANDB_MODE", "offline")
            loggers.append(hydra.utils.instantiate(node))
    return loggers


def instantiate_callbacks(callbacks_cfg: DictConfig | None, has_logger: bool = True) -> list:
    callbacks = []
    for node in (callbacks_cfg or {}).values():
        if not (isinstance(node, DictConfig) and "_target_" in node):
            continue
        if not has_logger and node._target_.endswith("LearningRateMonitor"):
            continue  # it needs a logger to write to
        callbacks.append(hydra.utils.instantiate(node))
    return callbacks


def config_dict(cfg) -> dict:
    """The whole config as a plain dict, resolved where it can be (${hydra:...} fails outside a Hydra run)."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:
        return OmegaConf.to_container(cfg, resolve=False)


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
