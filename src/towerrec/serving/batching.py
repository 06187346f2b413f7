"""Dynamic batching of user-tower calls: concurrent requests that need a user vector share one forward pass.

On CPU a transformer forward pass over B users costs much less than B passes over one (the per-call overhead
and the small matrix products of a single sequence waste most of the core), and running one pass at a time
keeps the handler threads from fighting over the cores. `EmbeddingBatcher.embed(retriever, positions, query)`
queues a user (a history of table positions, oldest first, and an optional free-text query) and blocks until
its vector is ready; one worker thread takes the first waiting user, gathers more for at most `max_wait_ms`
(or until `max_batch` users), and embeds them together with that retriever's `embed_histories` (the one path
of text and sequence artifacts; users of different artifacts, around a reload, are embedded in separate
passes). Users with the same `key` (the service's user-vector cache key) in one batch are embedded once. A
failure is raised in every caller of the batch.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time

import numpy as np

log = logging.getLogger(__name__)


class EmbeddingBatcher:
    def __init__(self, max_batch: int = 32, max_wait_ms: float = 2.0, on_batch=None):
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"bad batching settings: max_batch={max_batch}, max_wait_ms={max_wait_ms}")
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000
        self.on_batch = on_batch  # called with each batch's size (metrics)
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="towerrec-embed", daemon=True)
        self._thread.start()
        self.batches = self.users = 0  # counters for metrics / tests: batches run, users embedded

    def embed(self, retriever, positions, query: str | None = None, key=None) -> np.ndarray:
        """(D,) unit-norm user vector of a history (table positions, oldest first) and optional free text,
        computed in a shared batch. `key`: what identifies the input (equal keys are embedded once per
        batch); default the positions and the query."""
        return self.submit(retriever, positions, query, key).result()

    def submit(self, retriever, positions, query: str | None = None, key=None) -> concurrent.futures.Future:
        """`embed` without waiting: the future of the (D,) vector (an event loop awaits it with
        `asyncio.wrap_future`)."""
        if key is None:
            key = (tuple(int(p) for p in np.asarray(positions).reshape(-1)), query)
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((retriever, (key, positions, query), future))
        return future

    def close(self) -> None:
        self._queue.put(None)

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, deadline = [first], time.perf_counter() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(item)
            for retriever in dict.fromkeys(r for r, _, _ in batch):  # one pass per artifact
                self._run(retriever, [(t, f) for r, t, f in batch if r is retriever])

    def _run(self, retriever, jobs: list) -> None:
        """Embed `jobs`, ((key, positions, query), future) pairs, in one `embed_histories` call."""
        unique: dict = {}  # key -> (positions, query): the same user twice is embedded once
        for (key, positions, query), _ in jobs:
            unique.setdefault(key, (positions, query))
        inputs = list(unique.values())
        try:
            vectors = retriever.embed_histories([p for p, _ in inputs], [q for _, q in inputs],
                                                batch_size=len(inputs))  # (B, D)
        except Exception as e:
            for _, future in jobs:
                future.set_exception(e)
            return
        by_key = dict(zip(unique, vectors))
        for (key, _, _), future in jobs:
            future.set_result(by_key[key])
        self.batches += 1
        self.users += len(inputs)
        if self.on_batch is not None:
            self.on_batch(len(inputs))
