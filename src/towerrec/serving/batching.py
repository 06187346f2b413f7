"""Dynamic batching of user-tower calls: concurrent requests that need a user vector share one forward pass.

On CPU a transformer forward pass over B texts costs much less than B passes over one text (the per-call
overhead and the small matrix products of a single sequence waste most of the core), and running one pass at a
time keeps the handler threads from fighting over the cores. `EmbeddingBatcher.embed(retriever, text)` queues
the text and blocks until its vector is ready; one worker thread takes the first waiting text, gathers more for
at most `max_wait_ms` (or until `max_batch` texts), and embeds them together with that retriever (texts of
different artifacts, around a reload, are embedded in separate passes). A failure is raised in every caller
of the batch.
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
        self.batches = self.texts = 0  # counters for metrics / tests

    def embed(self, retriever, text: str) -> np.ndarray:
        """(D,) unit-norm user vector of a ready-made user text, computed in a shared batch."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((retriever, text, future))
        return future.result()

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
        texts = list(dict.fromkeys(t for t, _ in jobs))  # the same text twice is embedded once
        try:
            vectors = retriever.embed_texts(texts, batch_size=len(texts))  # (B, D)
        except Exception as e:
            for _, future in jobs:
                future.set_exception(e)
            return
        by_text = dict(zip(texts, vectors))
        for text, future in jobs:
            future.set_result(by_text[text])
        self.batches += 1
        self.texts += len(texts)
        if self.on_batch is not None:
            self.on_batch(len(texts))
