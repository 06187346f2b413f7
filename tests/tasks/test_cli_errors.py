"""`python train.py` on bad input: a `DataError` or `ArtifactError` is its one sentence on stderr (`error: ...`)
and exit status 1, with no traceback; `HYDRA_FULL_ERROR=1` still shows the traceback. The `slow` tests run the
real entry point in a subprocess on failing loads; the others drive its job (`towerrec.tasks.cli.train_job`)
in-process with a stand-in `train`."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.cli import explain, run_cli
from helpers.data import run_paths
from helpers.loader_files import QUOTED_PRODUCT, quote_files
from omegaconf import OmegaConf

from towerrec.artifact.format import ArtifactError
from towerrec.data.schema import DataError


def table_args(items: Path, events: Path, *extra: str) -> list[str]:
    return ["data=table", f"data.catalog_path={items}", f"data.interactions_path={events}",
            "data.user_id_secret=test-secret", *extra]


# Each case: tmp_path -> (train.py arguments, the start of the sentence it must print).


def missing_file(tmp: Path) -> tuple[list[str], str]:
    _, events = quote_files(tmp / "input")
    gone = tmp / "input" / "gone.csv"
    return table_args(gone, events), f"{gone}: file not found"


def unterminated_quote(tmp: Path) -> tuple[list[str], str]:
    items, events = quote_files(tmp / "input", {7: QUOTED_PRODUCT})
    return table_args(items, events), f"{items}:7: unterminated quote: field 2 opens with a quote that never closes"


def skip_mode_refusal(tmp: Path) -> tuple[list[str], str]:
    items, events = quote_files(tmp / "input", {7: QUOTED_PRODUCT})
    sentence = f"{items}: 1 of 30 rows (3.3%) are bad, more than data.max_bad_row_share=0.01 lets skip mode drop"
    return table_args(items, events, "data.on_bad_rows=skip"), sentence


def long_value(tmp: Path) -> tuple[list[str], str]:
    items, events = quote_files(tmp / "input")
    with events.open("a") as f:
        f.write("user1,P01," + "7" * 10_000 + "\n")  # line 102
    return table_args(items, events), f"{events}:102: timestamp '{'7' * 77}…' (10,000 characters) is not a number"


def broken_artifact(tmp: Path) -> tuple[list[str], str]:
    artifact = tmp / "artifact"
    artifact.mkdir()
    (artifact / "manifest.json").write_text("{")
    args = ["stage=rerank", "rerank.finetune.enabled=false", f"artifact={artifact}"]
    return args, f"{artifact / 'manifest.json'}: not valid JSON"


@pytest.mark.slow
@pytest.mark.parametrize("case", [missing_file, unterminated_quote, skip_mode_refusal, long_value, broken_artifact],
                         ids=lambda case: case.__name__)
def test_bad_input_prints_one_sentence_and_exits_nonzero(tmp_path, case):
    args, sentence = case(tmp_path)
    run_dir = tmp_path / "run"
    proc = run_cli([*args, *run_paths(tmp_path), f"hydra.run.dir={run_dir}"], timeout=180)
    assert proc.returncode == 1, explain(proc)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {sentence}"), explain(proc)
    assert "Traceback" not in proc.stderr + proc.stdout, explain(proc)
    assert len(errors[0].replace(str(tmp_path), "")) < 400 and ". " not in errors[0]  # long values are cut
    assert errors[0].removeprefix("error: ") in (run_dir / "train.log").read_text()  # the job log says why too


@pytest.mark.slow
def test_hydra_full_error_shows_the_traceback(tmp_path):
    args, sentence = missing_file(tmp_path)
    proc = run_cli([*args, *run_paths(tmp_path), f"hydra.run.dir={tmp_path / 'run'}"], timeout=180,
                   HYDRA_FULL_ERROR="1")
    assert proc.returncode == 1, explain(proc)
    assert "Traceback (most recent call last)" in proc.stderr and f"DataError: {sentence}" in proc.stderr
    assert not any(line.startswith("error: ") for line in proc.stderr.splitlines()), explain(proc)


@pytest.fixture
def main_raising(monkeypatch):
    """main_raising(error): train.py's job on an empty config, its `train` raising `error`."""
    from towerrec.tasks import cli

    def run(error: Exception):
        def train(cfg):
            raise error

        monkeypatch.setattr("towerrec.tasks.train.train", train)
        return cli.train_job(OmegaConf.create({}))

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    return run


@pytest.mark.parametrize("error", [DataError("items.csv:7: unterminated quote"), ArtifactError("manifest.json: gone")])
def test_bad_input_exits_with_its_sentence_alone(main_raising, capsys, error):
    with pytest.raises(SystemExit) as exited:
        main_raising(error)
    assert exited.value.code == 1 and capsys.readouterr().err == f"error: {error}\n"


def test_full_error_and_other_exceptions_keep_their_traceback(main_raising, monkeypatch, capsys):
    with pytest.raises(RuntimeError, match="a bug"):  # not bad input: Hydra prints its traceback as before
        main_raising(RuntimeError("a bug"))
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(DataError, match="items.csv:7"):
        main_raising(DataError("items.csv:7: unterminated quote"))
    assert "error: " not in capsys.readouterr().err
