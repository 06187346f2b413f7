"""The recommendation service (towerrec.serving, serve.py) through a REAL uvicorn server on an ephemeral port:
every endpoint, the error paths (422 naming the field, 404, 413, 503), the popularity cold start, filters,
the LM stages with test doubles (a fast deterministic reranker; a deliberately slow one to exercise the
time-budget fallback; explainers whose output is or is not grounded), metrics, and the atomic reload (token,
swap under load, a corrupt artifact refused, SIGHUP to `python serve.py`). A tiny random-init artifact; and
sequence artifacts (with and without the product text path: free-text queries, or 422 naming `query`), served
end to end and swapped in and out by reload under one server."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from helpers.serve import (
    SEQUENCE_MAX_LEN,
    FailingReranker,
    ForeignReranker,
    InventingExplainer,
    ReverseReranker,
    ServerThread,
    SlowReranker,
    Switch,
    TitleExplainer,
    export_tiny_artifact,
)

from towerrec.artifact import Artifact
from towerrec.artifact.format import ITEMS_FILE, USERS_FILE
from towerrec.artifact.update import add_items, remove_items
from towerrec.retrieval import Retriever
from towerrec.serving import LMComponents, ServeConfig, StageSettings, create_app
from towerrec.serving.batching import EmbeddingBatcher
from towerrec.serving.components import BudgetedStage
from towerrec.serving.state import LRUCache, ServiceState
from towerrec.utils.io import sha256_file

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "test-token-123"
LIMITS = dict(max_k=50, max_history=20, max_text_chars=200, max_body_bytes=4096)

pytestmark = pytest.mark.usefixtures("one_thread_faiss")


def make_cfg(path, **overrides) -> ServeConfig:
    """Test settings; the LM stages are off unless a test turns them on (and passes its doubles)."""
    base = dict(artifacts=str(path), reload_token=TOKEN, worker_threads=4, **LIMITS)
    return ServeConfig(**{**base, **overrides})


LM_ON = dict(rerank=StageSettings(enabled=True, candidates=10, budget_ms=500),
             explain=StageSettings(enabled=True, budget_ms=2000, max_items=2))


@pytest.fixture(scope="module")
def artifact_dir(tiny_split, tmp_path_factory) -> Path:
    return export_tiny_artifact(tmp_path_factory.mktemp("serve") / "artifact", tiny_split)


@pytest.fixture(scope="module")
def artifact(artifact_dir) -> Artifact:
    return Artifact.load(artifact_dir)


@pytest.fixture(scope="module")
def retriever(artifact) -> Retriever:
    return Retriever(artifact)


@pytest.fixture(scope="module")
def doubles():
    return {"reranker": Switch(ReverseReranker()), "explainer": Switch(TitleExplainer())}


@pytest.fixture(scope="module")
def server(artifact_dir, doubles):
    components = LMComponents(reranker=doubles["reranker"], make_explainer=lambda items: doubles["explainer"])
    with ServerThread(create_app(make_cfg(artifact_dir, **LM_ON), components=components)) as srv:
        srv.wait_ready()
        srv.client = httpx.Client(base_url=srv.url, timeout=30)
        yield srv
        srv.client.close()


@pytest.fixture(autouse=True)
def _reset_doubles(doubles):
    yield
    for d in doubles.values():
        d.reset()


def user_history(artifact, i: int = 0) -> tuple[str, list[str]]:
    """The i-th known user with at least 3 items: (user id, history item ids)."""
    users = pd.read_parquet(artifact.path / USERS_FILE)
    users = users[users["items"].map(len) >= 3].reset_index(drop=True)
    return str(users.loc[i, "user_id"]), [str(x) for x in users.loc[i, "items"]]


def ids(response_items) -> list[str]:
    return [it["item_id"] for it in response_items]


def post(server, path, body, **kwargs) -> httpx.Response:
    return server.client.post(path, json=body, **kwargs)


# ------------------------------------------------------------------------------------------ health, schema


def test_health_readiness_and_openapi(server, artifact):
    assert server.client.get("/healthz").json() == {"status": "ok"}
    ready = server.client.get("/readyz").json()
    assert ready["ready"] is True and ready["error"] is None
    assert ready["components"] == {"reranker": "loaded", "explainer": "loaded"}
    assert ready["artifact"]["num_items"] == artifact.num_items and ready["artifact"]["known_users"] > 0
    schema = server.client.get("/openapi.json").json()
    assert {"/recommend", "/similar-items", "/describe", "/items/{item_id}", "/healthz", "/readyz", "/metrics",
            "/admin/reload"} <= set(schema["paths"])
    k = schema["components"]["schemas"]["RecommendRequest"]["properties"]["k"]
    assert (k["minimum"], k["maximum"]) == (1, LIMITS["max_k"])  # the configured bound is the published one


# ------------------------------------------------------------------------------------------ recommend


def test_history_request_returns_what_the_retriever_returns(server, artifact, retriever):
    _, history = user_history(artifact, 0)
    body = post(server, "/recommend", {"history": history, "k": 7}).json()
    expected = retriever.recommend(history, k=7)
    assert body["served_by"] == "retrieval" and body["degraded"] is False and body["notes"] == []
    assert ids(body["items"]) == [e["item_id"] for e in expected]
    np.testing.assert_allclose([it["score"] for it in body["items"]], [e["score"] for e in expected], atol=1e-5)
    assert not set(ids(body["items"])) & set(history)  # seen items left out by default
    first, row = body["items"][0], artifact.items.set_index("item_id").loc[body["items"][0]["item_id"]]
    assert (first["title"], first["retrieval_score"], first["lm_score"]) == (row["title"], first["score"], None)
    assert body["artifact"] == server.client.get("/readyz").json()["artifact"]["version"]


def test_known_user_is_served_from_the_stored_history(server, artifact):
    user_id, history = user_history(artifact, 1)
    by_id = post(server, "/recommend", {"user_id": user_id, "k": 5}).json()
    by_history = post(server, "/recommend", {"history": history, "k": 5}).json()
    assert ids(by_id["items"]) == ids(by_history["items"]) and by_id["served_by"] == "retrieval"
    extra = artifact.items["item_id"].iloc[0]  # a session click is appended to the stored history
    combined = post(server, "/recommend", {"user_id": user_id, "history": [extra], "k": 5}).json()
    assert ids(combined["items"]) == ids(post(server, "/recommend", {"history": history + [extra], "k": 5})
                                         .json()["items"])


def test_precomputed_user_vectors_serve_known_users_from_the_cache(artifact_dir, artifact):
    with ServerThread(create_app(make_cfg(artifact_dir, precompute_user_vectors=True))) as srv:
        srv.wait_ready()
        user_id, history = user_history(artifact, 3)
        body = httpx.post(srv.url + "/recommend", json={"user_id": user_id, "k": 5}).json()
        metrics = httpx.get(srv.url + "/metrics").text
        assert 'towerrec_user_vector_cache_total{result="hit"} 1.0' in metrics
        assert "towerrec_user_vector_cache_total{result=\"miss\"}" not in metrics
    with ServerThread(create_app(make_cfg(artifact_dir))) as srv:  # the same answer computed on request
        srv.wait_ready()
        fresh = httpx.post(srv.url + "/recommend", json={"user_id": user_id, "k": 5}).json()["items"]
    assert ids(fresh) == ids(body["items"])  # batched vs single embedding: equal up to float rounding
    np.testing.assert_allclose([it["score"] for it in fresh], [it["score"] for it in body["items"]], atol=1e-5)


def test_query_alone_and_personalized_search(server, artifact, retriever):
    _, history = user_history(artifact, 2)
    query = artifact.items["title"].iloc[3]
    alone = post(server, "/recommend", {"query": query, "k": 5}).json()
    assert alone["served_by"] == "retrieval"
    assert ids(alone["items"]) == [e["item_id"] for e in retriever.recommend([], k=5, text=query)]
    both = post(server, "/recommend", {"history": history, "query": query, "k": 5}).json()
    assert ids(both["items"]) == [e["item_id"] for e in retriever.recommend(history, k=5, text=query)]


def test_unknown_history_items_are_ignored_and_noted(server, artifact):
    _, history = user_history(artifact, 0)
    body = post(server, "/recommend", {"history": history + ["no-such-item"], "k": 5}).json()
    assert ids(body["items"]) == ids(post(server, "/recommend", {"history": history, "k": 5}).json()["items"])
    assert len(body["notes"]) == 1 and "'no-such-item'" in body["notes"][0]
    only_unknown = post(server, "/recommend", {"history": ["no-such-item"], "k": 3}).json()
    assert only_unknown["served_by"] == "popularity"  # nothing usable left: cold start


def test_cold_start_is_popularity_flagged(server, artifact):
    body = post(server, "/recommend", {"k": 6, "rerank": True}).json()
    assert body["served_by"] == "popularity" and body["degraded"] is False
    assert any("rerank skipped" in n for n in body["notes"])
    order = np.argsort(-artifact.popularity, kind="stable")[:6]
    assert ids(body["items"]) == artifact.items["item_id"].iloc[order].tolist()
    assert [it["score"] for it in body["items"]] == [float(c) for c in artifact.popularity[order]]
    assert all(it["retrieval_score"] is None for it in body["items"])
    category = artifact.items["category"].iloc[order[-1]].split(" > ")[0]
    for filters in ({"category": category}, {"category": category, "price_max": 1e9}):
        filtered = post(server, "/recommend", {"k": 4, "filters": filters}).json()
        assert filtered["served_by"] == "popularity" and len(filtered["items"]) == 4
        assert all(it["category"].startswith(category) for it in filtered["items"]), filters


# ------------------------------------------------------------------------------------------ filters


def brute_force(artifact, retriever, history, k, allowed=None, exclude_seen=True) -> list[str]:
    vec = retriever.embed_user(history)
    scores = artifact.embeddings @ vec
    keep = np.ones(artifact.num_items, dtype=bool) if allowed is None else allowed.copy()
    if exclude_seen:
        keep[artifact.position_of_item.get_indexer(history)] = False
    cand = np.flatnonzero(keep)
    return artifact.items["item_id"].iloc[cand[np.argsort(-scores[cand], kind="stable")[:k]]].tolist()


def test_category_price_and_seen_filters(server, artifact, retriever):
    _, history = user_history(artifact, 0)
    category = artifact.items["category"].iloc[0].split(" > ")[0]
    body = post(server, "/recommend", {"history": history, "k": 5, "filters": {"category": category}}).json()
    assert body["items"] and all(it["category"].startswith(category) for it in body["items"])
    assert ids(body["items"]) == [e["item_id"] for e in retriever.recommend(history, k=5, category=category)]

    prices = artifact.items["price"].to_numpy()
    lo, hi = np.nanpercentile(prices, [25, 60])
    body = post(server, "/recommend", {"history": history, "k": 6, "filters": {"price_min": lo,
                                                                                "price_max": hi}}).json()
    assert all(lo <= it["price"] <= hi for it in body["items"])
    with np.errstate(invalid="ignore"):
        allowed = (prices >= lo) & (prices <= hi)
    assert ids(body["items"]) == brute_force(artifact, retriever, history, 6, allowed)

    with_seen = post(server, "/recommend", {"history": history, "k": 8, "filters": {"exclude_seen": False}}).json()
    assert ids(with_seen["items"]) == brute_force(artifact, retriever, history, 8, exclude_seen=False)

    nothing = post(server, "/recommend", {"history": history, "filters": {"category": "No Such Category"}}).json()
    assert nothing["items"] == [] and nothing["served_by"] == "retrieval"
    empty = post(server, "/recommend", {"history": history, "filters": {"price_min": 10, "price_max": 5}}).json()
    assert empty["items"] == [] and "price_min (10) is above filters.price_max (5)" in empty["notes"][0]


def test_over_fetch_path_with_a_price_mask_equals_exact_scoring(artifact_dir, retriever):
    """The service's filtered search is Retriever.search with a mask: exact scoring and index over-fetch agree."""
    state = ServiceState.load(artifact_dir, warm=False)
    table = state.table
    vec = retriever.embed_user([table.products[i]["item_id"] for i in (1, 2, 3)])
    mask = ~np.isnan(table.prices) & (table.prices < np.nanmedian(table.prices) * 1.5)
    exclude = [{int(table.row_ids[1])}]
    exact = state.retriever.search(vec[None], 7, exclude, mask=mask)[0]
    state.retriever.exact_filter_max, state.retriever.exact_filter_fraction = 0, 0.0  # force the index path
    over_fetched = state.retriever.search(vec[None], 7, exclude, mask=mask)[0]
    assert [r for r, _ in over_fetched] == [r for r, _ in exact] and len(exact) == 7
    positions = table.positions_of_rows([r for r, _ in exact])
    assert all(mask[p] and p != 1 for p in positions)


def test_price_and_category_filters_together(server, artifact, retriever):
    _, history = user_history(artifact, 0)
    category = artifact.items["category"].iloc[0].split(" > ")[0]
    prices = artifact.table.prices
    hi = float(np.nanmedian(prices))
    body = post(server, "/recommend", {"history": history, "k": 4, "filters": {"category": category,
                                                                                "price_max": hi}}).json()
    cats = artifact.items["category"]
    with np.errstate(invalid="ignore"):
        allowed = ((cats == category) | cats.str.startswith(category + " > ")).to_numpy() & (prices <= hi)
    assert body["items"] and ids(body["items"]) == brute_force(artifact, retriever, history, 4, allowed)


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("body, loc", [
    ({"history": ["sku"], "k": 0}, ["body", "k"]),
    ({"history": ["sku"], "k": LIMITS["max_k"] + 1}, ["body", "k"]),
    ({"history": ["sku"], "k": "many"}, ["body", "k"]),
    ({"history": ["sku"] * (LIMITS["max_history"] + 1)}, ["body", "history"]),
    ({"history": [""]}, ["body", "history", 0]),
    ({"query": "x" * (LIMITS["max_text_chars"] + 1)}, ["body", "query"]),
    ({"histroy": ["sku"]}, ["body", "histroy"]),
    ({"filters": {"price_min": -1}}, ["body", "filters", "price_min"]),
    ({"filters": {"exclude_seem": False}}, ["body", "filters", "exclude_seem"]),
    ({"user_id": 12}, ["body", "user_id"]),
])
def test_invalid_input_is_422_naming_the_field(server, body, loc):
    r = post(server, "/recommend", body)
    assert r.status_code == 422
    assert loc in [d["loc"] for d in r.json()["detail"]], r.json()


def test_malformed_json_and_bad_path_parameters_are_422(server):
    r = server.client.post("/recommend", content=b'{"k": 3,', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][0] == "body"
    r = server.client.post("/recommend", content=b'\xff\xfe{', headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["detail"]  # not UTF-8: documented as 400
    assert server.client.get("/items/" + "x" * 300).status_code == 422
    r = post(server, "/similar-items", {"item_id": "sku", "k": 0})
    assert r.status_code == 422 and ["body", "k"] in [d["loc"] for d in r.json()["detail"]]


def test_unknown_ids_are_404_with_a_message(server, artifact):
    item = artifact.items["item_id"].iloc[0]
    for path, body in (("/recommend", {"user_id": "u_nobody"}), ("/similar-items", {"item_id": "nope"}),
                       ("/describe", {"item_id": "nope"}), ("/describe", {"item_id": item, "user_id": "u_nobody"})):
        r = post(server, path, body)
        assert r.status_code == 404, (path, r.text)
        assert "u_nobody" in r.json()["detail"] or "nope" in r.json()["detail"]
    r = server.client.get("/items/nope")
    assert r.status_code == 404 and "'nope'" in r.json()["detail"]


def test_request_bodies_over_the_limit_are_413(server):
    big = {"history": ["sku"], "query": "x" * 5000}
    r = post(server, "/recommend", big)  # Content-Length says it all
    assert r.status_code == 413 and "4096-byte limit" in r.json()["detail"]

    def chunks():  # no Content-Length: counted while streaming
        for _ in range(10):
            yield b" " * 1000

    r = server.client.post("/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert post(server, "/recommend", {"k": 2}).status_code == 200  # the server is fine afterwards


# ------------------------------------------------------------------------------------------ similar, items


def test_similar_items_use_product_vectors_only(server, artifact, retriever):
    item = artifact.items["item_id"].iloc[5]
    body = post(server, "/similar-items", {"item_id": item, "k": 4}).json()
    assert ids(body["items"]) == [e["item_id"] for e in retriever.similar_items(item, k=4)]
    assert item not in ids(body["items"]) and body["item_id"] == item
    category = artifact.items["category"].iloc[5].split(" > ")[0]
    body = post(server, "/similar-items", {"item_id": item, "k": 3, "filters": {"category": category,
                                                                               "price_max": 1e6}}).json()
    assert all(it["category"].startswith(category) and it["price"] is not None for it in body["items"])


def test_item_lookup(server, artifact):
    row = artifact.items.iloc[7]
    body = server.client.get(f"/items/{row['item_id']}").json()
    assert (body["item_id"], body["title"], body["text"]) == (row["item_id"], row["title"], row["text"])
    assert body["popularity"] == int(artifact.popularity[7])


# ------------------------------------------------------------------------------------------ LM stages


def test_rerank_reorders_the_candidates_with_lm_scores(server, artifact, doubles):
    _, history = user_history(artifact, 0)
    retrieval = post(server, "/recommend", {"history": history, "k": 10, "query": "gift"}).json()
    body = post(server, "/recommend", {"history": history, "k": 4, "rerank": True, "query": "gift"}).json()
    assert body["served_by"] == "rerank" and body["degraded"] is False
    # the double prefers the retrieval order reversed: the last of the 10 candidates comes first
    assert ids(body["items"]) == ids(retrieval["items"])[::-1][:4]
    assert [it["lm_score"] for it in body["items"]] == [9.0, 8.0, 7.0, 6.0]
    call = doubles["reranker"].impl.calls[-1]
    assert len(call["candidates"]) == 10 and call["query"] == "gift"
    assert [h["item_id"] for h in call["history"]] == history[-artifact.text.user_max_items:]


def test_slow_rerank_falls_back_to_retrieval_order_flagged_degraded(server, artifact, doubles):
    _, history = user_history(artifact, 0)
    retrieval = post(server, "/recommend", {"history": history, "k": 5}).json()
    slow = SlowReranker(delay=3.0)
    doubles["reranker"].impl = slow
    start = time.perf_counter()
    body = post(server, "/recommend", {"history": history, "k": 5, "rerank": True}).json()
    elapsed = time.perf_counter() - start
    assert body["served_by"] == "degraded" and body["degraded"] is True
    assert ids(body["items"]) == ids(retrieval["items"]) and all(it["lm_score"] is None for it in body["items"])
    assert "500 ms budget" in body["notes"][0]
    assert elapsed < slow.delay  # answered without waiting for the LM
    # the late call still holds the only LM slot: the next request skips the stage at once
    busy = post(server, "/recommend", {"history": history, "k": 5, "rerank": True}).json()
    assert busy["served_by"] == "degraded" and "busy" in busy["notes"][0]
    assert slow.finished.wait(10)
    metrics = server.client.get("/metrics").text
    assert re.search(r'towerrec_stage_fallbacks_total\{reason="timeout",stage="rerank"\} [1-9]', metrics)
    assert re.search(r'towerrec_stage_fallbacks_total\{reason="busy",stage="rerank"\} [1-9]', metrics)


def test_failing_rerank_degrades_instead_of_failing(server, artifact, doubles):
    doubles["reranker"].impl = FailingReranker()
    _, history = user_history(artifact, 0)
    r = post(server, "/recommend", {"history": history, "k": 3, "rerank": True})
    assert r.status_code == 200 and r.json()["served_by"] == "degraded" and "failed" in r.json()["notes"][0]


@pytest.mark.parametrize("change", ForeignReranker.CHANGES)
def test_rerank_returning_other_candidates_is_ignored(server, artifact, doubles, change):
    """The LM's answer is an order over the candidates it was given: anything but a permutation of their
    positions (with scores for each) is refused, the retrieval order served and flagged degraded."""
    _, history = user_history(artifact, 0)
    retrieval = post(server, "/recommend", {"history": history, "k": 3}).json()
    doubles["reranker"].impl = ForeignReranker(change)
    r = post(server, "/recommend", {"history": history, "k": 3, "rerank": True})
    assert r.status_code == 200 and r.json()["served_by"] == "degraded" and r.json()["degraded"] is True
    assert "failed" in r.json()["notes"][0]
    assert ids(r.json()["items"]) == ids(retrieval["items"])
    assert all(it["lm_score"] is None for it in r.json()["items"])


def test_explanations_are_shown_only_when_grounded(server, artifact, doubles):
    _, history = user_history(artifact, 0)
    body = post(server, "/recommend", {"history": history, "k": 3, "explain": True}).json()
    first, second, third = body["items"]
    assert first["explanation"] == {"text": f"{first['title']} goes with {artifact.items.set_index('item_id').loc[history[-1], 'title']}.",
                                    "grounded": True, "attempts": 1}
    assert second["explanation"]["grounded"] and third["explanation"] is None  # max_items=2
    doubles["explainer"].impl = InventingExplainer()
    body = post(server, "/recommend", {"history": history, "k": 2, "explain": True}).json()
    assert [it["explanation"] for it in body["items"]] == [{"text": None, "grounded": False, "attempts": 3}] * 2


def test_describe_is_grounded_or_refused(server, artifact, doubles):
    item = artifact.items.iloc[4]
    user_id, _ = user_history(artifact, 0)
    body = post(server, "/describe", {"item_id": item["item_id"], "user_id": user_id}).json()
    assert body["text"] == f"{item['title']}: picked for you." and body["refused"] is False
    doubles["explainer"].impl = InventingExplainer()
    body = post(server, "/describe", {"item_id": item["item_id"]}).json()
    assert (body["text"], body["grounded"], body["refused"], body["attempts"]) == (None, False, True, 3)


def test_metrics_count_requests_latencies_errors_and_paths(server):
    post(server, "/recommend", {"k": 2})
    server.client.get("/items/nope")
    post(server, "/recommend", {"query": "y" * 5000})
    text = server.client.get("/metrics").text
    assert re.search(r'towerrec_http_requests_total\{method="POST",route="/recommend",status="200"\} [1-9]', text)
    assert re.search(r'towerrec_http_errors_total\{route="/items/\{item_id\}",status="404"\} [1-9]', text)
    assert re.search(r'towerrec_http_errors_total\{route="/recommend",status="413"\} [1-9]', text)
    assert re.search(r'towerrec_http_request_duration_seconds_count\{route="/recommend"\} [1-9]', text)
    assert re.search(r'towerrec_recommendations_total\{served_by="popularity"\} [1-9]', text)
    assert "towerrec_artifact_items 80.0" in text and "towerrec_ready 1.0" in text


# ------------------------------------------------------------------------------------------ other setups


def test_service_without_the_lm_degrades_rerank_and_refuses_describe(artifact_dir, artifact):
    cfg = make_cfg(artifact_dir)
    with ServerThread(create_app(cfg)) as srv:
        assert srv.wait_ready()["components"] == {"reranker": "disabled", "explainer": "disabled"}
        _, history = user_history(artifact, 0)
        body = httpx.post(srv.url + "/recommend", json={"history": history, "rerank": True, "explain": True}).json()
        assert body["served_by"] == "degraded" and all(it["explanation"] is None for it in body["items"])
        assert all("not enabled" in n for n in body["notes"]) and len(body["notes"]) == 2
        r = httpx.post(srv.url + "/describe", json={"item_id": history[0]})
        assert r.status_code == 503 and "explain.enabled" in r.json()["detail"]


def test_not_ready_while_the_artifact_cannot_be_loaded(tmp_path):
    cfg = make_cfg(tmp_path / "missing", exit_on_load_failure=False)
    with ServerThread(create_app(cfg)) as srv:
        assert httpx.get(srv.url + "/healthz").status_code == 200
        for _ in range(200):
            ready = httpx.get(srv.url + "/readyz")
            if ready.json()["error"]:
                break
            time.sleep(0.05)
        assert ready.status_code == 503 and "missing" in ready.json()["error"]
        r = httpx.post(srv.url + "/recommend", json={"k": 2})
        assert r.status_code == 503 and r.headers["retry-after"] and "failed to load" in r.json()["detail"]


# ------------------------------------------------------------------------------------------ reload


def snapshot(directory: Path) -> dict:
    return {str(p.relative_to(directory)): (p.stat().st_mtime_ns, sha256_file(p))
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def reload_setup(artifact_dir, tmp_path):
    """(served copy A, copy B with one product added, cfg) — B has a different version and one more item."""
    a = Path(shutil.copytree(artifact_dir, tmp_path / "a"))
    b = Path(shutil.copytree(artifact_dir, tmp_path / "b"))
    new = pd.DataFrame([{"item_id": "sku-new", "title": "Brand new thing", "brand": "Novo", "category": "New",
                         "description": "", "price": 1.0}])
    add_items(b, new)
    return a, b, make_cfg(a)


def test_reload_needs_the_token(reload_setup):
    a, _, cfg = reload_setup
    with ServerThread(create_app(cfg)) as srv:
        srv.wait_ready()
        r = httpx.post(srv.url + "/admin/reload")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert httpx.post(srv.url + "/admin/reload", headers={"Authorization": "Bearer wrong-token"}).status_code == 403
    with ServerThread(create_app(make_cfg(a, reload_token=None))) as srv:
        srv.wait_ready()
        r = httpx.post(srv.url + "/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 403 and "disabled" in r.json()["detail"]


def test_reload_swaps_atomically_while_serving(reload_setup, artifact):
    a, b, cfg = reload_setup
    before = snapshot(a)
    _, history = user_history(artifact, 0)
    with ServerThread(create_app(cfg)) as srv:
        old = srv.wait_ready()["artifact"]["version"]
        stop, seen, failures = threading.Event(), [], []

        def hammer():
            with httpx.Client(base_url=srv.url, timeout=30) as client:
                while not stop.is_set():
                    r = client.post("/recommend", json={"history": history, "k": 5})
                    item = client.get("/items/sku-new")
                    if r.status_code != 200 or item.status_code not in (200, 404):
                        failures.append((r.status_code, item.status_code))
                    else:
                        seen.append((r.json()["artifact"], item.status_code, item.json().get("artifact")))

        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        r = httpx.post(srv.url + "/admin/reload", json={"path": str(b)}, headers={"Authorization": f"Bearer {TOKEN}"},
                       timeout=60)
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join()
        assert r.status_code == 200, r.text
        new = r.json()["artifact"]["version"]
        assert r.json()["previous"] == old and new != old and r.json()["artifact"]["num_items"] == 81
        assert not failures and seen
        assert {v for v, _, _ in seen} == {old, new}  # requests ran on both sides of the swap
        for _, status, version in seen:  # the new product exists exactly in the new artifact, never half-way
            assert (status == 200) == (version == new)
        assert httpx.get(srv.url + "/items/sku-new").json()["artifact"] == new
        assert httpx.get(srv.url + "/readyz").json()["artifact"]["version"] == new
        assert re.search(r'towerrec_reloads_total\{outcome="ok"\} 1.0', httpx.get(srv.url + "/metrics").text)
    assert snapshot(a) == before  # served read-only: nothing in the artifact was written


def test_reload_of_a_corrupt_artifact_keeps_the_served_one(reload_setup):
    a, b, cfg = reload_setup
    with open(b / ITEMS_FILE, "r+b") as f:  # flip bytes: the checksum no longer matches
        f.seek(100)
        f.write(b"\x00\x01\x02\x03")
    with ServerThread(create_app(cfg)) as srv:
        old = srv.wait_ready()["artifact"]["version"]
        auth = {"Authorization": f"Bearer {TOKEN}"}
        r = httpx.post(srv.url + "/admin/reload", json={"path": str(b)}, headers=auth, timeout=60)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "path"]
        assert "items.parquet" in r.json()["detail"][0]["msg"] and "checksum" in r.json()["detail"][0]["msg"]
        assert httpx.get(srv.url + "/readyz").json()["artifact"]["version"] == old
        assert httpx.post(srv.url + "/recommend", json={"k": 3}).status_code == 200
        r = httpx.post(srv.url + "/admin/reload", json={"path": str(b / "nowhere")}, headers=auth, timeout=60)
        assert r.status_code == 422 and "nowhere" in r.json()["detail"][0]["msg"]


@pytest.mark.slow
def test_serve_py_starts_and_reloads_on_sighup(artifact_dir, tmp_path):
    served = Path(shutil.copytree(artifact_dir, tmp_path / "artifact"))
    removed = pd.read_parquet(served / ITEMS_FILE)["item_id"].iloc[0]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "serve.py"), f"artifacts={served}", "port=0",
                             f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        url = None
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            lines.append(line)
            m = re.search(r"Uvicorn running on (http://\S+)", line)
            url = m and m.group(1)
        assert url, "".join(lines)
        threading.Thread(target=lambda: [lines.append(x) for x in proc.stdout], daemon=True).start()
        while httpx.get(url + "/readyz").status_code != 200:
            time.sleep(0.1)
        old = httpx.get(url + "/readyz").json()["artifact"]["version"]
        assert httpx.get(f"{url}/items/{removed}").status_code == 200
        remove_items(served, [removed])  # a new version renamed into place
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while httpx.get(url + "/readyz").json()["artifact"]["version"] == old and time.monotonic() < deadline:
            time.sleep(0.1)
        assert httpx.get(url + "/readyz").json()["artifact"]["version"] != old
        assert httpx.get(f"{url}/items/{removed}").status_code == 404
        proc.send_signal(signal.SIGTERM)  # graceful shutdown; uvicorn then re-raises the signal it caught
        assert proc.wait(30) in (0, -signal.SIGTERM)
        time.sleep(0.2)
        assert "Application shutdown complete" in "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_run_exits_non_zero_when_the_first_load_fails(tmp_path, caplog):
    """serve.py's run(): the background load fails, the server stops by itself and reports failure."""
    import faiss
    import torch

    from towerrec.serving.server import run

    threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    try:
        assert run(make_cfg(tmp_path / "missing", port=0, log_level="warning")) == 1
    finally:  # run() sets the process's thread counts for serving
        torch.set_num_threads(threads[0])
        faiss.omp_set_num_threads(threads[1])
    assert "manifest.json: missing" in caplog.text


# ------------------------------------------------------------------------------------------ sequence artifacts


@pytest.fixture(scope="module", params=["text", "ids"])
def seq(request, sequence_artifacts):
    """A real server over a tiny sequence artifact (`text`: with the product text path, `ids`: id-only), with
    a Retriever over the same artifact to compare with."""
    path = sequence_artifacts[request.param]
    app = create_app(make_cfg(path))
    with ServerThread(app) as srv:
        srv.ready, srv.service = srv.wait_ready(), app.state.service
        srv.client = httpx.Client(base_url=srv.url, timeout=30)
        srv.kind, srv.retriever = request.param, Retriever(path)
        yield srv
        srv.client.close()


def long_user(artifact) -> tuple[str, list[str]]:
    """A known user whose history is longer than the sequence tower's window."""
    users = pd.read_parquet(artifact.path / USERS_FILE)
    row = users[users["items"].map(len) > SEQUENCE_MAX_LEN + 1].iloc[0]
    return str(row["user_id"]), [str(x) for x in row["items"]]


def cache_lookups(client) -> dict[str, float]:
    text = client.get("/metrics").text
    return {result: float(m.group(1)) if (m := re.search(
        rf'towerrec_user_vector_cache_total\{{result="{result}"\}} (\S+)', text)) else 0.0
            for result in ("hit", "miss")}


def assert_same_ranking(got: list[dict], expected: list[dict]) -> None:
    assert ids(got) == [e["item_id"] for e in expected]
    np.testing.assert_allclose([it["score"] for it in got], [e["score"] for e in expected], atol=1e-5)


def test_sequence_artifact_serves_known_users_and_new_histories(seq):
    art, retriever = seq.retriever.artifact, seq.retriever
    info = seq.ready["artifact"]
    assert (info["model"], info["text"], info["num_items"]) == ("sequence", seq.kind == "text", art.num_items)
    user_id, history = long_user(art)
    by_id = post(seq, "/recommend", {"user_id": user_id, "k": 5}).json()
    assert by_id["served_by"] == "retrieval" and by_id["notes"] == []
    assert_same_ranking(by_id["items"], retriever.recommend(history, k=5))
    assert not set(ids(by_id["items"])) & set(history)  # the whole history is seen, not only the window
    new = art.items["item_id"].iloc[[3, 8, 1]].tolist()  # a history no user has
    body = post(seq, "/recommend", {"history": new, "k": 6}).json()
    assert_same_ranking(body["items"], retriever.recommend(new, k=6))
    combined = post(seq, "/recommend", {"user_id": user_id, "history": new[:1], "k": 5}).json()
    assert_same_ranking(combined["items"], retriever.recommend(history + new[:1], k=5))
    noted = post(seq, "/recommend", {"history": [*new, "no-such-item"], "k": 6}).json()
    assert ids(noted["items"]) == ids(body["items"]) and "'no-such-item'" in noted["notes"][0]
    assert post(seq, "/recommend", {"k": 3}).json()["served_by"] == "popularity"


def test_sequence_artifact_query_is_the_newest_element_or_422_when_id_only(seq):
    retriever = seq.retriever
    _, history = long_user(retriever.artifact)
    query = retriever.artifact.items["title"].iloc[3]
    plain = post(seq, "/recommend", {"history": history, "k": 5}).json()
    r = post(seq, "/recommend", {"history": history, "query": query, "k": 5})
    alone = post(seq, "/recommend", {"query": query, "k": 5})
    if seq.kind == "text":
        assert r.status_code == 200 and r.json()["served_by"] == "retrieval"
        assert_same_ranking(r.json()["items"], retriever.recommend(history, k=5, text=query))
        assert [(it["item_id"], it["score"]) for it in r.json()["items"]] != \
            [(it["item_id"], it["score"]) for it in plain["items"]]  # the query changes the user vector
        assert alone.status_code == 200
        assert_same_ranking(alone.json()["items"], retriever.recommend([], k=5, text=query))
    else:
        for answer in (r, alone):
            assert answer.status_code == 422, answer.text
            (detail,) = answer.json()["detail"]
            assert detail["loc"] == ["body", "query"] and "id-only" in detail["msg"]
    blank = post(seq, "/recommend", {"history": history, "query": "   ", "k": 5})  # no query at all
    assert blank.status_code == 200 and ids(blank.json()["items"]) == ids(plain["items"])
    assert post(seq, "/recommend", {"history": history, "k": 5}).json() == plain  # the server is fine


def test_sequence_artifact_similar_items_and_lookup(seq):
    art, retriever = seq.retriever.artifact, seq.retriever
    item = art.items["item_id"].iloc[5]
    body = post(seq, "/similar-items", {"item_id": item, "k": 4}).json()
    assert_same_ranking(body["items"], retriever.similar_items(item, k=4))
    found = seq.client.get(f"/items/{item}").json()
    assert (found["item_id"], found["text"]) == (item, art.items["text"].iloc[5])


def test_sequence_user_vectors_are_cached_by_the_window_and_the_query(seq):
    art = seq.retriever.artifact
    _, history = long_user(art)
    older = art.items["item_id"].iloc[0]
    keep_seen = {"exclude_seen": False}  # the same products whatever the history outside the window
    before = cache_lookups(seq.client)
    first = post(seq, "/recommend", {"history": history, "k": 5, "filters": keep_seen}).json()
    again = post(seq, "/recommend", {"history": history, "k": 5, "filters": keep_seen}).json()
    # an older item outside the newest max_len changes nothing the tower reads: the same cached vector
    padded = post(seq, "/recommend", {"history": [older, *history], "k": 5, "filters": keep_seen}).json()
    after = cache_lookups(seq.client)
    assert first == again == padded
    assert after["hit"] - before["hit"] >= 2  # (the first may hit a vector an earlier test cached)
    assert_same_ranking(first["items"], seq.retriever.recommend([older, *history], k=5, exclude_seen=False))
    state = seq.service.holder.current
    key = state.user_key(art.table.positions_of_items(history))
    assert key == (tuple(art.table.positions_of_items(history[-SEQUENCE_MAX_LEN:]).tolist()), None)
    np.testing.assert_allclose(state.user_vectors.get(key), seq.retriever.embed_user(history), atol=1e-6)
    if seq.kind == "text":  # the query is part of the key, whitespace-normalised
        before = cache_lookups(seq.client)
        a = post(seq, "/recommend", {"history": history, "query": "a light tent", "k": 5}).json()
        b = post(seq, "/recommend", {"history": history, "query": "  a light\ttent ", "k": 5}).json()
        other = post(seq, "/recommend", {"history": history, "query": "a heavy tent", "k": 5}).json()
        after = cache_lookups(seq.client)
        assert a == b and other["items"] != a["items"]
        assert after["hit"] - before["hit"] >= 1 and after["miss"] - before["miss"] >= 1


@pytest.mark.parametrize("kind", ["text", "ids"])
def test_sequence_precomputed_user_vectors_serve_known_users_from_the_cache(sequence_artifacts, kind):
    path = sequence_artifacts[kind]
    art = Artifact.load(path)
    user_id, history = long_user(art)
    with ServerThread(create_app(make_cfg(path, precompute_user_vectors=True))) as srv:
        srv.wait_ready()
        body = httpx.post(srv.url + "/recommend", json={"user_id": user_id, "k": 5}).json()
        metrics = httpx.get(srv.url + "/metrics").text
        assert 'towerrec_user_vector_cache_total{result="hit"} 1.0' in metrics
        assert 'towerrec_user_vector_cache_total{result="miss"}' not in metrics
    assert_same_ranking(body["items"], Retriever(art).recommend(history, k=5))


def test_sequence_openapi_examples_are_answered(seq):
    schema = seq.client.get("/openapi.json").json()
    content = schema["paths"]["/recommend"]["post"]["requestBody"]["content"]["application/json"]
    examples = {name: e["value"] for name, e in content["examples"].items()}
    assert ("query" in str(examples)) == (seq.kind == "text")  # no query where the artifact embeds no text
    for name, body in examples.items():
        answer = post(seq, "/recommend", body)
        assert answer.status_code == 200 and answer.json()["items"], (name, answer.text)


def test_reload_from_a_text_artifact_to_sequence_artifacts_and_back(artifact_dir, artifact, sequence_artifacts,
                                                                   tmp_path):
    """One server: the text two-tower artifact, then the sequence one, the id-only one, and the text one again;
    each answers as its own Retriever does (the item ids are the same split's), queries where it can."""
    served = Path(shutil.copytree(artifact_dir, tmp_path / "text"))
    _, history = long_user(artifact)
    query = artifact.items["title"].iloc[3]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with ServerThread(create_app(make_cfg(served))) as srv, httpx.Client(base_url=srv.url, timeout=60) as client:
        assert srv.wait_ready()["artifact"]["model"] == "two_tower"

        def answers() -> tuple[dict, httpx.Response]:
            return (client.post("/recommend", json={"history": history, "k": 5}).json(),
                    client.post("/recommend", json={"history": history, "query": query, "k": 5}))

        first, first_query = answers()
        assert_same_ranking(first["items"], Retriever(served).recommend(history, k=5))
        for path, model, text in ((sequence_artifacts["text"], "sequence", True),
                                  (sequence_artifacts["ids"], "sequence", False), (served, "two_tower", True)):
            r = client.post("/admin/reload", json={"path": str(path)}, headers=auth)
            assert r.status_code == 200, r.text
            info = r.json()["artifact"]
            assert (info["model"], info["text"], info["path"]) == (model, text, str(path))
            assert client.get("/readyz").json()["artifact"]["version"] == info["version"]
            body, with_query = answers()
            assert body["artifact"] == info["version"]
            retriever = Retriever(path)
            assert_same_ranking(body["items"], retriever.recommend(history, k=5))
            if text:
                assert with_query.status_code == 200
                assert_same_ranking(with_query.json()["items"], retriever.recommend(history, k=5, text=query))
            else:
                assert with_query.status_code == 422 and with_query.json()["detail"][0]["loc"] == ["body", "query"]
        again, again_query = answers()
        for now, before in ((again, first), (again_query.json(), first_query.json())):
            assert ids(now["items"]) == ids(before["items"])
            np.testing.assert_allclose([it["score"] for it in now["items"]],
                                       [it["score"] for it in before["items"]], atol=1e-6)


# ------------------------------------------------------------------------------------------ pieces


def test_serve_config_from_the_hydra_config(tmp_path):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("serve", overrides=[f"artifacts={tmp_path}", "port=9001", "service.max_k=20",
                                          "service.rerank.budget_ms=150"])
        missing = compose("serve")
    sc = ServeConfig.from_cfg(cfg)
    assert (sc.port, sc.max_k, sc.rerank.budget_ms, sc.rerank.enabled, sc.explain.budget_ms) == (9001, 20, 150, False,
                                                                                                5000)
    assert sc.artifacts == str(tmp_path) and isinstance(sc.lm, dict)
    with pytest.raises(ValueError, match="artifacts=PATH"):
        ServeConfig.from_cfg(missing)
    with pytest.raises(ValueError, match=r"unknown service option\(s\) \['max_kk'\]"):
        ServeConfig.from_cfg({"artifacts": "x", "service": {"max_kk": 3}})
    with pytest.raises(ValueError, match=r"unknown service.rerank option"):
        ServeConfig.from_cfg({"artifacts": "x", "service": {"rerank": {"budget": 3}}})


def test_budgeted_stage_times_out_refuses_when_busy_and_reports_errors():
    stage = BudgetedStage("t", max_concurrent=1)
    release = threading.Event()
    assert stage.run(lambda: 42, 1.0).value == 42
    late = stage.run(lambda: release.wait(10), 0.05)
    assert late.reason == "timeout"
    assert stage.run(lambda: 1, 1.0).reason == "busy"  # the late call still holds the slot
    release.set()
    for _ in range(100):
        if stage.run(lambda: 1, 1.0).ok:
            break
        time.sleep(0.01)
    else:
        pytest.fail("the slot was not released when the late call ended")
    held = threading.Event()
    stage.run(lambda: held.wait(10), 0.01)  # times out, keeps the slot until `held` is set
    threading.Timer(0.2, held.set).start()
    queued = stage.run(lambda: "after", 5.0, wait_for_slot=True)  # waits for the slot, within its budget
    assert queued.value == "after" and queued.seconds >= 0.1
    failed = stage.run(lambda: 1 / 0, 1.0)
    assert failed.reason == "error" and "ZeroDivisionError" in failed.error
    stage.shutdown()


@pytest.mark.parametrize("kind", ["two_tower", "sequence"])
def test_embedding_batcher_shares_passes_and_matches_single_calls(kind, retriever, sequence_artifacts):
    retriever = retriever if kind == "two_tower" else Retriever(sequence_artifacts["text"])
    batcher = EmbeddingBatcher(max_batch=8, max_wait_ms=200)
    users = [(np.array([i, i + 1]), None) for i in range(5)] + [(np.array([2, 5]), "a gift"),
                                                                (np.array([0, 1]), None)]  # one repeat
    results: dict[int, np.ndarray] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, batcher.embed(retriever, *users[i])))
               for i in range(len(users))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert batcher.batches < len(users)  # shared passes (how the 7 users split into batches is up to the threads)
    for i, (positions, query) in enumerate(users):
        np.testing.assert_allclose(results[i], retriever.embed_histories([positions], [query])[0], atol=1e-5)
    # within one batch the same user is embedded once (driven directly: thread timing cannot split it)
    before = batcher.users
    futures = [concurrent.futures.Future() for _ in users]
    batcher._run(retriever, [(((tuple(p.tolist()), q), p, q), f) for (p, q), f in zip(users, futures)])
    assert batcher.users - before == 6
    np.testing.assert_array_equal(futures[0].result(), futures[-1].result())

    class Broken:
        def embed_histories(self, histories, texts=None, batch_size=None):
            raise RuntimeError("tower down")

    with pytest.raises(RuntimeError, match="tower down"):
        batcher.embed(Broken(), [1, 2])
    batcher.close()


def test_lru_cache():
    cache = LRUCache(2)
    cache.put("a", 1), cache.put("b", 2), cache.get("a"), cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c"), len(cache)) == (1, None, 3, 2)
    LRUCache(0).put("a", 1)


def test_openapi_document_is_json_with_examples_from_the_served_artifact(server, artifact):
    r = server.client.get("/openapi.json")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    schema = r.json()
    assert json.loads(json.dumps(schema)) == schema and schema["openapi"].startswith("3.")
    popular = artifact.items["item_id"].iloc[np.argsort(-artifact.popularity, kind="stable")[:3]].tolist()
    content = schema["paths"]["/recommend"]["post"]["requestBody"]["content"]["application/json"]
    examples = {name: e["value"] for name, e in content["examples"].items()}
    assert examples["history"] == {"history": popular[:2], "k": 5} and examples["cold_start"] == {"k": 5}
    assert examples["known_user"]["user_id"] in artifact.users
    item_param = next(p for p in schema["paths"]["/items/{item_id}"]["get"]["parameters"] if p["name"] == "item_id")
    assert item_param["example"] == popular[0]
    for name, body in examples.items():  # every published example is a request the service answers
        answer = post(server, "/recommend", body)
        assert answer.status_code == 200 and answer.json()["items"], (name, answer.text)


def test_the_http_server_does_not_import_lightning(artifact_dir, sequence_artifacts):
    """Serving (app, server, state) and loading an artifact need torch and the towers, never Lightning: text
    and sequence artifacts loaded, and a sequence artifact serving a history with a query through the service."""
    paths = [str(artifact_dir), str(sequence_artifacts["text"]), str(sequence_artifacts["ids"])]
    code = "\n".join([
        "import sys",
        "import towerrec.serving.app, towerrec.serving.server, towerrec.serving.state",
        "from towerrec.serving import RecommendationService, ServeConfig",
        "from towerrec.serving.schemas import request_models",
        "from towerrec.serving.state import ServiceState",
        f"for path in {paths!r}:",
        "    state = ServiceState.load(path)",
        "    assert state.num_items > 0",
        f"service = RecommendationService(ServeConfig(artifacts={paths[1]!r}))",
        "service.load()",
        "item = service.holder.current.table.products[0]['item_id']",
        "req = request_models(service.cfg).RecommendRequest(history=[item], query='a tent', k=3)",
        "assert len(service.recommend(req)['items']) == 3",
        "service.close()",
        "found = sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning'))",
        "assert not found, found",
    ])
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.slow
def test_real_lm_components_with_the_tiny_random_lm(artifact_dir, artifact, tmp_path):
    """The real Reranker and Explainer (towerrec.rerank, rerank.model_path=random_init) built by the default
    factory from the Hydra config, through the real server: rerank, explanations and product copy run."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("serve", overrides=[f"artifacts={artifact_dir}", "rerank.model_path=random_init",
                                          "rerank.device=cpu", "rerank.dtype=float32", "service.rerank.enabled=true",
                                          "service.rerank.budget_ms=60000", "service.explain.enabled=true",
                                          "service.explain.budget_ms=60000", "service.explain.max_items=1",
                                          f"rerank.cache_dir={tmp_path}"])
    sc = ServeConfig.from_cfg(cfg)
    with ServerThread(create_app(sc)) as srv:
        assert srv.wait_ready(timeout=120)["components"] == {"reranker": "loaded", "explainer": "loaded"}
        user_id, history = user_history(artifact, 0)
        plain = httpx.post(srv.url + "/recommend", json={"user_id": user_id, "k": 5}, timeout=120).json()
        body = httpx.post(srv.url + "/recommend", json={"user_id": user_id, "k": 5, "rerank": True, "explain": True,
                                                        "query": "something for the kitchen"}, timeout=120).json()
        assert body["served_by"] == "rerank" and body["degraded"] is False, body["notes"]
        assert all(isinstance(it["lm_score"], float) for it in body["items"])
        # the LM reorders the retrieval candidates (rerank.top_n of them), it does not invent products
        candidates = httpx.post(srv.url + "/recommend", json={"user_id": user_id, "k": 20,
                                                              "query": "something for the kitchen"}).json()
        assert set(ids(body["items"])) <= set(ids(candidates["items"])) and len(plain["items"]) == 5
        explanation = body["items"][0]["explanation"]
        assert explanation is not None and explanation["attempts"] >= 1
        assert explanation["text"] is None or explanation["grounded"]  # shown only when grounded
        assert body["items"][1]["explanation"] is None
        copy = httpx.post(srv.url + "/describe", json={"item_id": history[-1], "user_id": user_id}, timeout=120)
        assert copy.status_code == 200 and copy.json()["refused"] == (copy.json()["text"] is None)
