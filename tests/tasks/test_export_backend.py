"""`index.backend=milvus` in a training run (towerrec.tasks.export.load_into_backend): the finished artifact is
loaded into the configured collection, which the Retriever then searches; the FAISS backend loads nothing; the
server is checked before training."""

from __future__ import annotations

import pytest
from helpers.milvus import milvus_cfg, require_milvus_lite
from helpers.serve import export_tiny_artifact
from omegaconf import OmegaConf

from towerrec.artifact.milvus import VectorStoreError
from towerrec.retrieval import Retriever
from towerrec.tasks.export import check_backend, load_into_backend


def test_a_milvus_run_loads_its_artifact_into_the_collection(tiny_split, tmp_path, tmp_path_factory):
    require_milvus_lite(tmp_path_factory)
    path = export_tiny_artifact(tmp_path / "artifact", tiny_split)
    assert load_into_backend(OmegaConf.create({"index": {"backend": "faiss"}}), path) is None
    milvus = milvus_cfg(tmp_path).to_dict()
    cfg = OmegaConf.create({"index": {"name": "flat", "backend": "milvus", "milvus": milvus},
                            "export": {"progress": False}})
    summary = load_into_backend(cfg, path)
    assert summary["items"] == tiny_split.num_items and summary["uri"] == milvus["uri"]
    retriever = Retriever(path, index=cfg.index)
    hits = retriever.search(retriever.artifact.embeddings[:1], 3)[0]
    assert hits[0][0] == int(retriever.row_ids[0]) and len(hits) == 3


def test_a_milvus_run_checks_its_server_before_training():
    check_backend(OmegaConf.create({"index": {"backend": "faiss"}}))  # nothing to check
    with pytest.raises(ValueError, match="index.milvus.uri is not set"):
        check_backend(OmegaConf.create({"index": {"backend": "milvus"}}))
    unreachable = {"backend": "milvus", "milvus": {"uri": "http://127.0.0.1:9", "timeout_s": 1}}
    with pytest.raises(VectorStoreError, match=r"Milvus at http://127.0.0.1:9 \(collection towerrec_items\): "
                                               "connecting failed"):
        check_backend(OmegaConf.create({"index": unreachable}))
