"""Verification of an artifact (`Artifact.load`, `Artifact.check`, `python -m towerrec.artifact verify`): every
tampered, truncated, unlisted or ill-typed case is refused with one sentence naming the file, as an
ArtifactError (a ValueError) and, on the command line, one `error:` line and exit code 1, never a traceback.

Most cases rewrite the manifest's checksum to match the damage, so that only the content checks can catch it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.tamper import REFUSED_ON_CHECK, REFUSED_ON_LOAD, edit_manifest, rewrite_checksum
from helpers.tiny_artifact import ROOT
from safetensors.numpy import save_file as save_numpy

from towerrec.artifact import Artifact
from towerrec.artifact.cli import main
from towerrec.artifact.format import ArtifactError

pytestmark = pytest.mark.usefixtures("one_thread_faiss")


def _one_error_line(capsys, art_dir: Path, message: str) -> str:
    assert main(["verify", str(art_dir)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert re.search(message, lines[0]), lines[0]
    return lines[0]


@pytest.mark.parametrize("case", list(REFUSED_ON_LOAD))
def test_tampered_artifact_is_refused_on_load_naming_the_file(art_dir, capsys, case):
    tamper, message = REFUSED_ON_LOAD[case]
    tamper(art_dir)
    with pytest.raises(ArtifactError, match=message):
        Artifact.load(art_dir, verify=True)
    _one_error_line(capsys, art_dir, message)


@pytest.mark.parametrize("case", list(REFUSED_ON_CHECK))
def test_damage_to_lazily_read_files_is_refused_by_check_and_verify(art_dir, capsys, case):
    tamper, message = REFUSED_ON_CHECK[case]
    tamper(art_dir)
    art = Artifact.load(art_dir, verify=True)
    with pytest.raises(ArtifactError, match=message):
        art.check()
    _one_error_line(capsys, art_dir, message)


def test_artifact_error_is_a_value_error():
    assert issubclass(ArtifactError, ValueError)


def test_verify_ok_is_one_line_and_check_loads_what_serving_loads(base, capsys):
    assert main(["verify", str(base)]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert line.startswith(f"ok: {base}: 80 items, dim 16") and "2 towers" in line and "users" in line
    art = Artifact.load(base)
    summary = art.check()
    assert summary["towers"] == {"user": 16, "item": 16} and summary["users"] == len(art.users) > 0


def test_verify_false_skips_checksums_but_not_structure(art_dir):
    save_numpy({"counts": np.ones(80, dtype=np.int64)}, str(art_dir / "popularity.safetensors"))  # same size
    with pytest.raises(ArtifactError, match="popularity.safetensors: checksum mismatch"):
        Artifact.load(art_dir, verify=True)
    assert Artifact.load(art_dir, verify=False).popularity.tolist() == [1] * 80
    (art_dir / "notes.txt").write_text("unlisted")
    with pytest.raises(ArtifactError, match="notes.txt: not listed"):
        Artifact.load(art_dir, verify=False)
    (art_dir / "notes.txt").unlink()
    edit_manifest(art_dir, num_items=81)
    with pytest.raises(ArtifactError, match="num_items is 81"):
        Artifact.load(art_dir, verify=False)


def test_rerank_directory_is_its_own_artifact_and_listed_files_there_are_verified(art_dir):
    """rerank/ is written later by `stage=rerank` (read by towerrec.rerank's own loader): unlisted is fine."""
    (art_dir / "rerank").mkdir()
    (art_dir / "rerank" / "rerank.json").write_text("{}")
    assert Artifact.load(art_dir).num_items == 80
    rewrite_checksum(art_dir, "rerank/rerank.json")
    (art_dir / "rerank" / "rerank.json").write_text('{"changed": 1}')
    with pytest.raises(ArtifactError, match=r"rerank/rerank\.json: .*modified or corrupted"):
        Artifact.load(art_dir)


def test_over_long_path_is_an_artifact_error(tmp_path, capsys):
    path = tmp_path / ("x" * 300)
    with pytest.raises(ArtifactError, match="cannot be read"):
        Artifact.load(path)
    _one_error_line(capsys, path, r"x{300}")


@pytest.mark.parametrize("case", ["index byte 0 flipped", "user tower weights header"])
def test_command_line_prints_one_sentence_and_no_traceback(art_dir, case):
    REFUSED_ON_LOAD[case][0](art_dir)
    proc = subprocess.run([sys.executable, "-m", "towerrec.artifact", "verify", str(art_dir)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {art_dir}/"), proc.stderr
