"""Keep an artifact up to date without retraining: add or replace products (embedded by the stored product
tower), remove products, rebuild the index with another configuration, replace the recorded metrics. Each
change is a new atomic version of the directory.

A sequence artifact embeds products by its product text path (text encoder -> adapter, no id embedding: a
product added later is unseen, and can then appear in histories like any other); an id-only one (model.text
false) has no text path and refuses to add or update products.

Row ids start as catalog row positions (0..N-1). `add_items` gives new products fresh ids (never reusing one)
and updates existing products in place under the same id; `remove_items` drops ids. Unchanged files are
hard-linked from the previous version, never modified in place.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from towerrec.artifact.export import write_parts, write_tables
from towerrec.artifact.format import (
    EMBEDDINGS_FILE,
    INDEX_FILE,
    ITEM_COLUMNS,
    ITEMS_FILE,
    POPULARITY_FILE,
    SEQUENCE,
    ArtifactError,
    index_files,
)
from towerrec.artifact.items import item_frame
from towerrec.artifact.reader import Artifact
from towerrec.artifact.store import artifact_lock, recover, write_artifact
from towerrec.data.schema import Catalog
from towerrec.data.text import render_item
from towerrec.index import IndexConfig, apply_search_params, build_parts, describe, supports_removal
from towerrec.model.encode import normalize_rows
from towerrec.utils.io import jsonable, now

log = logging.getLogger(__name__)


def _carry(src: Path, dst: Path, rel: str) -> None:
    """Hard-link (or copy) an unchanged file or directory of the previous version into the new one."""
    s, d = src / rel, dst / rel
    files = [s] if s.is_file() else sorted(p for p in s.rglob("*") if p.is_file())
    for f in files:
        target = d / f.relative_to(s) if s.is_dir() else d
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(f, target)
        except OSError:
            shutil.copy2(f, target)


def _rewrite(out_dir: Path, art: Artifact, items: pd.DataFrame, emb: np.ndarray, counts: np.ndarray,
             parts: list[faiss.Index] | None, manifest_update: dict) -> Path:
    """Write a new version of `art` to out_dir with new tables (and index parts, if given); towers etc.
    carried over (hard links: no file of a version is ever modified in place)."""
    old = art.manifest
    rewritten = {ITEMS_FILE, EMBEDDINGS_FILE, POPULARITY_FILE}
    if parts is not None:
        rewritten |= set(index_files(old))

    def write(tmp: Path) -> dict:
        write_tables(tmp, items, emb, counts)
        if parts is not None:
            write_parts(tmp, parts)
        for rel in sorted({r.split("/")[0] for r in old["files"]} - rewritten):
            _carry(art.path, tmp, rel)
        return {**old, **manifest_update}

    known = {rel: e for rel, e in old["files"].items() if rel.split("/")[0] not in rewritten}
    return write_artifact(out_dir, write, known_checksums=known)


def _index_after_change(art: Artifact, remove_ids: np.ndarray, add_vectors: np.ndarray, add_ids: np.ndarray,
                        all_vectors: np.ndarray, all_ids: np.ndarray, rebuild: bool) -> tuple[list[faiss.Index], dict]:
    """Index parts after removing and adding vectors, incrementally where the index allows it."""
    info = dict(art.manifest["index"])
    if not rebuild and len(remove_ids) and not all(supports_removal(p) for p in art.parts):
        raise ArtifactError(
            f"{art.path / INDEX_FILE}: the index ({info['factory']}, {describe(art.parts[0])}) cannot remove "
            "vectors, which replacing or removing products needs; rebuild it from the stored embeddings instead "
            "(rebuild=True, or --rebuild on the command line), or export with an IDMap2,Flat or IVF index")
    if rebuild:
        cfg = IndexConfig.from_any(info.get("config") or {"factory": info["factory"], "search": info.get("search", {})})
        cfg = dataclasses.replace(cfg, shards=min(int(info.get("shards", 1)), len(all_ids)))
        parts, new_info = build_parts(all_vectors, all_ids, cfg)
        return parts, {**info, **new_info}
    parts = [faiss.clone_index(p) for p in art.parts]  # the loaded version stays untouched until the swap
    for p in parts:
        apply_search_params(p, info.get("search") or {})
        if len(remove_ids):
            p.remove_ids(np.ascontiguousarray(remove_ids, dtype=np.int64))
    if len(add_ids):
        target = min(range(len(parts)), key=lambda i: parts[i].ntotal)  # sharded: fill the smallest shard
        parts[target].add_with_ids(np.ascontiguousarray(add_vectors, dtype=np.float32), np.ascontiguousarray(add_ids, dtype=np.int64))
    return parts, info


def add_items(artifact_dir: str | os.PathLike, items: pd.DataFrame, *, replace: bool = True, rebuild: bool = False,
              batch_size: int = 256, progress: bool = False) -> dict:
    """Embed new products with the stored product tower and add them to the artifact, without retraining.

    `items` has catalog columns (item_id, title, brand, category, description, price, extra attributes).
    Unknown item ids get fresh row ids (never reused); known ones are replaced in place under their row id
    (their text, vector and shown fields change; popularity is kept) when `replace`, else it is an error.
    Replacing needs an index that can remove vectors (IDMap2,Flat or IVF); otherwise pass `rebuild=True`.
    An id-only sequence artifact cannot embed products (ArtifactError). Returns {"added": n, "updated": n,
    "num_items": N}.
    """
    new = Catalog(pd.DataFrame(items)).items  # validated: ids unique, titles present
    out_dir = Path(artifact_dir).absolute()
    with artifact_lock(out_dir):
        recover(out_dir)
        art = Artifact.load(out_dir, verify=True)
        art.require_text_path("add or update products without retraining")
        pos = art.position_of_item.get_indexer(new["item_id"])
        known = pos >= 0
        if known.any() and art.kind == SEQUENCE and art.manifest["model"].get("item_ids"):
            log.warning("%s: %d updated product(s) are embedded from their text alone: the learned item-id part "
                        "of their trained vectors is dropped", art.path, int(known.sum()))
        if known.any() and not replace:
            ids = new.loc[known, "item_id"].tolist()
            raise ArtifactError(f"{art.path / ITEMS_FILE}: {len(ids)} product(s) already present, e.g. {ids[:5]}; "
                                "pass replace=True (drop --no-replace) to update them")
        next_id = int(art.manifest.get("next_row_id", int(art.row_ids.max()) + 1))
        row_ids = np.empty(len(new), dtype=np.int64)
        row_ids[known] = art.row_ids[pos[known]]
        row_ids[~known] = next_id + np.arange(int((~known).sum()))
        extra = [c for c in new.columns if c not in ("item_id", "title", "brand", "category", "description", "price")]
        texts = [render_item(r, art.text, None, extra) for _, r in new.iterrows()]
        history = [render_item(r, art.text, art.text.history_fields, extra) for _, r in new.iterrows()]
        vectors = normalize_rows(art.item_tower.encode(texts, batch_size, item_idx=row_ids, progress=progress))

        table = item_frame(new, row_ids, texts, history)
        items_df, emb, counts = art.items.copy(), art.embeddings.copy(), art.popularity.copy()
        for col in ITEM_COLUMNS:
            items_df.loc[items_df.index[pos[known]], col] = table.loc[known, col].to_numpy()
        emb[pos[known]] = vectors[known]
        items_df = pd.concat([items_df, table[~known]], ignore_index=True)
        items_df = items_df.astype({"row_id": np.int64, "price": float})
        emb = np.concatenate([emb, vectors[~known]])
        counts = np.concatenate([counts, np.zeros(int((~known).sum()), dtype=counts.dtype)])

        parts, info = _index_after_change(art, row_ids[known], vectors, row_ids, emb, items_df["row_id"].to_numpy(),
                                          rebuild)
        summary = {"added": int((~known).sum()), "updated": int(known.sum()), "num_items": len(items_df)}
        event = {"action": "add", "at": now(), **summary, "rebuilt": bool(rebuild)}
        _rewrite(out_dir, art, items_df, emb, counts, parts, {
            "num_items": len(items_df), "next_row_id": next_id + summary["added"], "index": info,
            "history": [*art.manifest.get("history", []), event]})
    log.info("%s: added %d, updated %d products (%d in all)", art.path, summary["added"], summary["updated"],
             summary["num_items"])
    return summary


def remove_items(artifact_dir: str | os.PathLike, item_ids: Iterable[str], *, rebuild: bool = False) -> dict:
    """Remove products by item id (their row ids are never reused). Unknown ids are an error."""
    item_ids = list(dict.fromkeys(str(i) for i in item_ids))
    if not item_ids:
        raise ValueError("no item ids to remove")
    out_dir = Path(artifact_dir).absolute()
    with artifact_lock(out_dir):
        recover(out_dir)
        art = Artifact.load(out_dir, verify=True)
        pos = art.position_of_item.get_indexer(item_ids)
        if (pos < 0).any():
            unknown = [i for i, p in zip(item_ids, pos) if p < 0]
            raise ArtifactError(f"{art.path / ITEMS_FILE}: unknown item id(s) {unknown[:5]}")
        if len(pos) >= art.num_items:
            raise ArtifactError(f"{art.path}: removing every product would leave an empty artifact")
        keep = np.ones(art.num_items, dtype=bool)
        keep[pos] = False
        items_df = art.items[keep].reset_index(drop=True)
        emb, counts = art.embeddings[keep], art.popularity[keep]
        parts, info = _index_after_change(art, art.row_ids[pos], emb[:0], np.zeros(0, np.int64), emb,
                                          items_df["row_id"].to_numpy(), rebuild)
        summary = {"removed": len(pos), "num_items": len(items_df)}
        event = {"action": "remove", "at": now(), **summary, "rebuilt": bool(rebuild)}
        _rewrite(out_dir, art, items_df, emb, counts, parts, {
            "num_items": len(items_df), "index": info, "history": [*art.manifest.get("history", []), event]})
    return summary


def reindex(artifact_dir: str | os.PathLike, index: IndexConfig | Mapping | str) -> dict:
    """Rebuild the index from the stored embeddings with another index configuration (an IndexConfig, a dict
    like conf/index/*.yaml, or a factory string such as "IDMap2,SQfp16"): a new version whose tables and towers
    are those of the previous one."""
    cfg = IndexConfig.from_any(index)
    out_dir = Path(artifact_dir).absolute()
    with artifact_lock(out_dir):
        recover(out_dir)
        art = Artifact.load(out_dir, verify=True)
        cfg = dataclasses.replace(cfg, shards=min(cfg.shards, art.num_items))
        parts, info = build_parts(art.embeddings, art.row_ids, cfg)
        event = {"action": "reindex", "at": now(), "from": art.manifest["index"]["factory"], "to": info["factory"]}
        _rewrite(out_dir, art, art.items, art.embeddings, art.popularity, parts, {
            "index": info, "history": [*art.manifest.get("history", []), event]})
    return {"factory": info["factory"], "shards": len(parts), "num_items": art.num_items}


def set_metrics(artifact_dir: str | os.PathLike, metrics: Mapping[str, float]) -> None:
    """Replace the manifest's metrics (everything else carried over)."""
    out_dir = Path(artifact_dir).absolute()
    with artifact_lock(out_dir):
        recover(out_dir)
        art = Artifact.load(out_dir, verify=True)
        _rewrite(out_dir, art, art.items, art.embeddings, art.popularity, None, {"metrics": jsonable(dict(metrics))})

