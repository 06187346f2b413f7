"""serve.py with index.backend=milvus (Milvus Lite): the same /recommend and /similar-items answers as the FAISS
backend under the same filters, /readyz says where it searches, a reload of an artifact that was not loaded into
Milvus is refused naming the command that loads it (the served one stays), and a vector database that stops
answering is a 503, not a 500."""

from __future__ import annotations

import shutil

import httpx
import pandas as pd
import pytest
from helpers.milvus import milvus_cfg, require_milvus_lite
from helpers.serve import ServerThread, export_tiny_artifact

from towerrec.artifact import Artifact
from towerrec.artifact.format import USERS_FILE
from towerrec.artifact.milvus import connect, load_into_milvus
from towerrec.artifact.update import remove_items
from towerrec.index import IndexConfig
from towerrec.serving import ServeConfig, create_app

TOKEN = "test-token-123"

pytestmark = pytest.mark.usefixtures("one_thread_faiss")


@pytest.fixture(scope="module")
def served(tiny_split, tmp_path_factory):
    """(artifact dir, Milvus settings): a tiny artifact loaded into a fresh Milvus Lite file."""
    require_milvus_lite(tmp_path_factory)
    root = tmp_path_factory.mktemp("milvus_serve")
    path = export_tiny_artifact(root / "artifact", tiny_split)
    cfg = milvus_cfg(root)
    load_into_milvus(Artifact.load(path), cfg, progress=False)
    return path, cfg


def serve_cfg(path, milvus=None) -> ServeConfig:
    index = IndexConfig() if milvus is None else IndexConfig(backend="milvus", milvus=milvus)
    return ServeConfig(artifacts=str(path), reload_token=TOKEN, worker_threads=4, index=index)


def requests(path) -> list[tuple[str, dict]]:
    art = Artifact.load(path)
    users = pd.read_parquet(path / USERS_FILE)
    user, history = str(users.loc[0, "user_id"]), [str(i) for i in users.loc[1, "items"]]
    category = art.items["category"].iloc[0].split(" > ")[0]
    item = art.items["item_id"].iloc[3]
    return [("/recommend", {"user_id": user, "k": 8}),
            ("/recommend", {"history": history, "k": 6, "filters": {"category": category}}),
            ("/recommend", {"user_id": user, "k": 5, "filters": {"price_max": 80.0, "exclude_seen": True}}),
            ("/recommend", {"history": history, "query": "camera bag", "k": 5,
                            "filters": {"category": category, "price_min": 10.0, "price_max": 300.0}}),
            ("/recommend", {"history": history, "k": 5, "filters": {"price_min": 50.0, "price_max": 10.0}}),
            ("/similar-items", {"item_id": item, "k": 5, "filters": {"category": category}})]


def test_milvus_backend_answers_as_faiss_does(served):
    path, milvus = served
    answers = {}
    for name, cfg in (("faiss", serve_cfg(path)), ("milvus", serve_cfg(path, milvus))):
        with ServerThread(create_app(cfg)) as srv:
            ready = srv.wait_ready()
            answers[name] = [httpx.post(srv.url + url, json=body, timeout=30).json() for url, body in requests(path)]
            answers[name + "_ready"] = ready["artifact"]["search"]
    assert answers["faiss_ready"] == "faiss"
    assert answers["milvus_ready"] == f"milvus {milvus.uri}/{milvus.collection}"
    for want, got in zip(answers["faiss"], answers["milvus"]):
        assert [it["item_id"] for it in got["items"]] == [it["item_id"] for it in want["items"]]
        assert [it["score"] for it in got["items"]] == pytest.approx([it["score"] for it in want["items"]], abs=1e-5)
    assert all(len(a["items"]) > 0 for a in answers["milvus"][:4]) and answers["milvus"][4]["items"] == []


def test_reload_of_an_unloaded_version_is_refused_and_an_outage_is_a_503(served, tmp_path):
    path, milvus = served
    other = shutil.copytree(path, tmp_path / "other")
    remove_items(other, [Artifact.load(other).items["item_id"].iloc[0]])  # a version Milvus does not hold
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with ServerThread(create_app(serve_cfg(path, milvus))) as srv:
        old = srv.wait_ready()["artifact"]["version"]
        r = httpx.post(srv.url + "/admin/reload", json={"path": str(other)}, headers=auth, timeout=60)
        assert r.status_code == 422
        assert "python -m towerrec.artifact milvus" in r.json()["detail"][0]["msg"]
        assert httpx.get(srv.url + "/readyz").json()["artifact"]["version"] == old
        body = requests(path)[1][1]
        assert httpx.post(srv.url + "/recommend", json=body, timeout=30).status_code == 200
        client = connect(milvus)  # the collection disappears from under the service
        name = client.describe_alias(milvus.collection)["collection_name"]
        client.drop_alias(milvus.collection)
        client.drop_collection(name)
        client.close()
        r = httpx.post(srv.url + "/recommend", json=body, timeout=30)
        assert r.status_code == 503 and r.json()["detail"].startswith(f"Milvus at {milvus.uri}")
    load_into_milvus(Artifact.load(path), milvus, progress=False)  # as the module's other tests found it
