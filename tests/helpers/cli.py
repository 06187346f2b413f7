"""Running `python train.py` in a subprocess for the end-to-end tests: a clean environment, one thread, tests/
on PYTHONPATH (for the crash callbacks), and a readable dump of a failed run."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers.data import ROOT

TESTS = ROOT / "tests"


def cli_env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "HYDRA_"))}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
    env.update(extra)
    return env


def cli_command(args: list[str]) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), *args]


def run_cli(args: list[str], timeout: float = 300, **env) -> subprocess.CompletedProcess:
    return subprocess.run(cli_command(args), cwd=ROOT, env=cli_env(**env), capture_output=True, text=True, timeout=timeout)


def explain(proc) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-6000:]}"
