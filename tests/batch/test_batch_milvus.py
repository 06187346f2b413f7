"""The batch job through a Milvus Lite collection (index.backend=milvus) writes the rows it writes through the
artifact's FAISS index, unfiltered and under a category filter (pushed into Milvus as an expression)."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from helpers.milvus import milvus_cfg, require_milvus_lite
from helpers.serve import export_tiny_artifact

from towerrec.artifact import Artifact
from towerrec.artifact.milvus import MilvusCatalog, load_into_milvus
from towerrec.batch import BatchOptions, recommend_all
from towerrec.index import IndexConfig
from towerrec.retrieval.filters import Filters

pytestmark = pytest.mark.usefixtures("one_thread_faiss")


def rows(path):
    """(user, rank, item) rows and scores rounded past float32 noise."""
    t = pq.read_table(path).to_pandas()
    return list(zip(t["user_id"], t["rank"], t["item_id"], t["score"].round(4), t["served_by"]))


@pytest.mark.parametrize("category", [None, "top"])
def test_batch_job_through_milvus_equals_faiss(category, tiny_split, tmp_path, tmp_path_factory, monkeypatch):
    require_milvus_lite(tmp_path_factory)
    art = Artifact.load(export_tiny_artifact(tmp_path / "artifact", tiny_split))
    cfg = milvus_cfg(tmp_path)
    load_into_milvus(art, cfg, progress=False)
    if category == "top":
        category = art.items["category"].str.split(" > ").str[0].value_counts().index[0]
    calls = []
    search = MilvusCatalog.search
    monkeypatch.setattr(MilvusCatalog, "search", lambda self, *a: calls.append(a[-1]) or search(self, *a))
    options = BatchOptions(k=5, chunk_size=64, filters=Filters(category=category))
    faiss_sum = recommend_all(art, tmp_path / "faiss.parquet", options, development=True, progress=False)
    milvus_sum = recommend_all(art, tmp_path / "milvus.parquet", options, development=True, progress=False,
                               index=IndexConfig(backend="milvus", milvus=cfg))
    assert calls and all(("array_contains" in expr) == (category is not None) for expr in calls)  # Milvus searched
    assert faiss_sum.rows == milvus_sum.rows > 0
    assert rows(tmp_path / "milvus.parquet") == rows(tmp_path / "faiss.parquet")
