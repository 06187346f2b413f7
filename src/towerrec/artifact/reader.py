"""Artifact: read and check an exported directory (manifest, checksums, index, tables, shapes); towers on use."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from safetensors.numpy import load_file as load_numpy

from towerrec.artifact.format import (
    EMBEDDINGS_FILE,
    ITEM_COLUMNS,
    ITEMS_FILE,
    MANIFEST,
    POPULARITY_FILE,
    RERANK_DIR,
    SEQUENCE,
    SEQUENCE_ITEMS,
    SEQUENCE_USER,
    TEXT_FILE,
    TOWER_CONFIG,
    TOWER_DIRS,
    TOWER_META,
    TOWER_WEIGHTS,
    USER_COLUMNS,
    USERS_FILE,
    ArtifactError,
    has_text_path,
    index_files,
    model_kind,
    read_json,
    read_manifest,
    reading,
)
from towerrec.artifact.items import ItemTable
from towerrec.artifact.store import aside_path
from towerrec.artifact.towers import (
    SequenceItemTower,
    SequenceTower,
    Tower,
    check_tower_files,
    load_tower,
    tower_kind,
)
from towerrec.data.privacy import ENV_VAR as SECRET_ENV
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
        self._towers: dict[str, Tower | SequenceTower | SequenceItemTower] = {}
        self._users: dict[str, list[str]] | None = None

    @property
    def has_users(self) -> bool:
        return USERS_FILE in self.manifest["files"]

    @property
    def users(self) -> dict[str, list[str]]:
        """Known (pseudonymized) user id -> item ids, oldest first; read from users.parquet on first use.

        Artifacts exported before users.parquet existed know no users (empty)."""
        if self._users is None:
            users = {}
            if self.has_users:
                f = self.path / USERS_FILE
                with reading(f, "not a users table (user_id, items: lists of item ids)"):
                    table = pd.read_parquet(f, columns=list(USER_COLUMNS))
                    users = {str(u): [str(i) for i in items] for u, items in zip(table["user_id"], table["items"])}
            self._users = users
        return self._users

    @functools.cached_property
    def digest(self) -> str:
        """sha256 of manifest.json, which lists every file's sha256: the identity of the artifact's content. Read
        when the artifact is loaded, so a later version written to the same directory does not change it."""
        return _manifest_digest(self.path)

    @property
    def num_users(self) -> int:
        """How many known users users.parquet holds (its metadata; nothing else is read)."""
        if not self.has_users:
            return 0
        f = self.path / USERS_FILE
        with reading(f, "not a readable parquet table"):
            return int(pq.ParquetFile(f).metadata.num_rows)

    def iter_users(self, batch_size: int = 1024) -> Iterator[tuple[str, list[str]]]:
        """(user id, item ids oldest first) of every known user in file order, read `batch_size` rows at a
        time, so memory does not grow with the number of users (unlike `users`)."""
        if not self.has_users:
            return
        f = self.path / USERS_FILE
        with reading(f, "not a users table (user_id, items: lists of item ids)"):
            batches = pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=list(USER_COLUMNS))
            for batch in batches:
                for user, items in zip(batch.column("user_id").to_pylist(), batch.column("items").to_pylist()):
                    yield str(user), [str(i) for i in items]

    def user_history(self, user_id: str) -> list[str] | None:
        """Item ids a known user interacted with, oldest first; None for an unknown user."""
        return self.users.get(str(user_id))

    @functools.cached_property
    def version(self) -> str:
        """The first 16 hex digits of the manifest's sha256: it changes with every export, add and remove (the
        manifest lists every file's checksum), so it names one exact content of the artifact."""
        return self.digest[:16]

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def kind(self) -> str:
        """The model's kind (manifest model.kind): `two_tower` (text towers) or `sequence`."""
        return model_kind(self.manifest)

    @property
    def has_text_path(self) -> bool:
        """Whether products and free text can be embedded from text (false: an id-only sequence model)."""
        return has_text_path(self.manifest)

    def refuse_development_key(self, allow: str) -> None:
        """ArtifactError, one sentence, when the users' pseudonyms came from the development key (manifest
        data.development_key), which anyone can recompute; `allow` says how the caller accepts such an artifact
        for a development run (e.g. "pass development=true to serve it")."""
        data = self.manifest.get("data")
        if isinstance(data, dict) and data.get("development_key") is True:
            raise ArtifactError(f"{self.path / MANIFEST}: its user pseudonyms come from the development key "
                                "(data.development_key), which anyone can recompute; export it again with "
                                f"data.user_id_secret or ${SECRET_ENV} set, or {allow} for a development run")

    def require_text_path(self, what: str) -> None:
        """ArtifactError, one sentence, when this artifact cannot embed text to do `what`."""
        if not self.has_text_path:
            raise ArtifactError(f"{self.path}: this artifact's model is id-only (model.text=false), so it has no "
                                f"text path and cannot {what}; export a sequence model with text "
                                "(model=sequence or model=sequence_ids) for that")

    @property
    def num_items(self) -> int:
        return len(self.items)

    def positions_of_rows(self, row_ids: Sequence[int]) -> np.ndarray:
        """Table positions of row ids (-1 for unknown ids)."""
        return self.table.positions_of_rows(row_ids)

    def tower(self, which: str) -> Tower | SequenceTower | SequenceItemTower:
        if which not in TOWER_DIRS:
            raise ValueError(f"tower must be 'user' or 'item', got {which!r}")
        if which not in self._towers:
            directory = self.path / TOWER_DIRS[which]
            tower = load_tower(directory)
            if tower.dim != self.dim:
                described = directory / (TOWER_CONFIG if isinstance(tower, Tower) else TOWER_META)
                raise ArtifactError(f"{described}: the tower computes {tower.dim}-dim vectors but "
                                    f"manifest dim is {self.dim}")
            self._towers[which] = tower
        return self._towers[which]

    @property
    def user_tower(self) -> Tower | SequenceTower:
        """The text user tower (two_tower) or the sequence user tower (sequence)."""
        return self.tower("user")

    @property
    def item_tower(self) -> Tower | SequenceItemTower:
        """The text product tower (two_tower) or the product text path of a sequence model."""
        return self.tower("item")

    def _probe(self, which: str) -> np.ndarray | None:
        """The tower `which` run once on a probe: a text (text towers), the first product as a history (the
        sequence user tower); None for an id-only product tower (nothing to run: its vectors are stored)."""
        probe = str(self.items["text"].iloc[0]) if self.num_items else "probe"
        tower = self.tower(which)
        if isinstance(tower, SequenceTower):
            history = [np.zeros(min(1, self.num_items), dtype=np.int64)]
            return tower.embed_histories(history, self.embeddings)
        if isinstance(tower, SequenceItemTower) and not tower.has_text:
            return None
        return tower.encode([probe])

    def check(self) -> dict:
        """Load what serving loads beyond `load`: both towers rebuilt, each run on a probe (a text; a one-item
        history for a sequence user tower), and the users table. Returns {"towers": {which: dim}, "users":
        count}; raises ArtifactError naming the file."""
        towers = {}
        for which, rel in TOWER_DIRS.items():
            with reading(self.path / rel, "cannot encode a probe"):
                vec = self._probe(which)
            if vec is None:
                towers[which] = self.dim
                continue
            if vec.shape != (1, self.dim) or not np.isfinite(vec).all():
                raise ArtifactError(f"{self.path / rel}: a probe encodes to {vec.shape} vectors with "
                                    f"non-finite values or not (1, {self.dim})")
            towers[which] = int(vec.shape[1])
        return {"towers": towers, "users": len(self.users)}

    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool = True, mmap: bool = False) -> Artifact:
        """Read an artifact; `verify` also checks every file's sha256 against the manifest. `mmap`: map the
        FAISS index's vectors from the file (read-only, shared by every process that serves the same file)
        instead of copying them into memory; such an index cannot be added to.

        Always checked: the manifest's fields, that every file present is listed (rerank/ aside) and every
        listed one present with its size, index dim / count / metric, tables and shapes, the towers' tower.json,
        config.json and weights header. If `path` is missing but an interrupted write left the previous
        version aside, that version is loaded. Any failure is an ArtifactError naming the file.
        """
        path = Path(path)
        with reading(path, "cannot be read"):
            if not path.exists() and aside_path(path).exists():
                log.warning("%s is missing but an interrupted write left the previous version at %s; loading it",
                            path, aside_path(path))
                path = aside_path(path)
        manifest = read_manifest(path)
        digest = _manifest_digest(path)
        _check_listing(path, manifest, verify)
        dim, n = manifest["dim"], manifest["num_items"]
        names = index_files(manifest)
        parts = [_read_part(path / name, manifest, mmap) for name in names]
        ntotal = sum(p.ntotal for p in parts)
        if ntotal != n:
            raise ArtifactError(f"{path / names[0]}: the index holds {ntotal} vectors but manifest num_items is {n}")
        items = _read_items(path / ITEMS_FILE, n)
        emb = _read_tensor(path / EMBEDDINGS_FILE, "embeddings")
        if emb is None or emb.shape != (n, dim) or emb.dtype != np.float32:
            shape = None if emb is None else (emb.shape, str(emb.dtype))
            raise ArtifactError(f"{path / EMBEDDINGS_FILE}: embeddings {shape} != expected ({n}, {dim}) float32")
        if not np.array_equal(_read_tensor(path / EMBEDDINGS_FILE, "row_id"), items["row_id"].to_numpy(np.int64)):
            raise ArtifactError(f"{path / EMBEDDINGS_FILE}: row ids are not those of {ITEMS_FILE}")
        popularity = _read_tensor(path / POPULARITY_FILE, "counts")
        if popularity is None or popularity.shape != (n,) or not np.issubdtype(popularity.dtype, np.number):
            raise ArtifactError(f"{path / POPULARITY_FILE}: counts must be numbers of shape ({n},)")
        with reading(path / TEXT_FILE, "not a text configuration"):
            text = TextConfig.from_dict(read_json(path / TEXT_FILE))
        expected = _tower_kinds(manifest)
        for which, rel in TOWER_DIRS.items():
            meta = check_tower_files(path / rel)
            if tower_kind(meta) != expected[which]:
                raise ArtifactError(f"{path / rel / TOWER_META}: a {_kind_name(tower_kind(meta))} in an artifact "
                                    f"whose manifest model.kind is {model_kind(manifest)!r} (it needs a "
                                    f"{_kind_name(expected[which])})")
            if meta["dim"] != dim:
                raise ArtifactError(f"{path / rel / TOWER_META}: dim {meta['dim']} != manifest dim {dim}")
            if tower_kind(meta) == SEQUENCE_ITEMS and meta["text"] != has_text_path(manifest):
                raise ArtifactError(f"{path / rel / TOWER_META}: text {meta['text']} != manifest model.text "
                                    f"{has_text_path(manifest)}")
        if USERS_FILE in manifest["files"]:
            with reading(path / USERS_FILE, "not a readable parquet table"):
                columns = pq.read_schema(path / USERS_FILE).names
            if not set(USER_COLUMNS) <= set(columns):
                raise ArtifactError(f"{path / USERS_FILE}: columns {columns} lack {list(USER_COLUMNS)}")
        art = cls(path, manifest, parts, items, emb, popularity, text)
        art.__dict__["digest"] = digest  # the cached property: the version of the manifest read above
        return art


def _manifest_digest(path: Path) -> str:
    with reading(path / MANIFEST, "cannot be read"):
        return hashlib.sha256((path / MANIFEST).read_bytes()).hexdigest()


def _tower_kinds(manifest: dict) -> dict[str, str | None]:
    """tower.json kind expected of each tower directory (None: a text tower)."""
    if model_kind(manifest) == SEQUENCE:
        return {"user": SEQUENCE_USER, "item": SEQUENCE_ITEMS}
    return {"user": None, "item": None}


def _kind_name(kind: str | None) -> str:
    return "text tower (no tower.json kind)" if kind is None else f"tower of kind {kind!r}"


def _required_files(manifest: dict) -> list[str]:
    full = (TOWER_META, TOWER_CONFIG, TOWER_WEIGHTS)
    names = {"user": full, "item": full}
    if model_kind(manifest) == SEQUENCE:
        names = {"user": (TOWER_META, TOWER_WEIGHTS), "item": full if has_text_path(manifest) else (TOWER_META,)}
    towers = [f"{TOWER_DIRS[which]}/{name}" for which, files in names.items() for name in files]
    return [*index_files(manifest), ITEMS_FILE, EMBEDDINGS_FILE, POPULARITY_FILE, TEXT_FILE, *towers]


def _check_listing(path: Path, manifest: dict, verify: bool) -> None:
    """Every file present is listed (rerank/ aside), every required and listed file is present, with the
    listed size and (`verify`) sha256."""
    listed, m = manifest["files"], path / MANIFEST
    with reading(path, "cannot be read"):
        present = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if not p.is_dir())
    for rel in present:
        parts = Path(rel).parts
        if rel != MANIFEST and rel not in listed and not (len(parts) > 1 and parts[0] == RERANK_DIR):
            raise ArtifactError(f"{path / rel}: not listed in {MANIFEST}; every file of an artifact must be listed with "
                                "its checksum, so an unlisted file is refused (remove it, or export again)")
    for rel in _required_files(manifest):
        if rel not in listed:
            raise ArtifactError(f"{path / rel}: missing (required, and not listed in {m}); the artifact is incomplete")
    for rel, entry in listed.items():
        f = path / rel
        with reading(f, "cannot be read"):
            if not f.is_file():
                raise ArtifactError(f"{f}: missing (listed in {m}); the artifact is incomplete")
            size = f.stat().st_size
            if size != entry["bytes"]:
                raise ArtifactError(f"{f}: {size} bytes but {MANIFEST} lists {entry['bytes']}: the file was "
                                    "modified or corrupted (truncated?)")
            if verify and sha256_file(f) != entry["sha256"]:
                raise ArtifactError(f"{f}: checksum mismatch (expected sha256 {entry['sha256'][:12]}..., see "
                                    f"{MANIFEST}): the file was modified or corrupted")


def _read_part(f: Path, manifest: dict, mmap: bool = False) -> faiss.Index:
    with reading(f, "not a readable FAISS index"):
        part = faiss.read_index(str(f), faiss.IO_FLAG_MMAP_IFC if mmap else 0)
    if part.d != manifest["dim"]:
        raise ArtifactError(f"{f}: index dimension {part.d} != manifest dim {manifest['dim']}")
    if part.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise ArtifactError(f"{f}: index metric is not inner product")
    try:
        apply_search_params(part, manifest["index"].get("search") or {})
    except ValueError as e:
        raise ArtifactError(f"{f}: {e}") from e
    return part


def _read_items(f: Path, n: int) -> pd.DataFrame:
    with reading(f, "not a readable parquet table"):
        items = pd.read_parquet(f)
    missing = [c for c in ITEM_COLUMNS if c not in items.columns]
    if missing:
        raise ArtifactError(f"{f}: missing column(s) {missing}")
    if len(items) != n:
        raise ArtifactError(f"{f}: {len(items)} rows but manifest num_items is {n}")
    rows = items["row_id"]
    if not pd.api.types.is_integer_dtype(rows) or (rows < 0).any() or rows.duplicated().any():
        raise ArtifactError(f"{f}: column row_id must hold unique non-negative integers")
    if items["item_id"].astype(str).duplicated().any():
        dup = items["item_id"][items["item_id"].astype(str).duplicated()].iloc[0]
        raise ArtifactError(f"{f}: column item_id must be unique, {str(dup)[:60]!r} repeats")
    if not pd.api.types.is_numeric_dtype(items["price"]):
        raise ArtifactError(f"{f}: column price must hold numbers, got {items['price'].dtype}")
    return items


def _read_tensor(f: Path, name: str) -> np.ndarray | None:
    with reading(f, "not a readable safetensors file"):
        return load_numpy(str(f)).get(name)
