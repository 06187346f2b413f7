"""Export a trained TwoTower as a self-contained serving artifact (see `towerrec.artifact.format`)."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
from safetensors.numpy import save_file as save_numpy

from towerrec.artifact.format import (
    EMBEDDINGS_FILE,
    INDEX_FILE,
    ITEMS_FILE,
    POPULARITY_FILE,
    SCHEMA_VERSION,
    TEXT_FILE,
    TOWER_DIRS,
    USERS_FILE,
    shard_file,
)
from towerrec.artifact.items import item_frame
from towerrec.artifact.store import write_artifact
from towerrec.artifact.towers import save_tower
from towerrec.data.splits import Split
from towerrec.data.text import TextConfig, render_items
from towerrec.index import IndexConfig, build_parts
from towerrec.model.encode import encode_texts, normalize_rows
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
    icfg = IndexConfig.from_any(index_cfg)
    catalog = split.catalog
    item_texts = render_items(catalog, text)
    history_texts = render_items(catalog, text, text.history_fields)
    n = len(item_texts)
    ids = np.arange(n, dtype=np.int64)
    emb = encode_texts(model.item_tower, tokenizer, item_texts, item_max_length, batch_size, item_idx=ids,
                       progress=progress, desc="export: encode catalog")  # (N, D)
    emb = normalize_rows(emb)
    items = item_frame(catalog.items, ids, item_texts, history_texts)
    parts, info = build_parts(emb, ids, icfg)
    train_cfg = redact(jsonable(dict(train_cfg or {})))
    if encoder_name is None:
        enc = (train_cfg.get("model") or {}).get("encoder") or {}
        encoder_name = enc.get("name_or_path") or ("random_init" if enc.get("random_init") else None)
        encoder_name = encoder_name or getattr(model.user_tower.encoder.config, "_name_or_path", "") or "unknown"
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "created_at": now(),
        "encoder": {"name_or_path": encoder_name, "class": type(model.user_tower.encoder).__name__,
                    "shared": bool(model.shared_encoder)},
        "dim": int(emb.shape[1]),
        "metric": "ip",
        "normalized": True,
        "index": info,
        "num_items": n,
        "next_row_id": n,
        "max_length": {"item": int(item_max_length), "user": int(user_max_length)},
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
        save_tower(model.user_tower, tokenizer, tmp / TOWER_DIRS["user"], user_max_length)
        save_tower(model.item_tower, tokenizer, tmp / TOWER_DIRS["item"], item_max_length)
        return manifest

    path = write_artifact(out_dir, write)
    log.info("exported %d items (dim %d, %s) to %s", n, emb.shape[1], info["factory"], path)
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

