"""The loaded artifact as the service holds it, and the atomic swap that reloads it.

`ServiceState.load(path)` does all the work of bringing an artifact into service before anyone sees it:
`Artifact.load(verify=True)` (manifest, checksums, shapes; files are only read), the user tower rebuilt and
run once on a probe text, known users read, and what requests need beyond the artifact's `ItemTable` (id
maps, shown product fields, prices) precomputed: popularity order, category prefixes. A state is never modified
afterwards except for its caches.

`StateHolder` holds the current state in one attribute. A request reads `holder.current` once and uses that
state to the end, so it never mixes two artifacts; `reload` builds a complete new state first and then
replaces the reference (a single assignment, atomic in CPython), so no request ever sees a half-loaded index.
Reloads are serialised; a failed load leaves the served state untouched.
"""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from towerrec.artifact import Artifact, ArtifactError
from towerrec.artifact.format import MANIFEST
from towerrec.data.privacy import ENV_VAR as SECRET_ENV
from towerrec.data.schema import CATEGORY_SEP
from towerrec.index import describe
from towerrec.retrieval import Retriever
from towerrec.retrieval.retriever import category_key

log = logging.getLogger(__name__)


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


def category_prefixes(categories: Sequence[str | None]) -> frozenset[str]:
    """Every category path prefix present in a catalog ('A > B > C' gives 'A', 'A > B', 'A > B > C')."""
    out: set[str] = set()
    for c in set(categories):
        if not c:
            continue
        parts = category_key(c).split(CATEGORY_SEP)
        out.update(CATEGORY_SEP.join(parts[: i + 1]) for i in range(len(parts)))
    return frozenset(out)


class ServiceState:
    """One verified artifact, its Retriever and what requests need, precomputed."""

    def __init__(self, artifact: Artifact, user_cache_size: int = 10000):
        self.artifact = artifact
        self.retriever = Retriever(artifact)
        self.path = str(artifact.path)
        self.version = hashlib.sha256((artifact.path / MANIFEST).read_bytes()).hexdigest()[:16]
        self.loaded_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self.table = artifact.table  # item id <-> position <-> row id, shown product dicts, prices
        self.num_items = len(self.table)
        self.popularity = np.asarray(artifact.popularity, dtype=np.int64)  # (N,)
        self.popularity_order = np.argsort(-self.popularity, kind="stable")  # positions, most popular first
        self.texts = artifact.items["text"].astype(str).tolist()  # the product-tower text, for /items
        self.categories = category_prefixes([p["category"] for p in self.table.products])  # filters that match
        self.user_vectors = LRUCache(user_cache_size)
        self.known_users = 0
        self.explainer = None  # set before the state is served when explanations are enabled (its vocabulary)

    @classmethod
    def load(cls, path: str | Path, user_cache_size: int = 10000, warm: bool = True,
             precompute_users: bool = False, batch_size: int = 64, development: bool = False) -> "ServiceState":
        """Load, verify and warm an artifact; raises ArtifactError / FileNotFoundError naming the bad file.

        `precompute_users`: embed every known user's stored history now (batched) into the user-vector cache,
        so requests for known users skip the user tower (the cache must be large enough to hold them).
        `development`: serve an artifact whose user pseudonyms came from the development key (else refused)."""
        start = time.perf_counter()
        artifact = Artifact.load(path, verify=True)
        data = artifact.manifest.get("data")
        if not development and isinstance(data, dict) and data.get("development_key") is True:
            raise ArtifactError(f"{artifact.path / MANIFEST}: its user pseudonyms come from the development key "
                                "(data.development_key), which anyone can recompute; export it again with "
                                f"data.user_id_secret or ${SECRET_ENV} set, or pass development=true to serve it "
                                "for a development run")
        state = cls(artifact, user_cache_size)
        art = state.artifact
        users = {}
        if art.has_users:
            users = art.users  # reads users.parquet now, not inside the first request
            state.known_users = len(users)
        if warm:  # build the user tower and run it once: the first request pays no start-up cost
            state.retriever.embed_texts([state.retriever.user_text([0])])
        if precompute_users and users:
            state.precompute_user_vectors(list(users.values()), batch_size)
        log.info("loaded artifact %s (version %s): %d items, dim %d, index %s, %d known users, in %.1f s",
                 state.path, state.version, state.num_items, art.dim, describe(art.index), state.known_users,
                 time.perf_counter() - start)
        return state

    def precompute_user_vectors(self, histories: Sequence[Sequence[str]], batch_size: int = 64) -> int:
        """Embed these histories (item ids, oldest first) into the user-vector cache; returns how many."""
        from tqdm.auto import tqdm

        if len(histories) > self.user_vectors.size:
            log.warning("service.user_cache_size (%d) is below the %d known users: only the last ones stay cached",
                        self.user_vectors.size, len(histories))
        texts = []
        for history in histories:  # the text a request for this user renders (unknown ids dropped likewise)
            pos = self.table.positions_of_items(history)
            texts.append(self.retriever.user_text(pos[pos >= 0]))
        texts = list(dict.fromkeys(texts))
        start = time.perf_counter()
        for i in tqdm(range(0, len(texts), batch_size), desc="user vectors", mininterval=10):
            chunk = texts[i : i + batch_size]
            for text, vec in zip(chunk, self.retriever.embed_texts(chunk, batch_size)):
                self.user_vectors.put(text, vec)
        log.info("precomputed %d user vectors in %.1f s", len(texts), time.perf_counter() - start)
        return len(texts)

    def position(self, item_id: str) -> int:
        """Table position of an item id, -1 if unknown."""
        return self.table.position_of_id.get(str(item_id), -1)

    def info(self) -> dict:
        art = self.artifact
        return {"path": self.path, "version": self.version, "num_items": self.num_items, "dim": art.dim,
                "index": str(art.manifest["index"].get("factory", "")), "known_users": self.known_users,
                "loaded_at": self.loaded_at}


class ReloadInProgress(RuntimeError):
    """Another reload is running."""


class StateHolder:
    """The current ServiceState behind one reference, swapped whole."""

    def __init__(self, path: str | Path, user_cache_size: int = 10000,
                 prepare: Callable[[ServiceState], None] | None = None, precompute_users: bool = False,
                 development: bool = False):
        self.path = str(path)
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
                                      precompute_users=self.precompute_users, development=self.development)
            if self.prepare is not None:
                self.prepare(state)
            self.current = state  # the swap: one reference assignment
            self.path = str(path) if path else self.path
            self.error = None
            return state
        finally:
            self._reload_lock.release()
