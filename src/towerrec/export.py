"""Export a trained two-tower model as a self-contained serving artifact, and keep it up to date.

An artifact is one directory; serving needs nothing else (no training checkpoint, no pickle):

    manifest.json                 schema_version, dims, index factory + search params, checksums of every
                                  other file, data fingerprint, training config (secrets redacted), metrics,
                                  and a `history` of later add/remove operations
    index.faiss                   FAISS index over the L2-normalised product vectors, inner product, whose ids
                                  are the items' row ids (`index.shard{i}.faiss` instead when sharded)
    items.parquet                 row_id, item_id, title, brand, category, price (what serving shows), text
                                  (the product-tower input) and history_text (how the item reads in a history)
    item_embeddings.safetensors   embeddings (N, D) float32 and row_id (N,), rows aligned with items.parquet
    popularity.safetensors        counts (N,) training interactions, aligned with items.parquet
    text.json                     the TextConfig, so serving renders users exactly as training did
    user_tower/, item_tower/      model.safetensors (the tower's state dict), config.json (the encoder's HF
                                  config), the tokenizer files, tower.json (pooling, projection, max_length...)

Row ids start as catalog row positions (0..N-1). `add_items` gives new products fresh ids (never reusing
one) and updates existing products in place under the same id; `remove_items` drops ids. Every write goes
into a temporary directory next to the artifact and is renamed into place (the previous version renamed
aside first and deleted last), so a crash at any point leaves a complete artifact: either the new one, or
the previous one, which `Artifact.load` and the next write pick up from its aside name.

CLI: python -m towerrec.export {verify,add,remove} ARTIFACT_DIR ...
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import torch
from safetensors.numpy import load_file as load_numpy, save_file as save_numpy
from safetensors.torch import load_file as load_torch, save_file as save_torch

from towerrec.data.datamodule import pad_batch, tokenize
from towerrec.data.schema import Catalog
from towerrec.data.splits import Split
from towerrec.data.text import TextConfig, render_item, render_items
from towerrec.towers import TextTower, TwoTower

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
ITEMS_FILE = "items.parquet"
EMBEDDINGS_FILE = "item_embeddings.safetensors"
POPULARITY_FILE = "popularity.safetensors"
TEXT_FILE = "text.json"
USERS_FILE = "users.parquet"  # pseudonymized user id -> item ids interacted with, oldest first (optional)
TOWER_DIRS = {"user": "user_tower", "item": "item_tower"}
TOWER_WEIGHTS, TOWER_META = "model.safetensors", "tower.json"
ITEM_COLUMNS = ("row_id", "item_id", "title", "brand", "category", "price", "text", "history_text")
SECRET_WORDS = ("secret", "password", "token", "api_key", "apikey", "credential")


class ArtifactError(ValueError):
    """A missing, corrupt, incompatible or unsupported artifact operation; the message names the file."""


def shard_file(i: int) -> str:
    return f"index.shard{i}.faiss"


# ------------------------------------------------------------------------------------------ index config


@dataclasses.dataclass(frozen=True)
class IndexConfig:
    """How the FAISS index is built (`conf/index/*.yaml`).

    `factory` is a faiss.index_factory string that may hold the placeholders {nlist}, {pq_m}, {pq_nbits},
    filled from the catalog size N and dimension D:
      nlist = clamp(round(nlist_factor * sqrt(N)), nlist_min, nlist_max), at most N // 39 (k-means wants
              about 39 training points per centroid), at least 1; an int `nlist` is used as given;
      pq_m  = the largest divisor of D that is <= D / 8 (`auto`), or as given (must divide D);
      pq_nbits = as given, lowered to floor(log2(N)) on small catalogs (PQ needs 2^nbits training points).
    `refine`: exact re-ranking of k * k_factor candidates with the full vectors (IndexRefineFlat, ",RFlat").
    Indexes that are not id-aware (not IDMap, not IVF) are wrapped in IndexIDMap2.
    `search`: efSearch (HNSW), nprobe (IVF), k_factor (refine); stored in the manifest, set after loading.
    """

    factory: str = "IDMap2,Flat"
    search: Mapping = dataclasses.field(default_factory=dict)
    shards: int = 1
    nlist: int | str = "auto"
    nlist_factor: float = 4.0
    nlist_min: int = 1
    nlist_max: int = 65536
    pq_m: int | str = "auto"
    pq_nbits: int = 8
    refine: bool = False
    ef_construction: int | None = None
    train_sample: int | None = None  # train on at most this many vectors (seeded sample); None: all
    seed: int = 0
    name: str = ""

    @classmethod
    def from_any(cls, cfg) -> "IndexConfig":
        """From an IndexConfig, a factory string, a mapping / DictConfig, or None (exact flat index)."""
        if isinstance(cfg, IndexConfig):
            return cfg
        if cfg is None:
            return cls()
        if isinstance(cfg, str):
            return cls(factory=cfg)
        d = _plain(cfg)
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown index option(s) {sorted(unknown)}")
        d["search"] = dict(d.get("search") or {})
        bad = set(d["search"]) - {"efSearch", "nprobe", "k_factor"}
        if bad:
            raise ValueError(f"unknown index search parameter(s) {sorted(bad)}: use efSearch, nprobe or k_factor")
        if int(d.get("shards", 1)) < 1:
            raise ValueError(f"index.shards must be >= 1, got {d['shards']}")
        if not d.get("refine", False):
            d["search"].pop("k_factor", None)  # re-ranking depth means nothing without re-ranking
        return cls(**d)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["search"] = dict(self.search)
        return d

    def nlist_for(self, n: int) -> int:
        if self.nlist != "auto":
            return max(1, min(int(self.nlist), n))
        nlist = int(round(self.nlist_factor * math.sqrt(n)))
        nlist = min(max(nlist, self.nlist_min), self.nlist_max, n // 39)
        return max(1, nlist)

    def pq_m_for(self, d: int) -> int:
        if self.pq_m == "auto":
            return max(m for m in range(1, max(1, d // 8) + 1) if d % m == 0)
        m = int(self.pq_m)
        if d % m:
            raise ValueError(f"index.pq_m={m} must divide the embedding dimension {d}")
        return m

    def resolve(self, n: int, d: int) -> str:
        """The concrete factory string for N vectors of dimension D (refine suffix included)."""
        if n < 1:
            raise ValueError("cannot build an index over 0 vectors")
        fields = {"nlist": self.nlist_for(n), "pq_m": "", "pq_nbits": ""}
        if "{pq_m}" in self.factory or "{pq_nbits}" in self.factory:
            nbits = max(1, min(int(self.pq_nbits), int(math.floor(math.log2(max(n, 2))))))
            if nbits < self.pq_nbits:
                log.warning("only %d vectors: PQ codes of %d bits instead of %d", n, nbits, self.pq_nbits)
            fields.update(pq_m=self.pq_m_for(d), pq_nbits=nbits)
        factory = self.factory.format(**fields)
        if self.refine and "RFlat" not in factory and "Refine" not in factory:
            factory += ",RFlat"
        return factory


def _plain(cfg) -> dict:
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return dict(OmegaConf.to_container(cfg, resolve=True))
    except ImportError:  # pragma: no cover
        pass
    return dict(cfg)


def _walk(index: faiss.Index) -> Iterable[faiss.Index]:
    """The index and every index it wraps (IDMap, refine, pre-transform, shards)."""
    index = faiss.downcast_index(index)
    yield index
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexPreTransform)):
        yield from _walk(index.index)
    elif isinstance(index, faiss.IndexRefine):
        yield from _walk(index.base_index)
    elif isinstance(index, faiss.IndexShards):
        for i in range(index.count()):
            yield from _walk(index.at(i))


def apply_search_params(index: faiss.Index, params: Mapping) -> None:
    """Set efSearch / nprobe / k_factor on the (possibly wrapped) index; an unusable parameter is an error."""
    for name, value in params.items():
        hit = False
        for sub in _walk(index):
            if name == "efSearch" and isinstance(sub, faiss.IndexHNSW):
                sub.hnsw.efSearch = int(value)
                hit = True
            elif name == "nprobe" and isinstance(sub, faiss.IndexIVF):
                sub.nprobe = min(int(value), sub.nlist)
                hit = True
            elif name == "k_factor" and isinstance(sub, faiss.IndexRefine):
                sub.k_factor = float(value)
                hit = True
        if not hit:
            raise ArtifactError(f"search parameter {name}={value} does not apply to index {describe(index)}")


def describe(index: faiss.Index) -> str:
    return " > ".join(type(sub).__name__ for sub in _walk(index))


def supports_removal(index: faiss.Index) -> bool:
    """remove_ids works (and keeps other ids) on IDMap/IDMap2 over a flat index and on IVF indexes."""
    top = faiss.downcast_index(index)
    if isinstance(top, faiss.IndexIDMap):
        return isinstance(faiss.downcast_index(top.index), faiss.IndexFlat)
    return isinstance(top, faiss.IndexIVF)


def build_index(vectors: np.ndarray, ids: np.ndarray, cfg=None) -> tuple[faiss.Index, dict]:
    """A trained, filled FAISS index over `vectors` (N, D) with `ids` (N,), and what was built (for the manifest)."""
    cfg = IndexConfig.from_any(cfg)
    x = _as_matrix(vectors)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if len(ids) != len(x):
        raise ValueError(f"{len(ids)} ids for {len(x)} vectors")
    n, d = x.shape
    factory = cfg.resolve(n, d)
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    top = faiss.downcast_index(index)
    if not isinstance(top, (faiss.IndexIDMap, faiss.IndexIVF)):  # not id-aware: map our ids on top
        index = faiss.IndexIDMap2(index)
        factory = "IDMap2," + factory
    if cfg.ef_construction is not None:
        hnsw = [s for s in _walk(index) if isinstance(s, faiss.IndexHNSW)]
        if not hnsw:
            raise ValueError(f"ef_construction is set but {factory!r} has no HNSW graph")
        hnsw[0].hnsw.efConstruction = int(cfg.ef_construction)
    trained_on = 0
    if not index.is_trained:
        train = x
        if cfg.train_sample is not None and n > cfg.train_sample:
            rows = np.sort(np.random.default_rng(cfg.seed).choice(n, int(cfg.train_sample), replace=False))
            train = x[rows]
        index.train(train)
        trained_on = len(train)
    index.add_with_ids(x, ids)
    apply_search_params(index, cfg.search)
    info = {"factory": factory, "search": dict(cfg.search), "trained_on": trained_on, "config": cfg.to_dict()}
    return index, info


def build_sharded_index(vectors: np.ndarray, ids: np.ndarray, num_shards: int, factory=None):
    """faiss.IndexShards over `num_shards` sub-indexes, each holding a successive range of ids.

    Returns (shards, parts, info); results carry the caller's ids (no id offsets are added), and results
    of the shards are merged by score, so a flat factory gives exactly the single flat index's answers.
    """
    cfg = IndexConfig.from_any(factory)
    x = _as_matrix(vectors)
    ids = np.asarray(ids, dtype=np.int64)
    if not 1 <= num_shards <= len(x):
        raise ValueError(f"num_shards must be between 1 and the number of vectors ({len(x)}), got {num_shards}")
    order = np.argsort(ids, kind="stable")
    parts, info = [], {}
    for chunk in np.array_split(order, num_shards):
        part, info = build_index(x[chunk], ids[chunk], cfg)
        parts.append(part)
    return assemble_shards(parts), parts, {**info, "shards": num_shards}


def assemble_shards(parts: Sequence[faiss.Index]) -> faiss.IndexShards:
    shards = faiss.IndexShards(parts[0].d, False, False)  # not threaded, ids kept as given
    for part in parts:
        shards.add_shard(part)
    shards.metric_type = faiss.METRIC_INNER_PRODUCT  # results merged highest score first
    return shards  # faiss's add_shard keeps a Python reference to each part


def _as_matrix(vectors: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"expected a non-empty (N, D) matrix of vectors, got shape {x.shape}")
    return x


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """L2-normalised float32 rows; rows already of unit norm (to 1e-5) are left bit-identical."""
    x = np.array(x, dtype=np.float32, copy=True)
    norms = np.linalg.norm(x, axis=1)
    fix = np.abs(norms - 1.0) > 1e-5
    if (norms[fix] == 0).any():
        raise ArtifactError("cannot normalise a zero embedding vector")
    x[fix] /= norms[fix, None]
    return x


# ------------------------------------------------------------------------------------------ encoding


@torch.no_grad()
def encode_texts(
    tower: TextTower,
    tokenizer,
    texts: Sequence[str],
    max_length: int,
    batch_size: int = 256,
    item_idx: np.ndarray | None = None,
    progress: bool = False,
    desc: str = "encode",
) -> np.ndarray:
    """(N, D) float32 tower embeddings of `texts`, in eval mode, in batches of similar length.

    Texts are tokenized and batched exactly as `RetrievalDataModule` does for evaluation (sorted by token
    length, dynamic padding), so the same batch size gives the in-training embeddings bit for bit.
    `item_idx` (N,) feeds the product tower's id embedding (ids beyond the training catalog: text only).
    """
    from tqdm.auto import tqdm

    if len(texts) == 0:
        return np.zeros((0, tower.dim), dtype=np.float32)
    tokens = tokenize(tokenizer, list(texts), max_length)
    pad_id = tokenizer.pad_token_id or 0
    order = np.argsort([len(t) for t in tokens], kind="stable")
    device = next(tower.parameters()).device
    out = torch.empty(len(tokens), tower.dim)
    was_training = tower.training
    tower.eval()
    try:
        for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
            rows = order[start : start + batch_size]
            batch = pad_batch([tokens[i] for i in rows], pad_id)
            idx = None
            if item_idx is not None:
                idx = torch.as_tensor(np.asarray(item_idx)[rows], dtype=torch.long, device=device)
            emb = tower(batch["input_ids"].to(device), batch["attention_mask"].to(device), idx)
            out[torch.from_numpy(rows)] = emb.float().cpu()
    finally:
        tower.train(was_training)
    return out.numpy()


# ------------------------------------------------------------------------------------------ towers


@dataclasses.dataclass
class Tower:
    """A rebuilt tower with its tokenizer and input length."""

    module: TextTower
    tokenizer: object
    max_length: int
    meta: dict

    @property
    def dim(self) -> int:
        return self.module.dim

    def encode(self, texts: Sequence[str], batch_size: int = 256, item_idx=None, progress: bool = False) -> np.ndarray:
        return encode_texts(self.module, self.tokenizer, texts, self.max_length, batch_size, item_idx, progress)

    def count_tokens(self, text: str) -> int:
        """Token count without special tokens: the budget measure of `render_user` in training."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def save_tower(tower: TextTower, tokenizer, out: Path, max_length: int) -> None:
    out.mkdir(parents=True)
    # cloned to CPU: tensors shared with the other tower (a shared encoder) or tied inside this one are
    # written as separate copies, which safetensors requires; each tower directory stands alone
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tower.state_dict().items()}
    save_torch(state, str(out / TOWER_WEIGHTS))
    tower.encoder.config.save_pretrained(out)  # config.json
    tokenizer.save_pretrained(out)
    meta = {
        "encoder_class": type(tower.encoder).__name__,
        "encoder_has_pooler": getattr(tower.encoder, "pooler", None) is not None,
        "pooling": tower.pooling,
        "projection_dim": None if tower.projection is None else int(tower.projection.out_features),
        "normalize": bool(tower.normalize),
        "dim": int(tower.dim),
        "max_length": int(max_length),
        "id_embedding": None if tower.id_embedding is None else {
            "num_items": int(len(tower.id_rows)), "num_rows": int(tower.id_embedding.num_embeddings)},
    }
    _write_json(out / TOWER_META, meta)


def load_tower(directory: Path) -> Tower:
    """Rebuild a tower from its directory: HF config -> encoder, TextTower, then the safetensors weights."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    meta = _read_json(directory / TOWER_META)
    config = AutoConfig.from_pretrained(directory, local_files_only=True)
    encoder = AutoModel.from_config(config)
    if not meta["encoder_has_pooler"] and getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None  # trained without one (random_init encoders)
    counts = None
    if meta["id_embedding"]:  # only the shapes matter here: the state dict brings id_rows and the weights
        counts = np.zeros(meta["id_embedding"]["num_items"])
        counts[: meta["id_embedding"]["num_rows"] - 1] = 1
    tower = TextTower(encoder, meta["pooling"], meta["projection_dim"], meta["normalize"], counts)
    try:
        tower.load_state_dict(load_torch(str(directory / TOWER_WEIGHTS)), strict=True)
    except (RuntimeError, KeyError) as e:
        raise ArtifactError(f"{directory / TOWER_WEIGHTS}: weights do not fit the tower described by "
                            f"tower.json: {e}") from e
    tower.eval()
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    return Tower(tower, tokenizer, int(meta["max_length"]), meta)


# ------------------------------------------------------------------------------------------ the artifact


class Artifact:
    """A loaded (and, by default, verified) export. Towers are rebuilt on first use."""

    def __init__(self, path: Path, manifest: dict, parts: list[faiss.Index], items: pd.DataFrame,
                 embeddings: np.ndarray, popularity: np.ndarray, text: TextConfig):
        self.path, self.manifest, self.parts = path, manifest, parts
        self.index = parts[0] if len(parts) == 1 else assemble_shards(parts)
        self.items, self.embeddings, self.popularity, self.text = items, embeddings, popularity, text
        self.row_ids = items["row_id"].to_numpy(dtype=np.int64)
        self.position_of_item = pd.Index(items["item_id"])  # item_id -> row position
        self._position_of_row = pd.Index(self.row_ids)
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
        return self._position_of_row.get_indexer(np.asarray(row_ids, dtype=np.int64))

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
        if not path.exists() and _aside(path).exists():
            log.warning("%s is missing but an interrupted write left the previous version at %s; loading it",
                        path, _aside(path))
            path = _aside(path)
        manifest = read_manifest(path)
        for rel, entry in manifest["files"].items():
            f = path / rel
            if not f.is_file():
                raise ArtifactError(f"{f}: missing (listed in {path / MANIFEST}); the artifact is incomplete")
            if verify and sha256_file(f) != entry["sha256"]:
                raise ArtifactError(f"{f}: checksum mismatch (expected sha256 {entry['sha256'][:12]}..., "
                                    "see manifest.json): the file was modified or corrupted")
        dim, n = int(manifest["dim"]), int(manifest["num_items"])
        shards = int(manifest["index"].get("shards", 1))
        names = [shard_file(i) for i in range(shards)] if shards > 1 else [INDEX_FILE]
        parts = []
        for name in names:
            if name not in manifest["files"]:
                raise ArtifactError(f"{path / MANIFEST}: the index file {name} is not listed")
            part = faiss.read_index(str(path / name))
            if part.d != dim:
                raise ArtifactError(f"{path / name}: index dimension {part.d} != manifest dim {dim}")
            if part.metric_type != faiss.METRIC_INNER_PRODUCT:
                raise ArtifactError(f"{path / name}: index metric is not inner product")
            apply_search_params(part, manifest["index"].get("search") or {})
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
        text = TextConfig.from_dict(_read_json(path / TEXT_FILE))
        return cls(path, manifest, parts, items, emb, popularity, text)


def read_manifest(path: Path) -> dict:
    f = Path(path) / MANIFEST
    if not f.is_file():
        raise ArtifactError(f"{f}: missing; {path} is not a towerrec artifact (or an incomplete one)")
    try:
        manifest = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{f}: not valid JSON ({e})") from e
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ArtifactError(f"{f}: schema_version {version!r} is not a known artifact schema version")
    if version > SCHEMA_VERSION:
        raise ArtifactError(f"{f}: schema_version {version} is newer than this towerrec supports "
                            f"({SCHEMA_VERSION}); upgrade towerrec to load it")
    for key in ("dim", "num_items", "files", "index"):
        if key not in manifest:
            raise ArtifactError(f"{f}: required field {key!r} is missing")
    for rel in manifest["files"]:
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise ArtifactError(f"{f}: file entry {rel!r} points outside the artifact")
    return manifest


# ------------------------------------------------------------------------------------------ writing


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
) -> Path:
    """Encode the catalog with the product tower, index it, and write the artifact atomically to `out_dir`.

    Use the training datamodule's eval batch size as `batch_size` to get the in-training item embeddings
    bit for bit. Returns the artifact path.
    """
    icfg = IndexConfig.from_any(index_cfg)
    catalog = split.catalog
    item_texts = render_items(catalog, text)
    history_texts = render_items(catalog, text, text.history_fields)
    n = len(item_texts)
    ids = np.arange(n, dtype=np.int64)
    emb = encode_texts(model.item_tower, tokenizer, item_texts, item_max_length, batch_size, item_idx=ids,
                       progress=progress, desc="export: encode catalog")
    emb = normalize_rows(emb)
    items = _item_table(catalog.items, ids, item_texts, history_texts)
    parts, info = _build_parts(emb, ids, icfg)
    train_cfg = _redact(_jsonable(dict(train_cfg or {})))
    if encoder_name is None:
        enc = (train_cfg.get("model") or {}).get("encoder") or {}
        encoder_name = enc.get("name_or_path") or ("random_init" if enc.get("random_init") else None)
        encoder_name = encoder_name or getattr(model.user_tower.encoder.config, "_name_or_path", "") or "unknown"
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "created_at": _now(),
        "encoder": {"name_or_path": encoder_name, "class": type(model.user_tower.encoder).__name__,
                    "shared": bool(model.shared_encoder)},
        "dim": int(emb.shape[1]),
        "metric": "ip",
        "normalized": True,
        "index": info,
        "num_items": n,
        "next_row_id": n,
        "max_length": {"item": int(item_max_length), "user": int(user_max_length)},
        "data": {"name": split.name, "fingerprint": split.fingerprint, "num_items": split.num_items},
        "train_config": train_cfg,
        "metrics": _jsonable(dict(metrics or {})),
        "history": [],
    }

    def write(tmp: Path) -> dict:
        _write_tables(tmp, items, emb, split.item_counts().astype(np.int64))
        _write_users(tmp, split)
        _write_parts(tmp, parts)
        _write_json(tmp / TEXT_FILE, _text_dict(text))
        save_tower(model.user_tower, tokenizer, tmp / TOWER_DIRS["user"], user_max_length)
        save_tower(model.item_tower, tokenizer, tmp / TOWER_DIRS["item"], item_max_length)
        return manifest

    path = write_artifact(out_dir, write)
    log.info("exported %d items (dim %d, %s) to %s", n, emb.shape[1], info["factory"], path)
    return path


def _build_parts(emb: np.ndarray, ids: np.ndarray, cfg: IndexConfig) -> tuple[list[faiss.Index], dict]:
    if cfg.shards > 1:
        _, parts, info = build_sharded_index(emb, ids, cfg.shards, cfg)
        return parts, info
    index, info = build_index(emb, ids, cfg)
    return [index], {**info, "shards": 1}


def _item_table(catalog_items: pd.DataFrame, ids: np.ndarray, texts, history_texts) -> pd.DataFrame:
    df = pd.DataFrame({
        "row_id": np.asarray(ids, dtype=np.int64),
        "item_id": catalog_items["item_id"].astype(str).to_numpy(),
        "title": catalog_items["title"].astype(str).to_numpy(),
        "brand": catalog_items["brand"].astype(str).to_numpy(),
        "category": catalog_items["category"].astype(str).to_numpy(),
        "price": pd.to_numeric(catalog_items["price"], errors="coerce").astype(float).to_numpy(),
        "text": list(texts),
        "history_text": list(history_texts),
    })
    return df


def _write_tables(tmp: Path, items: pd.DataFrame, emb: np.ndarray, counts: np.ndarray) -> None:
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


def _write_parts(tmp: Path, parts: list[faiss.Index]) -> None:
    if len(parts) == 1:
        faiss.write_index(parts[0], str(tmp / INDEX_FILE))
    else:
        for i, part in enumerate(parts):
            faiss.write_index(part, str(tmp / shard_file(i)))


_LOCKS: dict[str, int] = {}
_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def artifact_lock(out_dir: str | os.PathLike):
    """Exclusive inter-process lock on an artifact path (re-entrant within a process) for writers."""
    out_dir = Path(out_dir).absolute()
    key = str(out_dir)
    with _LOCKS_GUARD:
        held = _LOCKS.get(key, 0)
        _LOCKS[key] = held + 1
    if held:
        try:
            yield
        finally:
            with _LOCKS_GUARD:
                _LOCKS[key] -= 1
        return
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out_dir.parent / f".{out_dir.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - not POSIX: no inter-process lock
            pass
        yield
    finally:
        os.close(fd)  # releases the flock
        with _LOCKS_GUARD:
            _LOCKS.pop(key, None)


def _aside(out_dir: Path) -> Path:
    return out_dir.parent / f".{out_dir.name}.old"


def write_artifact(out_dir: str | os.PathLike, write: Callable[[Path], dict],
                   known_checksums: Mapping[str, dict] | None = None) -> Path:
    """Run `write(tmp)` (files -> tmp, returns the manifest without checksums), checksum, then swap in.

    `known_checksums`: entries of files hard-linked unchanged from the previous version (not re-hashed).
    """
    out_dir = Path(out_dir).absolute()
    with artifact_lock(out_dir):
        _recover(out_dir)
        for stale in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):  # left by a killed writer
            shutil.rmtree(stale, ignore_errors=True)
        tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:12]}"
        tmp.mkdir()
        try:
            manifest = write(tmp)
            files = {}
            for f in sorted(p for p in tmp.rglob("*") if p.is_file()):
                rel = f.relative_to(tmp).as_posix()
                if rel == MANIFEST:
                    continue
                os.chmod(f, 0o644)  # safetensors writes 0600; an artifact is meant to be shared read-only
                known = (known_checksums or {}).get(rel)
                files[rel] = dict(known) if known else {"sha256": sha256_file(f), "bytes": f.stat().st_size}
            manifest = {**manifest, "files": files}
            _write_json(tmp / MANIFEST, manifest)
            _fsync_tree(tmp)
            _swap_in(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out_dir


def _swap_in(tmp: Path, out_dir: Path) -> None:
    """Rename tmp to out_dir; a previous version is renamed aside first and deleted last."""
    aside = _aside(out_dir)
    if out_dir.exists():
        if aside.exists():
            shutil.rmtree(aside)  # a half-deleted leftover: out_dir is the complete version
        os.rename(out_dir, aside)
        _fsync_dir(out_dir.parent)
    os.rename(tmp, out_dir)
    _fsync_dir(out_dir.parent)
    if aside.exists():
        shutil.rmtree(aside)


def _recover(out_dir: Path) -> None:
    """Undo a write interrupted between its two renames: put the previous version back."""
    aside = _aside(out_dir)
    if not out_dir.exists() and aside.exists():
        log.warning("restoring %s from %s (an earlier write was interrupted)", out_dir, aside)
        os.rename(aside, out_dir)


def _fsync_tree(root: Path) -> None:
    for p in sorted(root.rglob("*"), reverse=True):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        else:
            _fsync_dir(p)
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def _read_json(path: Path):
    if not path.is_file():
        raise ArtifactError(f"{path}: missing")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: not valid JSON ({e})") from e


def _text_dict(text: TextConfig) -> dict:
    return _jsonable(dataclasses.asdict(text))


def _jsonable(obj):
    """JSON-safe copy: tuples -> lists, numpy scalars -> Python, non-finite floats -> None, others -> str."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


def _redact(obj):
    """Drop the values of secret-looking keys (e.g. data.user_id_secret) from a config."""
    if isinstance(obj, dict):
        return {k: ("<redacted>" if any(w in k.lower() for w in SECRET_WORDS) and v is not None else _redact(v))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [_redact(v) for v in obj]
    return obj


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------ updates


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
    index_files = {INDEX_FILE} | {shard_file(i) for i in range(int(old["index"].get("shards", 1)))}
    if parts is not None:
        rewritten |= index_files

    def write(tmp: Path) -> dict:
        _write_tables(tmp, items, emb, counts)
        if parts is not None:
            _write_parts(tmp, parts)
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
        parts, new_info = _build_parts(all_vectors, all_ids, cfg)
        return parts, {**info, **new_info}
    parts = [faiss.clone_index(p) for p in art.parts]  # the loaded version stays untouched until the swap
    for p in parts:
        apply_search_params(p, info.get("search") or {})
        if len(remove_ids):
            p.remove_ids(np.ascontiguousarray(remove_ids, dtype=np.int64))
    if len(add_ids):
        target = min(range(len(parts)), key=lambda i: parts[i].ntotal)  # sharded: fill the smallest shard
        parts[target].add_with_ids(_as_matrix(add_vectors), np.ascontiguousarray(add_ids, dtype=np.int64))
    return parts, info


def add_items(artifact_dir: str | os.PathLike, items: pd.DataFrame, *, replace: bool = True, rebuild: bool = False,
              batch_size: int = 256, progress: bool = False) -> dict:
    """Embed new products with the stored product tower and add them to the artifact, without retraining.

    `items` has catalog columns (item_id, title, brand, category, description, price, extra attributes).
    Unknown item ids get fresh row ids (never reused); known ones are replaced in place under their row id
    (their text, vector and shown fields change; popularity is kept) when `replace`, else it is an error.
    Replacing needs an index that can remove vectors (IDMap2,Flat or IVF); otherwise pass `rebuild=True`.
    Returns {"added": n, "updated": n, "num_items": N}.
    """
    new = Catalog(pd.DataFrame(items)).items  # validated: ids unique, titles present
    out_dir = Path(artifact_dir).absolute()
    with artifact_lock(out_dir):
        _recover(out_dir)
        art = Artifact.load(out_dir, verify=True)
        pos = art.position_of_item.get_indexer(new["item_id"])
        known = pos >= 0
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

        table = _item_table(new, row_ids, texts, history)
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
        event = {"action": "add", "at": _now(), **summary, "rebuilt": bool(rebuild)}
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
        _recover(out_dir)
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
        event = {"action": "remove", "at": _now(), **summary, "rebuilt": bool(rebuild)}
        _rewrite(out_dir, art, items_df, emb, counts, parts, {
            "num_items": len(items_df), "index": info, "history": [*art.manifest.get("history", []), event]})
    return summary


def set_metrics(artifact_dir: str | os.PathLike, metrics: Mapping[str, float]) -> None:
    """Replace the manifest's metrics (everything else carried over)."""
    out_dir = Path(artifact_dir).absolute()
    with artifact_lock(out_dir):
        _recover(out_dir)
        art = Artifact.load(out_dir, verify=True)
        _rewrite(out_dir, art, art.items, art.embeddings, art.popularity, None, {"metrics": _jsonable(dict(metrics))})


# ------------------------------------------------------------------------------------------ from a training run


def export_run(cfg, objects: Mapping, metrics: Mapping | None,
               out_dir: str | os.PathLike | None = None) -> Path | None:
    """Export at the end of `towerrec.pipeline.fit_two_tower` (call on global rank zero only).

    `objects`: its dict (module.model holds the best checkpoint's weights after trainer.test). Reads
    cfg.export (enabled, dir, batch_size, progress) and cfg.index; both may be absent (defaults: export to
    <run>/artifact, flat index). Returns the artifact path, or None when cfg.export.enabled is false.
    """
    dm = objects["datamodule"]
    exp = _plain(cfg.get("export") or {})
    if not exp.get("enabled", True):
        return None
    out = out_dir or exp.get("dir") or Path(cfg.paths.output_dir) / "artifact"
    return export_artifact(
        out, objects["module"].model, dm.tokenizer, dm.split, dm.text,
        item_max_length=dm.item_max_length, user_max_length=dm.user_max_length,
        index_cfg=cfg.get("index"), train_cfg=_config_dict(cfg), metrics=metrics or {},
        batch_size=int(exp.get("batch_size") or dm.eval_batch_size), progress=bool(exp.get("progress", True)),
    )


def export_checkpoint(cfg, ckpt_path: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                      evaluate: bool = True) -> Path:
    """`stage=export ckpt_path=...`: rebuild the two towers from cfg, load a Lightning checkpoint's weights
    (torch.load with weights_only=True), export, and (if `evaluate`) record the artifact's own valid/test
    metrics, computed through the exported files."""
    from towerrec.pipeline import build_two_tower, load_split

    split = load_split(cfg.data)
    m = cfg.model
    model, tokenizer, text = build_two_tower(cfg, split)
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)["state_dict"]
    weights = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    model.load_state_dict(weights, strict=True)
    exp = _plain(cfg.get("export") or {})
    out = out_dir or exp.get("dir") or Path(cfg.paths.output_dir) / "artifact"
    dmc = m.datamodule
    path = export_artifact(out, model, tokenizer, split, text, item_max_length=dmc.item_max_length,
                           user_max_length=dmc.user_max_length, index_cfg=cfg.get("index"),
                           train_cfg={**_config_dict(cfg), "ckpt_path": str(ckpt_path)}, metrics={},
                           batch_size=int(exp.get("batch_size") or dmc.eval_batch_size),
                           progress=bool(exp.get("progress", True)))
    if evaluate:
        from towerrec.retrieval import evaluate_artifact

        metrics = evaluate_artifact(Artifact.load(path), split, cfg.eval, stages=("valid", "test"),
                                    batch_size=int(dmc.eval_batch_size))
        set_metrics(path, metrics)
    return path


def _config_dict(cfg) -> dict:
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # e.g. ${hydra:...} outside a Hydra run
        return OmegaConf.to_container(cfg, resolve=False)


# ------------------------------------------------------------------------------------------ CLI


def _read_items(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix in (".jsonl", ".json"):
        return pd.read_json(path, lines=path.suffix == ".jsonl", dtype={"item_id": str})
    return pd.read_csv(path, dtype={"item_id": str}, sep="\t" if path.suffix == ".tsv" else ",")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m towerrec.export", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("verify", help="check files, checksums and shapes of an artifact")
    p.add_argument("artifact")
    p = sub.add_parser("add", help="add (or update) products from a CSV/TSV/JSONL/parquet file of catalog rows")
    p.add_argument("artifact")
    p.add_argument("items")
    p.add_argument("--no-replace", action="store_true", help="refuse products whose item_id already exists")
    p.add_argument("--rebuild", action="store_true", help="rebuild the index from the stored embeddings")
    p.add_argument("--batch-size", type=int, default=256)
    p = sub.add_parser("remove", help="remove products by item id")
    p.add_argument("artifact")
    p.add_argument("item_ids", nargs="*", help="item ids (or --file)")
    p.add_argument("--file", help="a text file with one item id per line")
    p.add_argument("--rebuild", action="store_true", help="rebuild the index from the stored embeddings")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.command == "verify":
            art = Artifact.load(args.artifact, verify=True)
            m = art.manifest
            print(f"ok: {art.path}: {art.num_items} items, dim {art.dim}, index {m['index']['factory']} "
                  f"({describe(art.index)}), schema {m['schema_version']}, data {m.get('data', {}).get('fingerprint')}")
        elif args.command == "add":
            summary = add_items(args.artifact, _read_items(Path(args.items)), replace=not args.no_replace,
                                rebuild=args.rebuild, batch_size=args.batch_size)
            print(json.dumps(summary))
        else:
            ids = list(args.item_ids)
            if args.file:
                ids += [line.strip() for line in Path(args.file).read_text().splitlines() if line.strip()]
            print(json.dumps(remove_items(args.artifact, ids, rebuild=args.rebuild)))
    except (ValueError, FileNotFoundError) as e:  # ArtifactError and DataError are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
