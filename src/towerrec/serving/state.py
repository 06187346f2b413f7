"""The loaded artifact as the service holds it, and the atomic swap that reloads it.

`ServiceState.load(path)` does all the work of bringing an artifact into service before anyone sees it:
`Artifact.load(verify=True, mmap=True)` (manifest, checksums, shapes; files are only read; the index's vectors
are mapped from the file, so the workers of `service.workers` share one copy), the user tower rebuilt and
run once on a probe history (`Retriever.embed_histories`, the one user path of text and sequence artifacts;
with a probe query where the artifact can embed free text), known users read, and what requests need beyond
the artifact's `ItemTable` (id maps, shown product fields, prices) precomputed: popularity order, category
prefixes. A state is never modified afterwards except for its caches.

User vectors are cached under `ServiceState.user_key(positions, query)`, a key that fully determines the
vector: the rendered user text for a text two-tower artifact (the user tower's exact input), and for a sequence
artifact the newest `max_len` history positions (all the tower reads) with the whitespace-normalised query.

`StateHolder` holds the current state in one attribute. A request reads `holder.current` once and uses that
state to the end, so it never mixes two artifacts; `reload` builds a complete new state first and then
replaces the reference (a single assignment, atomic in CPython), so no request ever sees a half-loaded index.
Reloads are serialised; a failed load leaves the served state untouched.
"""

from __future__ import annotations

import collections
import ctypes
import datetime as dt
import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from towerrec.artifact import Artifact
from towerrec.index import IndexConfig, describe
from towerrec.retrieval import Retriever
from towerrec.retrieval.filters import CatalogFilters

log = logging.getLogger(__name__)


def release_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc's malloc_trim; nothing elsewhere). A replaced state's
    memory, freed between the new state's allocations, stays with the process otherwise (10 reloads in a row:
    +10% resident memory without, +2.4% with). No garbage collection here: a full one would stop every
    request for ~170 ms (ctypes releases the GIL for the trim)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class LRUCache:
    """A small thread-safe least-recently-used map (size 0: caches nothing)."""

    def __init__(self, size: int):
        self.size = int(size)
        self._data: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key, value) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


class ServiceState:
    """One verified artifact, its Retriever and what requests need, precomputed."""

    def __init__(self, artifact: Artifact, user_cache_size: int = 10000, index: IndexConfig | None = None):
        self.artifact = artifact
        self.retriever = Retriever(artifact, index=index)
        self.path = str(artifact.path)
        self.version = artifact.version
        self.loaded_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self.table = artifact.table  # item id <-> position <-> row id, shown product dicts, prices
        self.num_items = len(self.table)
        self.filters = CatalogFilters(self.retriever)  # filter masks, the filtered popularity fallback
        self.popularity = self.filters.popularity  # (N,)
        self.popularity_order = self.filters.popularity_order  # positions, most popular first
        self.texts = artifact.items["text"].astype(str).tolist()  # the product-tower text, for /items
        self.user_vectors = LRUCache(user_cache_size)
        self.is_sequence = self.retriever.is_sequence
        self.has_text_path = artifact.has_text_path  # false: an id-only sequence model (no free-text queries)
        self.known_users = 0
        self.explainer = None  # set before the state is served when explanations are enabled (its vocabulary)

    @classmethod
    def load(cls, path: str | Path, user_cache_size: int = 10000, warm: bool = True,
             precompute_users: bool = False, batch_size: int = 64, development: bool = False,
             index: IndexConfig | None = None) -> "ServiceState":
        """Load, verify and warm an artifact; raises ArtifactError / FileNotFoundError naming the bad file.

        `precompute_users`: embed every known user's stored history now (batched) into the user-vector cache,
        so requests for known users skip the user tower (the cache must be large enough to hold them).
        `development`: serve an artifact whose user pseudonyms came from the development key (else refused).
        `index`: where to search (None: the artifact's FAISS index; backend milvus: the collection the artifact
        was loaded into, refused with an ArtifactError when it holds another version)."""
        start = time.perf_counter()
        artifact = Artifact.load(path, verify=True, mmap=True)
        if not development:
            artifact.refuse_development_key("pass development=true to serve it")
        state = cls(artifact, user_cache_size, index)
        art = state.artifact
        users = {}
        if art.has_users:
            users = art.users  # reads users.parquet now, not inside the first request
            state.known_users = len(users)
        if warm:  # build the user tower (and a sequence model's query text path) and run it once: the first
            # request pays no start-up cost
            probe = np.arange(min(1, state.num_items), dtype=np.int64)
            state.retriever.embed_histories([probe], ["warm up" if state.has_text_path else None])
        if precompute_users and users:
            state.precompute_user_vectors(list(users.values()), batch_size)
        log.info("loaded artifact %s (version %s): %d items, dim %d, index %s, search %s, %d known users, in %.1f s",
                 state.path, state.version, state.num_items, art.dim, describe(art.index), state.search_backend,
                 state.known_users, time.perf_counter() - start)
        return state

    @functools.cached_property
    def max_len(self) -> int | None:
        """The sequence user tower's window (its tower.json; None for text towers)."""
        return self.artifact.user_tower.max_len if self.is_sequence else None

    def user_key(self, positions: np.ndarray, query: str | None = None):
        """The user-vector cache key of a history (table positions, oldest first; negative = unknown, skipped)
        and an optional free-text query: one that fully determines the vector `Retriever.embed_histories`
        computes. Text towers: the rendered user text (str). Sequence towers: (newest max_len positions,
        whitespace-normalised query or None) (a tuple, never equal to a text key)."""
        if not self.is_sequence:
            return self.retriever.user_text(positions, query)
        pos = np.asarray(positions, dtype=np.int64).reshape(-1)
        pos = pos[pos >= 0][-self.max_len:]
        text = " ".join(query.split()) if query else ""
        return tuple(pos.tolist()), text or None

    def precompute_user_vectors(self, histories: Sequence[Sequence[str]], batch_size: int = 64) -> int:
        """Embed these histories (item ids, oldest first) into the user-vector cache; returns how many."""
        from tqdm.auto import tqdm

        if len(histories) > self.user_vectors.size:
            log.warning("service.user_cache_size (%d) is below the %d known users: only the last ones stay cached",
                        self.user_vectors.size, len(histories))
        unique: dict = {}  # key -> positions: what a request for this user reads (unknown ids dropped likewise)
        for history in histories:
            pos = self.table.positions_of_items(history)
            pos = pos[pos >= 0].astype(np.int64)
            unique.setdefault(self.user_key(pos), pos)
        keys, positions = list(unique), list(unique.values())
        start = time.perf_counter()
        for i in tqdm(range(0, len(keys), batch_size), desc="user vectors", mininterval=10):
            vectors = self.retriever.embed_histories(positions[i : i + batch_size], batch_size=batch_size)
            for key, vec in zip(keys[i : i + batch_size], vectors):
                self.user_vectors.put(key, vec)
        log.info("precomputed %d user vectors in %.1f s", len(keys), time.perf_counter() - start)
        return len(keys)

    def position(self, item_id: str) -> int:
        """Table position of an item id, -1 if unknown."""
        return self.table.position_of_id.get(str(item_id), -1)

    @property
    def search_backend(self) -> str:
        """Where searches go: "faiss", or "milvus URI/COLLECTION"."""
        milvus = self.retriever.milvus
        return "faiss" if milvus is None else f"milvus {milvus.cfg.uri}/{milvus.cfg.collection}"

    def info(self) -> dict:
        art = self.artifact
        return {"path": self.path, "version": self.version, "model": art.kind, "text": self.has_text_path,
                "num_items": self.num_items, "dim": art.dim,
                "index": str(art.manifest["index"].get("factory", "")), "search": self.search_backend,
                "known_users": self.known_users, "loaded_at": self.loaded_at}


class ReloadInProgress(RuntimeError):
    """Another reload is running."""


class StateHolder:
    """The current ServiceState behind one reference, swapped whole."""

    def __init__(self, path: str | Path, user_cache_size: int = 10000,
                 prepare: Callable[[ServiceState], None] | None = None, precompute_users: bool = False,
                 development: bool = False, index: IndexConfig | None = None):
        self.path = str(path)
        self.index = index  # ServiceState.load: where to search
        self.user_cache_size = user_cache_size
        self.precompute_users = precompute_users
        self.development = development  # ServiceState.load: serve development-key pseudonyms
        self.prepare = prepare  # finishes a loaded state (e.g. its explainer) before it is swapped in
        self.current: ServiceState | None = None
        self.error: str | None = None  # why the first load failed
        self._reload_lock = threading.Lock()

    def load_initial(self) -> ServiceState:
        try:
            return self.reload()
        except Exception as e:
            self.error = f"{type(e).__name__}: {e}"
            raise

    def reload(self, path: str | Path | None = None, *, blocking: bool = True) -> ServiceState:
        """Load `path` (default: the served directory) completely, then swap it in. Returns the new state."""
        if not self._reload_lock.acquire(blocking=blocking):
            raise ReloadInProgress("a reload is already in progress; try again when it has finished")
        try:
            state = ServiceState.load(path or self.path, self.user_cache_size,
                                      precompute_users=self.precompute_users, development=self.development,
                                      index=self.index)
            if self.prepare is not None:
                self.prepare(state)
            self.current = state  # the swap: one reference assignment
            self.path = str(path) if path else self.path
            self.error = None
            return state
        finally:
            self._reload_lock.release()
