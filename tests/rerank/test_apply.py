"""The rerank stage applied to retrieved items (towerrec.rerank.apply), shared by the service and the batch job:
rerank directories found as configured, a reranker's answer checked and applied, the candidate count."""

from __future__ import annotations

import types

import numpy as np
import pytest

from towerrec.rerank.apply import find_rerank_dir, reordered, rerank_candidates
from towerrec.rerank.reranker import RerankResult


def test_find_rerank_dir(tmp_path):
    assert find_rerank_dir("auto", tmp_path, "key") is None and find_rerank_dir(None, tmp_path, "key") is None
    (tmp_path / "rerank").mkdir()
    (tmp_path / "rerank" / "rerank.json").write_text("{}")
    assert find_rerank_dir("auto", tmp_path, "key") == tmp_path / "rerank"
    assert find_rerank_dir(str(tmp_path / "rerank"), "/elsewhere", "key") == tmp_path / "rerank"
    with pytest.raises(FileNotFoundError, match="--rerank-dir=/nowhere: no rerank.json there"):
        find_rerank_dir("/nowhere", tmp_path, "--rerank-dir")


def test_reordered_takes_the_fused_score_where_the_lm_scored():
    items = [{"item_id": c, "score": s} for c, s in (("a", 0.9), ("b", 0.8), ("c", 0.7))]
    result = RerankResult(np.array([1, 0, 2]), np.array([0.1, 0.5, np.nan]), np.array([0.2, 0.6, np.nan]))
    assert reordered(items, result) == [{"item_id": "b", "score": 0.6, "lm_score": 0.5},
                                        {"item_id": "a", "score": 0.2, "lm_score": 0.1},
                                        {"item_id": "c", "score": 0.7, "lm_score": None}]
    for order in ([0, 0, 2], [0, 1], [0, 1, 3]):
        with pytest.raises(ValueError, match="order must be"):
            reordered(items, RerankResult(np.array(order), np.zeros(3), np.zeros(3)))
    with pytest.raises(ValueError, match="lm_score must be finite or NaN"):
        reordered(items, RerankResult(np.arange(3), np.array([0, np.inf, 0]), np.zeros(3)))


def test_rerank_candidates():
    assert rerank_candidates(None, 7) == 7 and rerank_candidates(None) == 20
    assert rerank_candidates(types.SimpleNamespace(settings=types.SimpleNamespace(top_n=12))) == 12
