"""Export trained towers as a self-contained serving artifact (see `towerrec.artifact.format`): the text
TwoTower (`export_artifact`) or the sequence towers (`export_sequence_artifact`)."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import torch
from safetensors.numpy import save_file as save_numpy

from towerrec.artifact.format import (
    EMBEDDINGS_FILE,
    INDEX_FILE,
    ITEMS_FILE,
    POPULARITY_FILE,
    SCHEMA_VERSION,
    SEQUENCE,
    TEXT_FILE,
    TOWER_DIRS,
    TWO_TOWER,
    USERS_FILE,
    shard_file,
)
from towerrec.artifact.items import item_frame
from towerrec.artifact.store import write_artifact
from towerrec.artifact.towers import save_sequence_item_tower, save_sequence_user_tower, save_tower
from towerrec.data.splits import Split
from towerrec.data.text import TextConfig, render_items
from towerrec.index import IndexConfig, build_parts
from towerrec.model.encode import encode_texts, normalize_rows
from towerrec.model.sequence import SequenceRecommender
from towerrec.model.towers import TwoTower
from towerrec.utils.io import jsonable, now, redact, write_json

log = logging.getLogger(__name__)


def export_artifact(
    out_dir: str | os.PathLike,
    model: TwoTower,
    tokenizer,
    split: Split,
    text: TextConfig,
    *,
    item_max_length: int,
    user_max_length: int,
    index_cfg=None,
    train_cfg: Mapping | None = None,
    metrics: Mapping | None = None,
    batch_size: int = 256,
    progress: bool = True,
    encoder_name: str | None = None,
    development_key: bool | None = None,
) -> Path:
    """Encode the catalog with the product tower, index it, and write the artifact atomically to `out_dir`.

    Use the training datamodule's eval batch size as `batch_size` to get the in-training item embeddings
    bit for bit. `development_key`: whether the split's user pseudonyms came from the development key
    (`towerrec.data.privacy.uses_development_key`), recorded as manifest data.development_key (None: not
    known); serving refuses such an artifact unless told it is a development run. Returns the artifact path.
    """
    catalog = split.catalog
    item_texts = render_items(catalog, text)
    ids = np.arange(len(item_texts), dtype=np.int64)
    emb = encode_texts(model.item_tower, tokenizer, item_texts, item_max_length, batch_size, item_idx=ids,
                       progress=progress, desc="export: encode catalog")  # (N, D)
    train_cfg = redact(jsonable(dict(train_cfg or {})))
    if encoder_name is None:
        encoder_name = _encoder_name(train_cfg) or getattr(model.user_tower.encoder.config, "_name_or_path", "") \
            or "unknown"
    head = {"model": {"kind": TWO_TOWER},
            "encoder": {"name_or_path": encoder_name, "class": type(model.user_tower.encoder).__name__,
                        "shared": bool(model.shared_encoder)}}
    max_length = {"item": int(item_max_length), "user": int(user_max_length)}

    def towers(tmp: Path) -> None:
        save_tower(model.user_tower, tokenizer, tmp / TOWER_DIRS["user"], user_max_length)
        save_tower(model.item_tower, tokenizer, tmp / TOWER_DIRS["item"], item_max_length)

    return _write_export(out_dir, split, text, item_texts, emb, head, max_length, towers, index_cfg=index_cfg,
                         train_cfg=train_cfg, metrics=metrics, development_key=development_key)


def export_sequence_artifact(
    out_dir: str | os.PathLike,
    model: SequenceRecommender,
    split: Split,
    text: TextConfig,
    *,
    encoder=None,
    tokenizer=None,
    pooling: str = "mean",
    text_max_length: int = 64,
    index_cfg=None,
    train_cfg: Mapping | None = None,
    metrics: Mapping | None = None,
    encoder_name: str | None = None,
    development_key: bool | None = None,
) -> Path:
    """Export the sequence towers: the stored product vectors are `model.items.all()` (exactly what the user
    tower reads for history items in training, so serving embeds a history by lookups and the transformer),
    the user tower, and the product text path (`encoder` + `tokenizer`: the text encoder that computed the
    training text vectors, with `pooling` and `text_max_length`; not needed for an id-only model). When the
    encoder trained with the towers (`model.items.text_module`), the path holds the fine-tuned encoder: its
    trained layers put back into `encoder` (`TrainableText.export_encoder`). `development_key` as in
    `export_artifact`. Returns the artifact path."""
    catalog = split.catalog
    item_texts = render_items(catalog, text)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():  # as the in-training evaluation computes them
            emb = model.items.all().float().cpu().numpy()  # (N, D) unit norm
    finally:
        model.train(was_training)
    if len(emb) != len(item_texts):
        raise ValueError(f"the product tower holds {len(emb)} products but the split's catalog {len(item_texts)}")
    train_cfg = redact(jsonable(dict(train_cfg or {})))
    items = model.items
    with_text = items.adapter is not None
    head = {"model": {"kind": SEQUENCE, "text": with_text, "item_ids": items.ids is not None,
                      "adapter": None if not with_text else ("mlp" if items.mlp is not None else "linear"),
                      "max_len": int(model.users.max_len)}}
    max_length = None
    if with_text:
        if tokenizer is None or (encoder is None and (items.text_module is None or items.text_module.mode != "full")):
            raise ValueError("exporting sequence towers with text needs the text encoder and tokenizer that "
                             "computed the text vectors")
        trained = items.text_module
        if trained is not None:
            encoder = trained.export_encoder(encoder)
        if encoder_name is None:
            encoder_name = _encoder_name(train_cfg) or getattr(encoder.config, "_name_or_path", "") or "unknown"
        head["encoder"] = {"name_or_path": encoder_name, "class": type(encoder).__name__, "frozen": trained is None,
                           "train": "frozen" if trained is None else trained.mode}
        if trained is not None and trained.mode == "top_layers":
            head["encoder"]["top_layers"] = len(trained.layers)
        max_length = {"item": int(text_max_length)}

    def towers(tmp: Path) -> None:
        save_sequence_user_tower(model.users, tmp / TOWER_DIRS["user"])
        save_sequence_item_tower(items, encoder, tokenizer, tmp / TOWER_DIRS["item"], pooling=pooling,
                                 max_length=text_max_length)

    return _write_export(out_dir, split, text, item_texts, emb, head, max_length, towers, index_cfg=index_cfg,
                         train_cfg=train_cfg, metrics=metrics, development_key=development_key)


def _encoder_name(train_cfg: Mapping) -> str | None:
    enc = (train_cfg.get("model") or {}).get("encoder") or {}
    return enc.get("name_or_path") or ("random_init" if enc.get("random_init") else None)


def _write_export(out_dir, split: Split, text: TextConfig, item_texts: list[str], emb: np.ndarray, head: dict,
                  max_length: dict | None, towers, *, index_cfg, train_cfg: dict, metrics: Mapping | None,
                  development_key: bool | None) -> Path:
    """Index the product vectors `emb` (N, D) and write the artifact atomically to `out_dir`: tables, users,
    index, text.json, the towers (`towers(tmp)`) and the manifest (`head`: model, encoder)."""
    icfg = IndexConfig.from_any(index_cfg)
    catalog = split.catalog
    history_texts = render_items(catalog, text, text.history_fields)
    n = len(item_texts)
    ids = np.arange(n, dtype=np.int64)
    emb = normalize_rows(emb)
    items = item_frame(catalog.items, ids, item_texts, history_texts)
    parts, info = build_parts(emb, ids, icfg)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "created_at": now(),
        **head,
        "dim": int(emb.shape[1]),
        "metric": "ip",
        "normalized": True,
        "index": info,
        "num_items": n,
        "next_row_id": n,
        **({"max_length": max_length} if max_length is not None else {}),
        "data": {"name": split.name, "fingerprint": split.fingerprint, "num_items": split.num_items,
                 "development_key": development_key},
        "train_config": train_cfg,
        "metrics": jsonable(dict(metrics or {})),
        "history": [],
    }

    def write(tmp: Path) -> dict:
        write_tables(tmp, items, emb, split.item_counts().astype(np.int64))
        _write_users(tmp, split)
        write_parts(tmp, parts)
        write_json(tmp / TEXT_FILE, jsonable(dataclasses.asdict(text)))
        towers(tmp)
        return manifest

    path = write_artifact(out_dir, write)
    log.info("exported %d items (dim %d, %s, %s) to %s", n, emb.shape[1], head["model"]["kind"], info["factory"],
             path)
    return path


def write_tables(tmp: Path, items: pd.DataFrame, emb: np.ndarray, counts: np.ndarray) -> None:
    items.reset_index(drop=True).to_parquet(tmp / ITEMS_FILE, index=False)
    save_numpy({"embeddings": np.ascontiguousarray(emb, dtype=np.float32),
                "row_id": items["row_id"].to_numpy(dtype=np.int64)}, str(tmp / EMBEDDINGS_FILE))
    save_numpy({"counts": np.ascontiguousarray(counts, dtype=np.int64)}, str(tmp / POPULARITY_FILE))


def _write_users(tmp: Path, split: Split) -> None:
    """Known users' whole sequences (valid and test items included: serving knows everything that happened)."""
    item_ids = np.asarray(split.catalog.item_ids, dtype=object)
    table = pd.DataFrame({"user_id": [str(u) for u in split.users],
                          "items": [[str(i) for i in item_ids[seq]] for seq in split.sequences]})
    table.to_parquet(tmp / USERS_FILE, index=False)


def write_parts(tmp: Path, parts: list[faiss.Index]) -> None:
    if len(parts) == 1:
        faiss.write_index(parts[0], str(tmp / INDEX_FILE))
    else:
        for i, part in enumerate(parts):
            faiss.write_index(part, str(tmp / shard_file(i)))

