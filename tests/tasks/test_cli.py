"""The Hydra mains and console scripts (`towerrec.tasks.cli`): conf/ found from the checkout whatever the working
directory, a clear stop without it, the scripts named in pyproject.toml answering `--help` and `--cfg job`, and
the job log free of FAISS's loader chatter but not of its warnings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from helpers.cli import cli_env, explain
from helpers.data import ROOT

from towerrec.tasks.cli import find_conf

SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def test_find_conf_is_the_checkouts_conf():
    assert find_conf("train", argv=[]) == find_conf("serve", argv=[]) == ROOT / "conf"


def test_find_conf_without_a_checkout_says_what_to_do(tmp_path):
    with pytest.raises(SystemExit) as stop:
        find_conf("train", checkout=tmp_path, argv=["experiment=tiny"])
    message = str(stop.value)
    assert str(tmp_path / "conf" / "train") in message and "pip install -e ." in message and "--config-dir" in message


@pytest.mark.parametrize("argv", [["--config-dir", "x"], ["-cd", "x"], ["--config-path=/x"], ["-cp", "/x"]])
def test_find_conf_leaves_a_named_config_directory_to_hydra(tmp_path, argv):
    assert find_conf("train", checkout=tmp_path, argv=[*argv, "seed=1"]) is None


def run_script(name: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Console script `name` as pip's launcher runs it (`module:function` from pyproject.toml), in `cwd`."""
    module, function = SCRIPTS[name].split(":")
    code = f"import sys; from {module} import {function}; sys.argv[0] = {name!r}; sys.exit({function}())"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=cli_env(), capture_output=True,
                          text=True, timeout=300)


def test_pyproject_names_both_console_scripts():
    assert SCRIPTS == {"towerrec-train": "towerrec.tasks.cli:train_main",
                       "towerrec-serve": "towerrec.tasks.cli:serve_main"}


@pytest.mark.slow
@pytest.mark.parametrize("name, args, expected", [
    ("towerrec-train", ["--help"], "train is powered by Hydra"),
    ("towerrec-train", ["--cfg", "job", "experiment=tiny", "seed=7"], "seed: 7"),
    ("towerrec-serve", ["--help"], "serve is powered by Hydra"),
    ("towerrec-serve", ["--cfg", "job", "artifacts=/nowhere", "port=0"], "artifacts: /nowhere"),
])
def test_console_scripts_compose_the_checkouts_config_from_anywhere(tmp_path, name, args, expected):
    proc = run_script(name, args, cwd=tmp_path)  # not the checkout: conf/ is found from the package
    assert proc.returncode == 0 and expected in proc.stdout, explain(proc)
    if "--cfg" in args:
        assert f"task_name: {name.split('-')[1]}" in proc.stdout
    assert not (tmp_path / "logs").exists()  # --help and --cfg run no job


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_installed_console_script_runs(tmp_path, name):
    """The launcher `pip install -e .` wrote beside this interpreter (make setup does)."""
    script = Path(sys.executable).parent / name
    if not script.is_file():
        pytest.skip(f"{script} is not installed (make setup installs it)")
    proc = subprocess.run([str(script), "--help"], cwd=tmp_path, env=cli_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and f"{name.split('-')[1]} is powered by Hydra" in proc.stdout, explain(proc)


FAISS_JOB = """
import logging, sys
from pathlib import Path
from towerrec.tasks.cli import hydra_main

def job(cfg):
    import faiss  # first imported inside the job, after Hydra set up logging
    logging.getLogger("faiss.loader").warning("a real warning")

hydra_main(job, "train", Path(sys.argv.pop(1)))
"""


@pytest.mark.slow
@pytest.mark.parametrize("keep_setting", [True, False])
def test_job_log_keeps_faiss_warnings_but_not_its_loader_info(tmp_path, keep_setting):
    run_dir = tmp_path / "run"
    args = [f"hydra.run.dir={run_dir}", f"paths.log_dir={tmp_path / 'logs'}"]
    if not keep_setting:  # the control: without conf/hydra's setting the loader's INFO lines reach the log
        args.append("~hydra.job_logging.loggers")
    proc = subprocess.run([sys.executable, "-c", FAISS_JOB, str(ROOT / "conf"), *args], cwd=tmp_path, env=cli_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, explain(proc)
    log = (run_dir / "train.log").read_text()
    assert "[faiss.loader][WARNING] - a real warning" in log
    assert ("[faiss.loader][INFO]" in log) is not keep_setting, log
    if keep_setting:
        assert "ModuleNotFoundError" not in log and "ModuleNotFoundError" not in proc.stdout, log
