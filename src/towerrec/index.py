"""FAISS indexes over L2-normalised vectors (inner product = cosine): config, build, shards, search parameters;
and where serving searches (`IndexConfig.backend`: the artifact's FAISS index, or a Milvus collection).

`IndexConfig` (conf/index/*.yaml) turns into a concrete factory string for N vectors of dimension D;
`build_index` trains and fills it with the caller's ids; `build_sharded_index` splits ids into successive
ranges; `apply_search_params` sets efSearch / nprobe / k_factor after loading (FAISS does not store them).
`MilvusConfig` (conf/index/milvus/default.yaml) holds plain values only; the client code is
`towerrec.artifact.milvus`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence

import faiss
import numpy as np

from towerrec.utils.io import check_fields, to_plain

log = logging.getLogger(__name__)


BACKENDS = ("faiss", "milvus")
MILVUS_TOKEN_ENV = "TOWERREC_MILVUS_TOKEN"
_COLLECTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,199}")  # Milvus's rule, with room for a version suffix


@dataclasses.dataclass(frozen=True)
class MilvusConfig:
    """Where the catalog lives in Milvus (`index.milvus`, conf/index/milvus/default.yaml).

    `uri`: a local path ending in .db runs Milvus Lite in this process (development, one process at a time);
    http(s)://HOST:PORT is a Milvus server or cluster, reached by the same client code. `collection` is an
    alias: each load writes a new collection and swaps the alias to it. `token` ("user:password" or an API key)
    defaults to $TOWERREC_MILVUS_TOKEN and is never written to a manifest. `index_type` / `index_params` are
    Milvus's (HNSW with M, efConstruction; IVF_FLAT with nlist; FLAT), `search_params` likewise (ef, nprobe)."""

    uri: str | None = None
    collection: str = "towerrec_items"
    db_name: str = ""
    token: str | None = None
    index_type: str = "HNSW"
    index_params: Mapping = dataclasses.field(default_factory=lambda: {"M": 32, "efConstruction": 200})
    search_params: Mapping = dataclasses.field(default_factory=lambda: {"ef": 128})
    insert_batch: int = 1000
    timeout_s: float = 60.0
    keep_previous: bool = True  # keep the collection the alias pointed to before, for processes still reading it

    def __post_init__(self):
        if not _COLLECTION_NAME.fullmatch(str(self.collection)):
            raise ValueError(f"index.milvus.collection must be a letter or underscore followed by up to 199 "
                             f"letters, digits or underscores, got {self.collection!r}")
        if self.insert_batch < 1 or self.timeout_s <= 0:
            raise ValueError(f"index.milvus.insert_batch and timeout_s must be positive, got {self.insert_batch}, "
                             f"{self.timeout_s}")
        if not str(self.index_type).strip():
            raise ValueError("index.milvus.index_type must name a Milvus index type (HNSW, IVF_FLAT, FLAT, ...)")

    @classmethod
    def from_any(cls, cfg) -> "MilvusConfig":
        if isinstance(cfg, MilvusConfig):
            return cfg
        d = to_plain(cfg)
        check_fields(cls, d, "index.milvus")
        for key in ("index_params", "search_params"):
            if key in d:
                d[key] = dict(d[key] or {})
        return cls(**d)

    def secret(self) -> str:
        """The token to connect with: the config's, else $TOWERREC_MILVUS_TOKEN, else none."""
        return self.token or os.environ.get(MILVUS_TOKEN_ENV, "")

    def to_dict(self) -> dict:
        """The settings without the token (for manifests and logs)."""
        d = dataclasses.asdict(self)
        d.pop("token")
        d["index_params"], d["search_params"] = dict(self.index_params), dict(self.search_params)
        return d


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
    `backend`: where the Retriever searches: `faiss` (the artifact's index) or `milvus` (the collection of
    `milvus`, loaded from the artifact by `python -m towerrec.artifact milvus`); the FAISS index is written
    either way.
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
    backend: str = "faiss"
    milvus: MilvusConfig = dataclasses.field(default_factory=MilvusConfig)

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"index.backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")

    @classmethod
    def from_any(cls, cfg) -> "IndexConfig":
        """From an IndexConfig, a factory string, a mapping / DictConfig, or None (exact flat index)."""
        if isinstance(cfg, IndexConfig):
            return cfg
        if cfg is None:
            return cls()
        if isinstance(cfg, str):
            return cls(factory=cfg)
        d = to_plain(cfg)
        d.pop("defaults", None)  # a preset file read without Hydra (its index.milvus default then applies)
        check_fields(cls, d, "index")
        d["search"] = dict(d.get("search") or {})
        bad = set(d["search"]) - {"efSearch", "nprobe", "k_factor"}
        if bad:
            raise ValueError(f"unknown index search parameter(s) {sorted(bad)}: use efSearch, nprobe or k_factor")
        if int(d.get("shards", 1)) < 1:
            raise ValueError(f"index.shards must be >= 1, got {d['shards']}")
        if not d.get("refine", False):
            d["search"].pop("k_factor", None)  # re-ranking depth means nothing without re-ranking
        d["milvus"] = MilvusConfig.from_any(d.get("milvus"))
        return cls(**d)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["search"] = dict(self.search)
        d["milvus"] = self.milvus.to_dict()
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
            raise ValueError(f"search parameter {name}={value} does not apply to index {describe(index)}")


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
    try:
        index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:  # FAISS's message holds its C++ location; the first line says what
        raise ValueError(f"index.factory {factory!r} is not a FAISS index factory string: "
                         f"{str(e).strip().splitlines()[-1]}") from e
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


def build_parts(vectors: np.ndarray, ids: np.ndarray, cfg: IndexConfig) -> tuple[list[faiss.Index], dict]:
    """The index as its parts (one, or `cfg.shards`), and what was built (for the manifest)."""
    if cfg.shards > 1:
        _, parts, info = build_sharded_index(vectors, ids, cfg.shards, cfg)
        return parts, info
    index, info = build_index(vectors, ids, cfg)
    return [index], {**info, "shards": 1}
