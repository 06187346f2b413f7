"""`stage=export` and the export at the end of training: config -> `towerrec.artifact.export_artifact`."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from omegaconf import DictConfig

from towerrec import evaluation
from towerrec.artifact import Artifact, export_artifact, set_metrics
from towerrec.artifact.export import export_sequence_artifact
from towerrec.artifact.milvus import connect, load_into_milvus
from towerrec.data import privacy
from towerrec.data.load import load_split
from towerrec.data.schema import DataError
from towerrec.data.splits import Split
from towerrec.data.text import TextConfig, render_items
from towerrec.index import IndexConfig
from towerrec.model.build import build_sequence, build_two_tower
from towerrec.model.text_encoder import TextEncoderSettings, load_product_text, same_vectors
from towerrec.model.text_vectors import compute_text_vectors
from towerrec.retrieval import evaluate_artifact
from towerrec.utils.hydra import config_dict
from towerrec.utils.io import to_plain

log = logging.getLogger(__name__)


def _out_dir(cfg: DictConfig, out_dir) -> Path:
    return Path(out_dir or to_plain(cfg.get("export")).get("dir") or Path(cfg.paths.output_dir) / "artifact")


def development_key(cfg: DictConfig) -> bool:
    """Whether the run's user pseudonyms come from the development key (recorded in the artifact manifest).

    Refuses (DataError) unless this is a development run: synthetic data (its users are fake), `+development=true`
    or `export.allow_development_key=true`. Reads the config alone, so a run can call it before training."""
    data = to_plain(cfg.data)
    if not privacy.uses_development_key(data.get("user_id_secret")):
        return False
    if (data.get("kind") == "synthetic" or cfg.get("development")
            or to_plain(cfg.get("export")).get("allow_development_key")):
        return True
    env = privacy.ENV_VAR
    raise DataError(f"neither data.user_id_secret nor ${env} is set, so the exported pseudonyms of the users of the "
                    f"{data.get('kind')!r} data would come from the development key that anyone can recompute; set "
                    f"data.user_id_secret or ${env}, or pass +development=true / export.allow_development_key=true "
                    "for a development run")


def export_run(cfg: DictConfig, objects: Mapping, metrics: Mapping | None,
               out_dir: str | os.PathLike | None = None) -> Path | None:
    """Export at the end of `towerrec.tasks.train.fit_towers` (call on global rank zero only).

    `objects`: its dict (module.model holds the best checkpoint's weights after trainer.test; for a sequence
    run the datamodule holds the text config and the frozen text encoder + tokenizer, see
    `towerrec.tasks.train.sequence_from_config`). Reads cfg.export (enabled, dir, batch_size, progress) and
    cfg.index; both may be absent (defaults: export to <run>/artifact, flat index). Returns the artifact path,
    or None when cfg.export.enabled is false.
    """
    dm = objects["datamodule"]
    exp = to_plain(cfg.get("export"))
    if not exp.get("enabled", True):
        return None
    dev = development_key(cfg)
    if cfg.model.kind == "sequence":
        te = to_plain(cfg.model).get("text_encoder") or {}
        path = export_sequence_artifact(
            _out_dir(cfg, out_dir), objects["module"].model, dm.split, dm.text, encoder=dm.text_encoder,
            tokenizer=dm.tokenizer, pooling=te.get("pooling", "mean"), text_max_length=te.get("max_length", 64),
            index_cfg=cfg.get("index"), train_cfg=config_dict(cfg), metrics=metrics or {}, development_key=dev)
    else:
        path = export_artifact(
            _out_dir(cfg, out_dir), objects["module"].model, dm.tokenizer, dm.split, dm.text,
            item_max_length=dm.item_max_length, user_max_length=dm.user_max_length,
            index_cfg=cfg.get("index"), train_cfg=config_dict(cfg), metrics=metrics or {},
            batch_size=int(exp.get("batch_size") or dm.eval_batch_size), progress=bool(exp.get("progress", True)),
            development_key=dev,
        )
    load_into_backend(cfg, path)
    return path


def check_backend(cfg: DictConfig) -> None:
    """index.backend=milvus: connect to index.milvus now (settings checked, packages present, server reached), so a
    run that will load its artifact there fails before training rather than after."""
    index = IndexConfig.from_any(cfg.get("index"))
    if index.backend == "milvus":
        connect(index.milvus).close()


def load_into_backend(cfg: DictConfig, path: Path) -> dict | None:
    """index.backend=milvus: load the finished artifact into the collection of index.milvus (what the Retriever
    and serve.py search with that setting); returns the load's summary, None for the FAISS backend."""
    index = IndexConfig.from_any(cfg.get("index"))
    if index.backend != "milvus":
        return None
    summary = load_into_milvus(Artifact.load(path), index.milvus,
                               progress=bool(to_plain(cfg.get("export")).get("progress", True)))
    log.info("index.backend=milvus: %d products in %s collection %s", summary["items"], summary["uri"],
             summary["collection"])
    return summary


def export_checkpoint(cfg: DictConfig, ckpt_path: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                      evaluate: bool = True) -> Path:
    """`stage=export ckpt_path=...`: rebuild the towers from the values stored in the checkpoint (the run's
    `model` and `text` config; `cfg`'s for checkpoints written before they were stored), load its weights
    (torch.load with weights_only=True), export, and (if `evaluate`) record the artifact's own valid/test
    metrics, computed through the exported files."""
    dev = development_key(cfg)
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    stored = (checkpoint.get("hyper_parameters") or {}).get("model_config") or {}
    model_cfg = stored.get("model") or to_plain(cfg.model)
    text = TextConfig.from_dict(stored.get("text") or to_plain(cfg.text))
    if stored and stored.get("model") != to_plain(cfg.model):
        log.info("stage=export: the towers are rebuilt as the checkpoint's run configured them, not from cfg.model")
    split = load_split(to_plain(cfg.data))
    weights = {k[len("model."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    exp = to_plain(cfg.get("export"))
    dmc = model_cfg["datamodule"]
    train_cfg = {**config_dict(cfg), "ckpt_path": str(ckpt_path)}
    if model_cfg.get("kind") == "sequence":
        seed = (checkpoint.get("hyper_parameters") or {}).get("seed", cfg.get("seed", 0))
        model, encoder, tokenizer = _sequence_from_checkpoint(model_cfg, text, split, weights, seed)
        te = model_cfg["text_encoder"]
        path = export_sequence_artifact(_out_dir(cfg, out_dir), model, split, text, encoder=encoder,
                                        tokenizer=tokenizer, pooling=te["pooling"], text_max_length=te["max_length"],
                                        index_cfg=cfg.get("index"), train_cfg=train_cfg, metrics={},
                                        development_key=dev)
    else:
        model, tokenizer = build_two_tower(model_cfg, render_items(split.catalog, text), split.item_counts())
        model.load_state_dict(weights, strict=True)
        path = export_artifact(_out_dir(cfg, out_dir), model, tokenizer, split, text,
                               item_max_length=dmc["item_max_length"], user_max_length=dmc["user_max_length"],
                               index_cfg=cfg.get("index"), train_cfg=train_cfg,
                               metrics={}, batch_size=int(exp.get("batch_size") or dmc["eval_batch_size"]),
                               progress=bool(exp.get("progress", True)), development_key=dev)
    if evaluate:
        metrics = evaluate_artifact(Artifact.load(path), split, cfg.eval, stages=("valid", "test"),
                                    batch_size=int(dmc["eval_batch_size"]))
        set_metrics(path, metrics)
    load_into_backend(cfg, path)  # after set_metrics: the collection is tagged with the final manifest's version
    return path


PROBE_ITEMS = 16  # products whose text vectors are recomputed to check the rebuilt text encoder


def _sequence_from_checkpoint(model_cfg: dict, text: TextConfig, split: Split, weights: dict, seed: int):
    """(SequenceRecommender with the checkpoint's weights, text encoder, tokenizer) of a sequence checkpoint.

    The text vectors are the checkpoint's own (the product tower's buffer); the encoder and tokenizer are rebuilt
    as training built them (`load_product_text` without inputs: the same config, catalog texts and seed; a
    trained text encoder's layers come with the checkpoint's weights) and checked against those vectors on a few
    products, so the exported text path is the one that computed them."""
    encoder = tokenizer = vectors = trainable = None
    settings = TextEncoderSettings.from_dict(model_cfg.get("text_encoder"))
    texts = render_items(split.catalog, text)
    if model_cfg.get("text", True):
        if "items.text" not in weights:
            raise ValueError("the checkpoint's product tower holds no text vectors, but its model config has text")
        vectors = weights["items.text"].float().numpy()  # (N, H)
        if len(texts) != len(vectors):
            raise ValueError(f"the checkpoint's product tower holds {len(vectors)} products but the data has "
                             f"{len(texts)}: export it with the data it was trained on")
        product = load_product_text(model_cfg["encoder"], texts, settings, seed=seed, progress=False,
                                    with_inputs=False)
        encoder, tokenizer, trainable = product.encoder, product.tokenizer, product.trainable
    model = build_sequence(model_cfg, vectors, split.num_items, split.item_counts(), text_module=trainable)
    model.load_state_dict(weights, strict=True)
    if vectors is not None:
        exported = encoder if trainable is None else trainable.export_encoder(encoder)
        probe = compute_text_vectors(exported, tokenizer, texts[:PROBE_ITEMS], settings.max_length, settings.pooling,
                                     progress=False)
        if not same_vectors(probe, vectors[:PROBE_ITEMS], settings):
            raise ValueError("the text encoder rebuilt from the checkpoint's model config (model.encoder, text "
                             "template, seed) does not reproduce the checkpoint's text vectors; export with the "
                             "data and encoder the run was trained with")
    return model.eval(), encoder, tokenizer


def export_only(cfg: DictConfig) -> tuple[dict[str, float], dict]:
    """`python train.py stage=export ckpt_path=...`: export a trained checkpoint without training."""
    if not cfg.get("ckpt_path"):
        raise ValueError("stage=export needs ckpt_path=PATH/TO/CHECKPOINT.ckpt")
    path = export_checkpoint(cfg, cfg.ckpt_path)
    metrics = dict(Artifact.load(path).manifest.get("metrics", {}))
    print(f"exported {cfg.ckpt_path} to {path}\n" + evaluation.format_table(metrics))
    return metrics, {"artifact": path}
