"""Helpers of the Milvus tests: skip (with the reason) where Milvus Lite is not installed or cannot start, a
MilvusConfig for a fresh local .db file, and the index settings the tests use."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from towerrec.index import MilvusConfig

FLAT = {"index_type": "FLAT", "index_params": {}, "search_params": {}}
HNSW = {"index_type": "HNSW", "index_params": {"M": 16, "efConstruction": 100}, "search_params": {"ef": 64}}


@functools.lru_cache(maxsize=1)
def _cannot_start(probe_dir: str) -> str | None:
    """Why Milvus Lite cannot run here (None: it can): the packages are missing, or a probe server fails."""
    try:
        import milvus_lite  # noqa: F401
        import pymilvus
    except ImportError as e:
        return f"Milvus Lite is not installed ({e}); pip install 'towerrec[milvus]'"
    try:
        client = pymilvus.MilvusClient(str(Path(probe_dir) / "probe.db"))
        client.list_collections()
        client.close()
    except Exception as e:  # whatever keeps the embedded server from starting here
        return f"Milvus Lite cannot start here: {type(e).__name__}: {e}"
    return None


def require_milvus_lite(tmp_path_factory) -> None:
    """pytest.skip with the reason where Milvus Lite cannot run; a no-op where it can."""
    why = _cannot_start(str(tmp_path_factory.getbasetemp()))
    if why:
        pytest.skip(why)


def milvus_cfg(directory: Path, name: str = "catalog", **overrides) -> MilvusConfig:
    """Settings for a Milvus Lite file in `directory` (exact FLAT index unless overridden)."""
    return MilvusConfig(uri=str(directory / f"{name}.db"), **{**FLAT, **overrides})
