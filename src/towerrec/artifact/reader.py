"""Artifact: read and check an exported directory (manifest, checksums, index, tables, shapes); towers on use."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
from safetensors.numpy import load_file as load_numpy

from towerrec.artifact.format import (
    EMBEDDINGS_FILE,
    ITEM_COLUMNS,
    ITEMS_FILE,
    MANIFEST,
    POPULARITY_FILE,
    TEXT_FILE,
    TOWER_DIRS,
    USERS_FILE,
    ArtifactError,
    index_files,
    read_json,
    read_manifest,
)
from towerrec.artifact.items import ItemTable
from towerrec.artifact.store import aside_path
from towerrec.artifact.towers import Tower, load_tower
from towerrec.data.text import TextConfig
from towerrec.index import apply_search_params, assemble_shards
from towerrec.utils.io import sha256_file

log = logging.getLogger(__name__)


class Artifact:
    """A loaded (and, by default, verified) export. Towers are rebuilt on first use."""

    def __init__(self, path: Path, manifest: dict, parts: list[faiss.Index], items: pd.DataFrame,
                 embeddings: np.ndarray, popularity: np.ndarray, text: TextConfig):
        self.path, self.manifest, self.parts = path, manifest, parts
        self.index = parts[0] if len(parts) == 1 else assemble_shards(parts)
        self.items, self.embeddings, self.popularity, self.text = items, embeddings, popularity, text
        self.table = ItemTable(items)
        self.row_ids = self.table.row_ids  # (N,) position -> row id
        self.position_of_item = self.table.item_ids  # item_id -> position (pd.Index.get_indexer)
        self._towers: dict[str, Tower] = {}
        self._users: dict[str, list[str]] | None = None

    @property
    def has_users(self) -> bool:
        return USERS_FILE in self.manifest["files"]

    @property
    def users(self) -> dict[str, list[str]]:
        """Known (pseudonymized) user id -> item ids, oldest first; read from users.parquet on first use.

        Artifacts exported before users.parquet existed know no users (empty)."""
        if self._users is None:
            self._users = {}
            if self.has_users:
                table = pd.read_parquet(self.path / USERS_FILE)
                self._users = {str(u): [str(i) for i in items] for u, items in zip(table["user_id"], table["items"])}
        return self._users

    def user_history(self, user_id: str) -> list[str] | None:
        """Item ids a known user interacted with, oldest first; None for an unknown user."""
        return self.users.get(str(user_id))

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def num_items(self) -> int:
        return len(self.items)

    def positions_of_rows(self, row_ids: Sequence[int]) -> np.ndarray:
        """Table positions of row ids (-1 for unknown ids)."""
        return self.table.positions_of_rows(row_ids)

    def tower(self, which: str) -> Tower:
        if which not in TOWER_DIRS:
            raise ValueError(f"tower must be 'user' or 'item', got {which!r}")
        if which not in self._towers:
            self._towers[which] = load_tower(self.path / TOWER_DIRS[which])
        return self._towers[which]

    @property
    def user_tower(self) -> Tower:
        return self.tower("user")

    @property
    def item_tower(self) -> Tower:
        return self.tower("item")

    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool = True) -> "Artifact":
        """Read an artifact; `verify` also checks every file's sha256 against the manifest.

        Structure is always checked: schema version, files present, index dim / count / metric, table and
        embedding shapes. If `path` is missing but an interrupted write left the previous version aside,
        that version is loaded.
        """
        path = Path(path)
        if not path.exists() and aside_path(path).exists():
            log.warning("%s is missing but an interrupted write left the previous version at %s; loading it",
                        path, aside_path(path))
            path = aside_path(path)
        manifest = read_manifest(path)
        for rel, entry in manifest["files"].items():
            f = path / rel
            if not f.is_file():
                raise ArtifactError(f"{f}: missing (listed in {path / MANIFEST}); the artifact is incomplete")
            if verify and sha256_file(f) != entry["sha256"]:
                raise ArtifactError(f"{f}: checksum mismatch (expected sha256 {entry['sha256'][:12]}..., "
                                    "see manifest.json): the file was modified or corrupted")
        dim, n = int(manifest["dim"]), int(manifest["num_items"])
        names = index_files(manifest)
        parts = []
        for name in names:
            if name not in manifest["files"]:
                raise ArtifactError(f"{path / MANIFEST}: the index file {name} is not listed")
            part = faiss.read_index(str(path / name))
            if part.d != dim:
                raise ArtifactError(f"{path / name}: index dimension {part.d} != manifest dim {dim}")
            if part.metric_type != faiss.METRIC_INNER_PRODUCT:
                raise ArtifactError(f"{path / name}: index metric is not inner product")
            try:
                apply_search_params(part, manifest["index"].get("search") or {})
            except ValueError as e:
                raise ArtifactError(f"{path / name}: {e}") from e
            parts.append(part)
        ntotal = sum(p.ntotal for p in parts)
        if ntotal != n:
            raise ArtifactError(f"{path / names[0]}: the index holds {ntotal} vectors but manifest num_items is {n}")
        items = pd.read_parquet(path / ITEMS_FILE)
        missing = [c for c in ITEM_COLUMNS if c not in items.columns]
        if missing:
            raise ArtifactError(f"{path / ITEMS_FILE}: missing column(s) {missing}")
        if len(items) != n:
            raise ArtifactError(f"{path / ITEMS_FILE}: {len(items)} rows but manifest num_items is {n}")
        tensors = load_numpy(str(path / EMBEDDINGS_FILE))
        emb = tensors.get("embeddings")
        if emb is None or emb.shape != (n, dim) or emb.dtype != np.float32:
            shape = None if emb is None else (emb.shape, str(emb.dtype))
            raise ArtifactError(f"{path / EMBEDDINGS_FILE}: embeddings {shape} != expected ({n}, {dim}) float32")
        if not np.array_equal(tensors.get("row_id"), items["row_id"].to_numpy(dtype=np.int64)):
            raise ArtifactError(f"{path / EMBEDDINGS_FILE}: row ids are not those of {ITEMS_FILE}")
        popularity = load_numpy(str(path / POPULARITY_FILE)).get("counts")
        if popularity is None or popularity.shape != (n,):
            raise ArtifactError(f"{path / POPULARITY_FILE}: counts must have shape ({n},)")
        text = TextConfig.from_dict(read_json(path / TEXT_FILE))
        return cls(path, manifest, parts, items, emb, popularity, text)

