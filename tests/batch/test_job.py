"""The batch job (towerrec.batch.job): its rows equal the real service's answers (FastAPI under uvicorn) for
sampled users, with filters, seen items, the popularity fallback and an LM reranker (a test double, and the
real `Reranker` of a random-init rerank directory); a job killed after chunk 2 resumes without recomputing
chunks 1-2 and ends equal to an uninterrupted run; a work directory of another job is refused; chunks bound
what is held in memory and the known users are streamed, never loaded whole."""

from __future__ import annotations

import json
import random

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers.serve import ReverseReranker, ServerThread, export_tiny_artifact

from towerrec.artifact import Artifact
from towerrec.batch import BatchError, BatchOptions, recommend_all
from towerrec.rerank.reranker import Reranker, RerankSettings, save_rerank_dir
from towerrec.retrieval.filters import Filters
from towerrec.serving import LMComponents, ServeConfig, StageSettings, create_app

pytestmark = pytest.mark.usefixtures("one_thread_faiss")

CANDIDATES = 10
SAMPLED = 8


@pytest.fixture(scope="module")
def artifact_dir(tiny_split, tmp_path_factory):
    return export_tiny_artifact(tmp_path_factory.mktemp("batch") / "artifact", tiny_split)


@pytest.fixture(scope="module")
def artifacts(artifact_dir, sequence_artifacts):
    return {"two_tower": artifact_dir, "sequence": sequence_artifacts["ids"]}


def serve(path, reranker):
    """A real server over `path` with `reranker` as its LM reranker (a budget no test run reaches)."""
    cfg = ServeConfig(artifacts=str(path), worker_threads=2,
                      rerank=StageSettings(enabled=True, candidates=CANDIDATES, budget_ms=600_000))
    return ServerThread(create_app(cfg, components=LMComponents(reranker=reranker)))


@pytest.fixture(scope="module")
def servers(artifacts):
    """{kind: server} of both artifacts, each with a ReverseReranker."""
    out = {}
    try:
        for kind, path in artifacts.items():
            srv = serve(path, ReverseReranker()).__enter__()
            out[kind] = srv
            srv.wait_ready()
            srv.client = httpx.Client(base_url=srv.url, timeout=60)
        yield out
    finally:
        for srv in out.values():
            srv.__exit__(None, None, None)


def batch_lists(path) -> dict[str, list[tuple[str, float, str]]]:
    """user id -> [(item id, score, served_by)] best first, from a batch output file."""
    table = pq.read_table(path).to_pandas()
    assert (table.groupby("user_id")["rank"].apply(lambda r: list(r) == list(range(1, len(r) + 1)))).all()
    return {u: list(zip(g["item_id"], g["score"], g["served_by"])) for u, g in table.groupby("user_id", sort=False)}


def assert_same(batch: list, answer: dict, where: str) -> None:
    assert [b[0] for b in batch] == [it["item_id"] for it in answer["items"]], where
    np.testing.assert_allclose([b[1] for b in batch], [it["score"] for it in answer["items"]], rtol=1e-5,
                               atol=1e-6, err_msg=where)
    assert {b[2] for b in batch} <= {answer["served_by"]}, where


def a_category(artifact: Artifact) -> str:
    """The top-level category of the most products."""
    return artifact.items["category"].str.split(" > ").str[0].value_counts().index[0]


@pytest.mark.parametrize("kind", ["two_tower", "sequence"])
@pytest.mark.parametrize("case", ["plain", "filtered", "seen kept", "reranked"])
def test_rows_equal_the_service_for_sampled_users(kind, case, artifacts, servers, tmp_path):
    art = Artifact.load(artifacts[kind])
    filters = Filters()
    if case == "filtered":
        filters = Filters(category=a_category(art), price_max=float(np.nanmedian(art.items["price"])) * 3)
    elif case == "seen kept":
        filters = Filters(exclude_seen=False)
    rerank = case == "reranked"
    options = BatchOptions(k=6, chunk_size=16, filters=filters, rerank_candidates=CANDIDATES)
    summary = recommend_all(art, tmp_path / "recs.parquet", options, reranker=ReverseReranker() if rerank else None,
                            progress=False)
    lists = batch_lists(tmp_path / "recs.parquet")
    assert summary.users == len(art.users) == len(lists) and summary.chunks == -(-len(art.users) // 16)
    body_filters = {k: v for k, v in vars(filters).items() if v is not None}
    for user in random.Random(0).sample(sorted(art.users), SAMPLED):
        answer = servers[kind].client.post("/recommend", json={"user_id": user, "k": 6, "filters": body_filters,
                                                               "rerank": rerank}).json()
        assert answer["served_by"] == ("rerank" if rerank else "retrieval") and len(answer["items"]) == 6
        assert_same(lists[user], answer, f"{kind} {case} {user}")
    # the filters hold for every row, not only the sampled users
    table = pq.read_table(tmp_path / "recs.parquet").to_pandas()
    items = art.items.set_index("item_id")
    if case == "filtered":
        shown = items.loc[table["item_id"]]
        assert shown["category"].str.startswith(filters.category).all() and (shown["price"] <= filters.price_max).all()
    seen = [item in set(art.users[u]) for u, item in zip(table["user_id"], table["item_id"])]
    assert any(seen) if case == "seen kept" else not any(seen)
    assert ("reranked" in table.columns) == rerank and (not rerank or table["reranked"].all())


def test_histories_file_users_equal_service_history_requests(artifacts, servers, tmp_path):
    """A file's rows are `{"history": [...]}` requests: unknown ids ignored, no known id -> popularity."""
    art = Artifact.load(artifacts["two_tower"])
    known = sorted(art.users)[:3]
    rows = [{"user_id": f"file-{i}", "history": art.users[u]} for i, u in enumerate(known)]
    rows += [{"user_id": "unknown-only", "history": ["no-such-item"]}, {"user_id": "empty", "history": []},
             {"user_id": "mixed", "history": ["no-such-item", *art.users[known[0]][-2:]]}]
    path = tmp_path / "users.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = recommend_all(art, tmp_path / "recs.parquet", BatchOptions(k=5, chunk_size=2), histories=path,
                            progress=False)
    assert (summary.users, summary.chunks, summary.popularity_users, summary.unknown_ids) == (6, 3, 2, 2)
    lists = batch_lists(tmp_path / "recs.parquet")
    for row in rows:
        answer = servers["two_tower"].client.post("/recommend", json={"history": row["history"], "k": 5}).json()
        assert_same(lists[row["user_id"]], answer, row["user_id"])
    assert {s for _, _, s in lists["empty"]} == {"popularity"}


def test_the_real_reranker_of_a_rerank_directory_equals_the_service(artifact_dir, tmp_path):
    settings = RerankSettings.from_config({"model_path": "random_init", "device": "cpu", "dtype": "float32",
                                           "top_n": 4, "fusion": {"weight": 0.7}})
    rerank_dir = save_rerank_dir(tmp_path / "rerank", settings)
    reranker = Reranker.from_dir(rerank_dir)
    art = Artifact.load(artifact_dir)
    users = sorted(art.users)[:4]
    path = tmp_path / "users.csv"
    path.write_text("user_id,history\n" + "".join(f"{u},{' '.join(art.users[u])}\n" for u in users))
    recommend_all(art, tmp_path / "recs.parquet", BatchOptions(k=5, rerank_candidates=CANDIDATES), histories=path,
                  reranker=reranker, progress=False)
    lists = batch_lists(tmp_path / "recs.parquet")
    changed = 0
    with serve(artifact_dir, reranker) as srv:
        srv.wait_ready()
        for user in users:
            answer = httpx.post(srv.url + "/recommend", json={"user_id": user, "k": 5, "rerank": True},
                                timeout=60).json()
            assert answer["served_by"] == "rerank"
            assert_same(lists[user], answer, user)
            plain = httpx.post(srv.url + "/recommend", json={"user_id": user, "k": 5}, timeout=60).json()
            changed += [it["item_id"] for it in plain["items"]] != [b[0] for b in lists[user]]
    assert changed  # the LM's weight 0.7 reorders some lists: the rerank did something


# ------------------------------------------------------------------------------------------ resume, chunks


class Kill(RuntimeError):
    pass


def test_a_killed_job_resumes_and_equals_an_uninterrupted_run(artifact_dir, tmp_path):
    options = BatchOptions(k=5, chunk_size=16)  # 60 users: 4 chunks
    out, work = tmp_path / "recs.parquet", tmp_path / "recs.parquet.parts"

    def kill_after_2(report):
        if report.index == 2:
            raise Kill("killed after chunk 2")

    with pytest.raises(Kill):
        recommend_all(artifact_dir, out, options, on_chunk=kill_after_2, progress=False)
    assert not out.exists()
    finished = {i: (work / f"chunk-{i:06d}.parquet").stat().st_mtime_ns for i in (1, 2)}
    assert sorted(p.name for p in work.iterdir()) == ["chunk-000001.parquet", "chunk-000002.parquet",
                                                      "manifest.json"]
    computed = []
    summary = recommend_all(artifact_dir, out, options, on_chunk=lambda r: computed.append(r.index),
                            keep_chunks=True, progress=False)
    assert computed == [3, 4] and (summary.computed, summary.chunks) == (2, 4)
    assert {i: (work / f"chunk-{i:06d}.parquet").stat().st_mtime_ns for i in (1, 2)} == finished  # not rewritten
    recommend_all(artifact_dir, tmp_path / "whole.parquet", options, progress=False)
    assert pq.read_table(out).equals(pq.read_table(tmp_path / "whole.parquet"))
    assert not (tmp_path / "whole.parquet.parts").exists()  # removed once assembled (keep_chunks=False)


def test_a_work_directory_of_another_job_is_refused(artifact_dir, sequence_artifacts, tmp_path):
    out = tmp_path / "recs.parquet"

    def kill(report):
        raise Kill("killed after chunk 1")

    with pytest.raises(Kill):
        recommend_all(artifact_dir, out, BatchOptions(k=5, chunk_size=16), on_chunk=kill, progress=False)
    manifest = tmp_path / "recs.parquet.parts" / "manifest.json"
    for other, expected in [
        (dict(artifact=artifact_dir, options=BatchOptions(k=6, chunk_size=16)), "k: recorded 5, now 6"),
        (dict(artifact=artifact_dir, options=BatchOptions(k=5, chunk_size=8)), "chunk_size: recorded 16, now 8"),
        (dict(artifact=artifact_dir, options=BatchOptions(k=5, chunk_size=16, filters=Filters(exclude_seen=False))),
         "filters: recorded"),
        (dict(artifact=sequence_artifacts["ids"], options=BatchOptions(k=5, chunk_size=16)), "artifact: recorded"),
    ]:
        with pytest.raises(BatchError, match="belongs to another batch job") as refused:
            recommend_all(other["artifact"], out, other["options"], progress=False)
        assert str(manifest) in str(refused.value) and expected in str(refused.value), refused.value
    with pytest.raises(BatchError, match="rerank: recorded null"):
        recommend_all(artifact_dir, out, BatchOptions(k=5, chunk_size=16), reranker=ReverseReranker(), progress=False)
    assert sorted(p.name for p in manifest.parent.iterdir()) == ["chunk-000001.parquet", "manifest.json"]
    (tmp_path / "stray").mkdir()
    (tmp_path / "stray" / "notes.txt").write_text("mine")
    with pytest.raises(BatchError, match="no manifest.json: not a batch work directory"):
        recommend_all(artifact_dir, out, BatchOptions(k=5), work_dir=tmp_path / "stray", progress=False)


def test_chunks_bound_what_is_held_and_users_are_streamed(artifact_dir, tmp_path, monkeypatch):
    def whole_table(self):
        raise AssertionError("the batch job must stream users.parquet, not load every user")

    monkeypatch.setattr(Artifact, "users", property(whole_table))
    reports = []
    summary = recommend_all(artifact_dir, tmp_path / "recs.parquet", BatchOptions(k=4, chunk_size=7),
                            reranker=ReverseReranker(), on_chunk=reports.append, progress=False)
    assert [r.index for r in reports] == list(range(1, 10)) and sum(r.users for r in reports) == summary.users == 60
    for r in reports:
        assert r.users <= 7 and r.vectors[0] <= 7 and r.rows <= 7 * 4, r
    assert [r.users for r in reports] == [7] * 8 + [4]


def test_options_and_filters_that_cannot_work_are_refused_before_any_file(artifact_dir, tmp_path):
    for options, message in [
        (dict(k=0), r"k \(--k\) must be a positive integer"),
        (dict(chunk_size=-1), r"chunk_size \(--chunk-size\) must be"),
        (dict(filters=Filters(price_min=10, price_max=5)), r"filters.price_min \(--price-min\) \(10\) is above"),
        (dict(filters=Filters(price_max=float("nan"))), r"filters.price_max \(--price-max\) must be a finite"),
    ]:
        with pytest.raises(BatchError, match=message):
            BatchOptions(**options)
    with pytest.raises(BatchError, match=r"filters.category \(--category\)='No Such Shelf': no product"):
        recommend_all(artifact_dir, tmp_path / "recs.parquet", BatchOptions(filters=Filters(category="No Such Shelf")),
                      progress=False)
    assert list(tmp_path.iterdir()) == []
