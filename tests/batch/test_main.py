"""`python -m towerrec.batch` (towerrec.batch.__main__): the command writes the file and says what it did,
resumes a work directory, takes --rerank from a rerank directory, and bad input is one sentence (exit 1)."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from helpers.cli import cli_env
from helpers.data import ROOT
from helpers.serve import export_tiny_artifact

from towerrec.batch.__main__ import main
from towerrec.rerank.reranker import RerankSettings, save_rerank_dir

pytestmark = pytest.mark.usefixtures("one_thread_faiss")


@pytest.fixture(scope="module")
def artifact_dir(tiny_split, tmp_path_factory):
    return export_tiny_artifact(tmp_path_factory.mktemp("batch_cli") / "artifact", tiny_split)


def test_the_command_writes_every_known_user(artifact_dir, tmp_path, capsys):
    out = tmp_path / "recs.parquet"
    assert main([str(artifact_dir), "--out", str(out), "--k", "3", "--chunk-size", "25", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"{out}: 180 rows for 60 users (3 of 3 chunks computed by this run)" in printed
    table = pq.read_table(out)
    assert table.column_names == ["user_id", "rank", "item_id", "score", "served_by"]
    assert table.num_rows == 180 and not (tmp_path / "recs.parquet.parts").exists()


def test_rerank_comes_from_the_rerank_directory(artifact_dir, tmp_path, capsys):
    rerank_dir = tmp_path / "rerank"
    save_rerank_dir(rerank_dir, RerankSettings.from_config({"model_path": "random_init", "device": "cpu",
                                                            "dtype": "float32", "top_n": 4}))
    histories = tmp_path / "users.jsonl"
    histories.write_text(json.dumps({"user_id": "shopper", "history": ["P000001", "P000002"]}) + "\n")
    out = tmp_path / "recs.parquet"
    args = [str(artifact_dir), "--out", str(out), "--k", "4", "--histories", str(histories), "--no-progress"]
    assert main([*args, "--rerank", "--rerank-dir", str(rerank_dir)]) == 0
    table = pq.read_table(out).to_pandas()
    assert table["reranked"].all() and list(table["rank"]) == [1, 2, 3, 4]
    assert main([*args, "--rerank"]) == 1  # the artifact has no rerank/ of its own
    assert "--rerank: " in capsys.readouterr().err


def test_bad_input_is_one_sentence(artifact_dir, tmp_path, capsys):
    bad = tmp_path / "users.csv"
    bad.write_text("user_id,history\nu1,P000001\nu2,P000001,extra\n")
    out = str(tmp_path / "recs.parquet")
    assert main([str(artifact_dir), "--out", out, "--histories", str(bad)]) == 1
    assert capsys.readouterr().err.strip() == (f"error: {bad}:3: expected 2 fields (user_id,history), found 3")
    assert main([str(tmp_path / "nowhere"), "--out", out]) == 1
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'nowhere'}")
    assert main([str(artifact_dir), "--out", out, "--k", "0"]) == 1
    assert "error: k (--k) must be a positive integer, got 0" in capsys.readouterr().err


@pytest.mark.slow
def test_python_dash_m_runs_it(artifact_dir, tmp_path):
    out = tmp_path / "recs.parquet"
    proc = subprocess.run([sys.executable, "-m", "towerrec.batch", str(artifact_dir), "--out", str(out), "--k", "2",
                           "--no-progress"], cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert pq.read_table(out).num_rows == 120
