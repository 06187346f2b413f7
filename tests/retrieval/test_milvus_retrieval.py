"""The Retriever with index.backend=milvus (Milvus Lite) gives FAISS's answers: the same top-k for the test users'
vectors under the same filters (category, price range, both, a mask) and history exclusions, one user at a time
(the serving path: exclusions in the expression) and in batches (exclusions over-fetched), with the exact index;
with HNSW, the same results here too (80 products), exactly k whenever k products pass."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.milvus import FLAT, HNSW, milvus_cfg, require_milvus_lite
from helpers.serve import export_tiny_artifact

from towerrec.artifact import Artifact
from towerrec.artifact.items import ItemFilter
from towerrec.artifact.milvus import load_into_milvus
from towerrec.retrieval import Retriever
from towerrec.retrieval.retriever import ranked_ids

pytestmark = pytest.mark.usefixtures("one_thread_faiss")


@pytest.fixture(scope="module")
def artifact(tiny_split, tmp_path_factory) -> Artifact:
    require_milvus_lite(tmp_path_factory)
    return Artifact.load(export_tiny_artifact(tmp_path_factory.mktemp("art") / "artifact", tiny_split))


@pytest.fixture(scope="module", params=["flat", "hnsw"])
def milvus(request, artifact, tmp_path_factory) -> Retriever:
    cfg = milvus_cfg(tmp_path_factory.mktemp("milvus"), request.param, **(FLAT if request.param == "flat" else HNSW))
    load_into_milvus(artifact, cfg, progress=False)
    return Retriever(artifact, index={"backend": "milvus", "milvus": cfg})


@pytest.fixture(scope="module")
def faiss_retriever(artifact) -> Retriever:
    return Retriever(artifact)


@pytest.fixture(scope="module")
def users(faiss_retriever, tiny_split):
    """(user vectors (U, D), their history row ids): the test users, embedded as serving embeds them."""
    histories = tiny_split.examples("test").histories
    vecs = faiss_retriever.embed_histories(histories)
    return vecs, [set(faiss_retriever.row_ids[h].tolist()) for h in histories]


def filters(artifact) -> list[ItemFilter | None]:
    top = artifact.items["category"].str.split(" > ").str[0].value_counts().index
    second = artifact.items["category"].iloc[0].rsplit(" > ", 1)[0]
    prices = artifact.table.prices
    median = float(np.nanmedian(prices))
    return [None, ItemFilter(top[0]), ItemFilter(top[-1]), ItemFilter(second), ItemFilter(price_max=median),
            ItemFilter(price_min=median), ItemFilter(top[0], price_min=float(np.nanmin(prices)), price_max=median),
            ItemFilter("No such category")]


def test_one_user_at_a_time_gives_faiss_answers_under_every_filter(milvus, faiss_retriever, users, artifact, request):
    vecs, seen = users
    exact = request.node.callspec.params["milvus"] == "flat"  # HNSW is approximate (its graph build is threaded)
    for f in filters(artifact):
        for vec, excl in zip(vecs, seen):
            want = faiss_retriever.search(vec[None], 10, [excl], item_filter=f)[0]
            got = milvus.search(vec[None], 10, [excl], item_filter=f)[0]
            if exact:
                assert ranked_ids(got) == ranked_ids(want), f
                np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5)
            else:  # at most one of the ten missed, and every answer with its exact score
                assert len(set(ranked_ids(got)) & set(ranked_ids(want))) >= len(want) - 1, f
                exact_scores = dict(faiss_retriever.search(vec[None], 10_000, [excl], item_filter=f)[0])
                np.testing.assert_allclose([s for _, s in got], [exact_scores[r] for r, _ in got], atol=1e-5)
            assert not {r for r, _ in got} & excl
    assert milvus.exact_fallbacks == 0  # Milvus itself supplied every answer


def test_batches_and_masks_give_faiss_answers(milvus, faiss_retriever, users, artifact):
    vecs, seen = users
    stock = np.arange(artifact.num_items) % 3 != 0  # an arbitrary (N,) mask: applied to Milvus's results
    for f in filters(artifact)[:4]:
        for mask in (None, stock):
            want = faiss_retriever.search(vecs, 10, seen, item_filter=f, mask=mask)
            got = milvus.search(vecs, 10, seen, item_filter=f, mask=mask)
            assert [ranked_ids(g) for g in got] == [ranked_ids(w) for w in want], f
    assert milvus.exact_fallbacks == 0


def test_exactly_k_when_k_pass_and_all_when_fewer(milvus, faiss_retriever, users, artifact):
    vecs, seen = users
    f = filters(artifact)[1]
    eligible = [int(milvus.filter_mask(f).sum()) - len({r for r in excl if milvus.filter_mask(f)[
        milvus.table.position_of_row[r]]}) for excl in seen[:5]]
    for k in (1, 7, artifact.num_items):
        got = milvus.search(vecs[:5], k, seen[:5], item_filter=f)
        assert [len(g) for g in got] == [min(k, e) for e in eligible]
    assert milvus.search(vecs[:2], 5, None, category="No such category") == [[], []]


def test_recommend_and_similar_items_through_milvus(milvus, faiss_retriever, tiny_split):
    history = tiny_split.catalog.item_ids[[4, 9, 17]].tolist()
    assert [r["item_id"] for r in milvus.recommend(history, k=8)] == \
        [r["item_id"] for r in faiss_retriever.recommend(history, k=8)]
    item = tiny_split.catalog.item_ids[7]
    assert [r["item_id"] for r in milvus.similar_items(item, k=5)] == \
        [r["item_id"] for r in faiss_retriever.similar_items(item, k=5)]
    assert milvus.backend == "milvus" and faiss_retriever.milvus is None
