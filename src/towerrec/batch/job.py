"""The batch job: top-k recommendations for many users, chunk by chunk, resumable, into one Parquet file.

`recommend_all(artifact, out, options)` recommends for every known user of the artifact (or the users of a
histories file, `sources.HistoryFile`) exactly as `POST /recommend` with `{"user_id": ..., "k": k, "filters":
...}` answers for a known user (a history file's row: `{"history": [...]}`):
- the history's ids the artifact knows (table positions; unknown ones ignored), seen items excluded unless
  `filters.exclude_seen` is false, the filters as one `ItemFilter` (`retrieval.filters.CatalogFilters`, the
  service's), searched on the artifact's FAISS index or, with `index` (backend milvus), its Milvus collection;
- no known history: the most popular products passing the filters (`served_by` popularity, score = training
  count); else the user vector (`Retriever.embed_histories`, `batch_size` users per pass) searched with
  `Retriever.search` (score = cosine). Users are searched in groups with equal exclusion counts, so each one's
  index fetch is the one a lone request makes and approximate indexes answer as they answer the service;
- `reranker` given: the top max(k, candidates) go to it as the service hands them (`rerank.apply`), the
  result is checked to be a ranking of them and cut to k (`served_by` rerank, score = fused score). A
  reranker that fails or answers something else stops the job (no time budget, no silent fallback here); a
  rerun resumes at the chunk that failed.

Memory: only one chunk of `chunk_size` users is held: its histories, (chunk_size, D) user vectors and at most
chunk_size * max(k, candidates) hits. Each finished chunk is written to the work directory
(`store.ChunkStore`) and never recomputed; the output is assembled from the chunk files at the end.
Columns: user_id (the pseudonym), rank (1 = best), item_id, score, served_by, and `reranked` when a reranker
is given.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from towerrec.artifact.reader import Artifact
from towerrec.batch.sources import HistoryFile, KnownUsers, User, chunked
from towerrec.batch.store import BatchError, ChunkStore, default_work_dir
from towerrec.index import IndexConfig
from towerrec.rerank.apply import rank_candidates, reordered, rerank_candidates
from towerrec.retrieval.filters import CatalogFilters, Filters
from towerrec.retrieval.retriever import Retriever

log = logging.getLogger(__name__)

SCHEMA = pa.schema([("user_id", pa.string()), ("rank", pa.int32()), ("item_id", pa.string()),
                    ("score", pa.float64()), ("served_by", pa.string())])
RERANK_SCHEMA = SCHEMA.append(pa.field("reranked", pa.bool_()))


@dataclasses.dataclass(frozen=True)
class BatchOptions:
    k: int = 50  # recommendations per user
    chunk_size: int = 1024  # users per chunk: the unit of memory and of resumption
    filters: Filters = Filters()
    rerank_candidates: int | None = None  # retrieval candidates handed to the reranker (None: its top_n)
    batch_size: int = 256  # users per user-tower pass (speed only: not part of a job's identity)

    def __post_init__(self):
        for name in ("k", "chunk_size", "batch_size", "rerank_candidates"):
            value = getattr(self, name)
            if value is None and name == "rerank_candidates":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BatchError(f"{_option(name)} must be a positive integer, got {value!r}")
        f = self.filters
        for name in ("price_min", "price_max"):
            value = getattr(f, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise BatchError(f"{_option('filters.' + name)} must be a finite number >= 0, got {value!r}")
        if f.price_min is not None and f.price_max is not None and f.price_min > f.price_max:
            raise BatchError(f"{_option('filters.price_min')} ({f.price_min:g}) is above "
                             f"{_option('filters.price_max')} ({f.price_max:g}): no product can match")


def _option(name: str) -> str:
    """An option as the library and the command line name it: 'filters.price_min (--price-min)'."""
    return f"{name} (--{name.rpartition('.')[2].replace('_', '-')})"


@dataclasses.dataclass(frozen=True)
class ChunkReport:
    """A chunk just written: its 1-based index, users, rows, the shape of the user vectors it held."""

    index: int
    users: int
    rows: int
    vectors: tuple[int, int]
    path: Path


@dataclasses.dataclass(frozen=True)
class BatchSummary:
    out: Path
    users: int
    rows: int
    chunks: int
    computed: int  # chunks computed by this run (the others were finished by an earlier one)
    popularity_users: int  # of the computed chunks: users with no known history item
    unknown_ids: int  # of the computed chunks: history ids the artifact does not know (ignored)
    seconds: float


class ChunkRecommender:
    """Recommendations for one chunk of users at a time (see the module docstring)."""

    def __init__(self, retriever: Retriever, options: BatchOptions, reranker=None):
        self.retriever, self.options, self.reranker = retriever, options, reranker
        self.table = retriever.table
        self.filters = CatalogFilters(retriever)
        notes: list[str] = []
        self.item_filter = self.filters.item_filter(options.filters, notes)
        mask = retriever.filter_mask(self.item_filter)
        if mask is not None and not mask.any():
            raise BatchError(f"{_shown(options.filters)}: no product of {retriever.artifact.path} passes "
                             f"them{(' (' + '; '.join(notes) + ')') if notes else ''}")
        self.fetch = options.k
        if reranker is not None:
            self.fetch = max(options.k, rerank_candidates(reranker, options.rerank_candidates))
        self.max_history = retriever.artifact.text.user_max_items
        self.item_ids = np.asarray(self.table.item_ids, dtype=object)  # (N,) position -> item id
        self.schema = SCHEMA if reranker is None else RERANK_SCHEMA
        self.popularity_users = self.unknown_ids = 0

    def __call__(self, users: Sequence[User]) -> tuple[pa.Table, tuple[int, int]]:
        """(the chunk's rows, the shape of the user vectors computed for it)."""
        positions = []
        for _, items in users:
            pos = self.table.positions_of_items(items)
            self.unknown_ids += int((pos < 0).sum())
            positions.append(pos[pos >= 0].astype(np.int64))
        empty = np.zeros(0, dtype=np.int64)
        seen = [p if self.options.filters.exclude_seen else empty for p in positions]
        warm = [i for i, p in enumerate(positions) if len(p)]
        vectors = self.retriever.embed_histories([positions[i] for i in warm], batch_size=self.options.batch_size)
        hits: dict[int, list[tuple[int, float]]] = self._search(vectors, warm, seen)
        served = {i: "retrieval" for i in warm}
        for i in set(range(len(users))) - set(warm):
            hits[i], served[i] = self.filters.popular(self.options.k, seen[i], self.item_filter), "popularity"
            self.popularity_users += 1
        if self.reranker is not None:
            for i in warm:
                if hits[i]:
                    hits[i], served[i] = self._rerank(positions[i], hits[i]), "rerank"
        return self._rows(users, hits, served), tuple(vectors.shape)

    def _search(self, vectors: np.ndarray, warm: list[int], seen: list[np.ndarray]):
        """Top `fetch` (position, cosine) of each warm user, searched in groups of equal exclusion counts."""
        row_ids = self.table.row_ids
        excluded = {i: set(row_ids[seen[i]].tolist()) for i in warm}
        groups: dict[int, list[int]] = {}
        for j, i in enumerate(warm):
            groups.setdefault(len(excluded[i]), []).append(j)
        out: dict[int, list[tuple[int, float]]] = {}
        for rows in groups.values():
            found = self.retriever.search(vectors[rows], self.fetch, [excluded[warm[j]] for j in rows],
                                          item_filter=self.item_filter)
            for j, user_hits in zip(rows, found):
                pos = self.table.positions_of_rows([r for r, _ in user_hits])
                out[warm[j]] = [(int(p), s) for p, (_, s) in zip(pos.tolist(), user_hits)]
        return out

    def _rerank(self, history: np.ndarray, hits: list[tuple[int, float]]) -> list[tuple[int, float]]:
        items = [{"_position": p, "score": s} for p, s in hits]
        result = rank_candidates(self.reranker, self.table, history, items, self.max_history)
        try:
            ranked = reordered(items, result)
        except (AttributeError, TypeError, ValueError) as e:
            raise BatchError(f"the reranker's answer is not a ranking of its {len(items)} candidates ({e})") from e
        return [(it["_position"], it["score"]) for it in ranked[: self.options.k]]

    def _rows(self, users: Sequence[User], hits: dict, served: dict) -> pa.Table:
        user_col, rank, pos, score, by = [], [], [], [], []
        for i, (user, _) in enumerate(users):
            for r, (p, s) in enumerate(hits[i][: self.options.k], start=1):
                user_col.append(user), rank.append(r), pos.append(p), score.append(s), by.append(served[i])
        columns = [user_col, rank, self.item_ids[np.asarray(pos, dtype=np.int64)], score, by]
        if self.reranker is not None:
            columns.append([b == "rerank" for b in by])
        return pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in zip(columns, self.schema)],
                                    schema=self.schema)


def _shown(filters: Filters) -> str:
    """The filters set, as options: 'filters.category (--category)='Books''."""
    return ", ".join(f"{_option('filters.' + k)}={v!r}" for k, v in dataclasses.asdict(filters).items()
                     if v is not None and k != "exclude_seen")


def recommend_all(artifact: Artifact | str | Path, out: str | Path, options: BatchOptions = BatchOptions(), *,
                  histories: str | Path | None = None, reranker=None, reranker_id: str | None = None,
                  work_dir: str | Path | None = None, keep_chunks: bool = False, development: bool = False,
                  on_chunk: Callable[[ChunkReport], None] | None = None, progress: bool = True,
                  index: IndexConfig | Mapping | None = None) -> BatchSummary:
    """Write the top-k of every user (the artifact's known users, or those of `histories`) to `out`.

    `reranker`: an LM reranker (`.rank`, see `rerank.apply`); `reranker_id` names it in the job's identity (e.g.
    a digest of its rerank directory). `work_dir` (default OUT.parts beside `out`) holds the manifest and the
    chunk files; an existing one is resumed (finished chunks are skipped) when it was made for the same
    artifact, users and options, and refused (BatchError) otherwise. Removed after `out` is written unless
    `keep_chunks`. `on_chunk` is called after each chunk this run writes. `development`: accept an artifact
    whose pseudonyms came from the development key. `index`: where to search (`IndexConfig`, only `backend` and
    `milvus` are read; None: the artifact's FAISS index)."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    art = artifact if isinstance(artifact, Artifact) else Artifact.load(artifact, verify=True)
    if not development:
        art.refuse_development_key("pass --development (development=True)")
    source = HistoryFile(histories) if histories is not None else KnownUsers(art)
    total = source.count()  # a histories file is checked in full here: a bad row stops the job now
    if total == 0:
        raise BatchError(f"{art.path}: the artifact knows no users (no users.parquet); pass a histories file")
    out = Path(out)
    rerank = None if reranker is None else {"reranker": reranker_id or type(reranker).__name__,
                                            "candidates": rerank_candidates(reranker, options.rerank_candidates)}
    identity = {"artifact": art.digest, "users": source.identity(), "k": options.k,
                "chunk_size": options.chunk_size, "filters": dataclasses.asdict(options.filters), "rerank": rerank}
    # filters checked before any file is made
    recommender = ChunkRecommender(Retriever(art, index=index), options, reranker)
    store = ChunkStore(Path(work_dir) if work_dir is not None else default_work_dir(out), identity)
    store.open()
    n_chunks = math.ceil(total / options.chunk_size)
    index = computed = 0
    bar = tqdm(total=total, unit="user", desc="batch recommendations", disable=not progress, mininterval=5)
    with bar:
        for index, users in enumerate(chunked(source.users(options.chunk_size), options.chunk_size), start=1):
            if store.done(index):
                bar.update(len(users))
                continue
            table, shape = recommender(users)
            path = store.write(index, table)
            computed += 1
            bar.update(len(users))
            if on_chunk is not None:
                on_chunk(ChunkReport(index, len(users), table.num_rows, shape, path))
    if index != n_chunks:
        raise BatchError(f"{store.manifest_path}: expected {n_chunks} chunks of users, read {index}")
    rows = store.assemble(out, n_chunks, recommender.schema)
    if not keep_chunks:
        store.remove()
    summary = BatchSummary(out, total, rows, n_chunks, computed, recommender.popularity_users,
                           recommender.unknown_ids, time.perf_counter() - start)
    log.info("wrote %s: %d rows for %d users (%d of %d chunks computed now) in %.1f s", out, rows, total,
             computed, n_chunks, summary.seconds)
    return summary
