"""Plain /recommend requests run on the event loop: a slow LM stage that holds the only handler thread cannot
block them, concurrent new histories on that path share the embedding batches and get the Retriever's answers,
the garbage-collector setting is validated, and a reload releases the memory it freed."""

from __future__ import annotations

import concurrent.futures
import os
import platform
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers.serve import ReverseReranker, ServerThread, export_tiny_artifact

from towerrec.artifact import Artifact
from towerrec.retrieval import Retriever
from towerrec.serving import LMComponents, ServeConfig, StageSettings, create_app

pytestmark = pytest.mark.usefixtures("one_thread_faiss")


class BlockingReranker(ReverseReranker):
    """Holds its handler thread until the test releases it."""

    def __init__(self):
        super().__init__()
        self.started, self.release = threading.Event(), threading.Event()

    def rank(self, history, candidates, query=None):
        self.started.set()
        if not self.release.wait(60):
            raise TimeoutError("the test never released the reranker")
        return super().rank(history, candidates, query)


@pytest.fixture(scope="module")
def artifact_dir(tiny_split, tmp_path_factory):
    return export_tiny_artifact(tmp_path_factory.mktemp("loop") / "artifact", tiny_split)


def histories(artifact_dir, n: int) -> list[list[str]]:
    ids = Artifact.load(artifact_dir).items["item_id"].astype(str).tolist()
    return [[ids[(7 * i + j) % len(ids)] for j in range(3)] for i in range(n)]


def test_a_plain_request_is_answered_while_the_lm_holds_the_only_handler_thread(artifact_dir):
    reranker = BlockingReranker()
    cfg = ServeConfig(artifacts=str(artifact_dir), worker_threads=1,
                      rerank=StageSettings(enabled=True, candidates=5, budget_ms=600_000))
    history = histories(artifact_dir, 1)[0]
    with ServerThread(create_app(cfg, components=LMComponents(reranker=reranker))) as server, \
            concurrent.futures.ThreadPoolExecutor(1) as pool:
        server.wait_ready()
        client = httpx.Client(base_url=server.url, timeout=30)
        slow = pool.submit(client.post, "/recommend", json={"history": history, "k": 3, "rerank": True})
        assert reranker.started.wait(30)  # the rerank request now holds the one handler thread
        try:
            fast = client.post("/recommend", json={"history": history[:2], "k": 3})
            assert fast.status_code == 200 and fast.json()["served_by"] == "retrieval"
            assert not slow.done()  # answered before the LM call ended
        finally:
            reranker.release.set()
        assert slow.result().json()["served_by"] == "rerank"


def test_concurrent_new_histories_on_the_loop_get_the_retrievers_answers(artifact_dir):
    cfg = ServeConfig(artifacts=str(artifact_dir), embed_batch_size=8, embed_batch_wait_ms=20)
    users = histories(artifact_dir, 24)
    retriever = Retriever(artifact_dir)
    with ServerThread(create_app(cfg)) as server, concurrent.futures.ThreadPoolExecutor(12) as pool:
        server.wait_ready()
        client = httpx.Client(base_url=server.url, timeout=30, limits=httpx.Limits(max_connections=12))
        answers = list(pool.map(lambda h: client.post("/recommend", json={"history": h, "k": 5}).json(), users))
        batches = httpx.get(server.url + "/metrics").text
    for h, answer in zip(users, answers):
        assert [it["item_id"] for it in answer["items"]] == [r["item_id"] for r in retriever.recommend(h, k=5)]
    counts = [line for line in batches.splitlines() if line.startswith("towerrec_embed_batch_size_count")]
    sums = [line for line in batches.splitlines() if line.startswith("towerrec_embed_batch_size_sum")]
    n_batches, n_users = float(counts[0].split()[-1]), float(sums[0].split()[-1])
    assert n_users == len(users) and n_batches < len(users)  # some requests shared a forward pass


@pytest.mark.parametrize("bad", [(), (1, 2, 3, 4), (-1,)])
def test_gc_thresholds_are_checked(artifact_dir, bad):
    assert ServeConfig(artifacts=str(artifact_dir), gc_thresholds=[10, 5]).gc_thresholds == (10, 5)
    assert ServeConfig(artifacts=str(artifact_dir), gc_thresholds=None).gc_thresholds is None
    with pytest.raises(ValueError, match="service.gc_thresholds"):
        ServeConfig(artifacts=str(artifact_dir), gc_thresholds=bad)


def test_lm_stages_and_milvus_searches_stay_off_the_event_loop(artifact_dir):
    from types import SimpleNamespace

    from towerrec.index import IndexConfig
    from towerrec.serving.service import RecommendationService

    def on_loop(index=None, **req):
        cfg = ServeConfig(artifacts=str(artifact_dir), **({"index": index} if index else {}))
        request = SimpleNamespace(**{"rerank": False, "explain": False, **req})
        return RecommendationService.on_event_loop(SimpleNamespace(cfg=cfg), request)

    assert on_loop() and not on_loop(rerank=True) and not on_loop(explain=True)
    assert not on_loop(IndexConfig(backend="milvus"))  # network calls: a handler thread waits for them


def test_a_reload_releases_memory_after_the_swap(artifact_dir, monkeypatch):
    """A reload's freed heap stayed with the process (a 10-minute soak with 10 reloads grew 16%): after the swap
    the service runs `state.release_memory`."""
    import towerrec.serving.service as service_module

    released = threading.Event()
    monkeypatch.setattr(service_module, "release_memory", released.set)
    service = service_module.RecommendationService(ServeConfig(artifacts=str(artifact_dir), embed_batch_size=1))
    service.release_delay_s = 0.0
    try:
        service.load()
        assert not released.is_set()
        service.reload()
        assert released.wait(10)
    finally:
        service.close()


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_release_memory_hands_freed_heap_pages_back():
    from towerrec.serving.state import release_memory

    def rss_mib() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    release_memory()
    before = rss_mib()
    blocks = [np.ones(12_000) for _ in range(2000)]  # ~96 KB each, under glibc's mmap threshold: the heap
    pinned = np.ones(12_000)  # allocated last, so the heap's top cannot shrink when the rest is freed
    del blocks
    held = rss_mib() - before
    release_memory()
    assert held > 100 and rss_mib() - before < held / 2, (held, rss_mib() - before)
    del pinned
