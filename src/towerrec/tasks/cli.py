"""The Hydra mains behind `python train.py` / `python serve.py` and the console scripts `towerrec-train` /
`towerrec-serve`: each script passes its own conf/, a console script finds the checkout's.

The config tree stays at the checkout's top level, not in the package: its defaults are checkout paths (logs/,
.cache/, ../shared/data) and everyone edits it there. So the console scripts work from an editable install of a
checkout (`pip install -e .`, what `make setup` does), where conf/ lies beside src/; installed from a wheel they
stop with a message saying so, unless the command names a config directory (`--config-dir DIR`).

Training jobs: in a multirun (`-m`, e.g. a sweep or `hparams_search=optuna`) a job that raises does not end the
sweep: its traceback goes to the job's log and to `error.log` in its directory, and it returns None, which the
Optuna sweeper records as a failed trial before going on. (Not NaN: hydra-optuna-sweeper 1.3 re-tells a NaN
value with the FAIL state, which Optuna rejects, and the whole study dies.) A NaN objective is likewise turned
into a failed trial. A single run that raises exits non-zero with the error, as usual; bad input (a `DataError`
or an `ArtifactError`, whose message names the file and what is wrong, or a `VectorStoreError` naming the Milvus
URI) prints that one sentence to stderr as `error: ...`, without a traceback, and exits 1. `HYDRA_FULL_ERROR=1`
shows the full traceback instead.

Each main imports its job's modules before Hydra sets up logging, as the scripts always did: Lightning, imported
after that, would drop its own console handler and print each of its lines twice.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

log = logging.getLogger("train")

CHECKOUT = Path(__file__).resolve().parents[3]  # src/towerrec/tasks/cli.py -> the checkout of an editable install
CONFIG_OPTIONS = ("--config-dir", "-cd", "--config-path", "-cp")  # Hydra's own ways to name the config tree


def find_conf(config_name: str, checkout: Path = CHECKOUT, argv: Sequence[str] | None = None) -> Path | None:
    """The checkout's conf/ holding `config_name`.yaml; None when the command names a config directory itself.
    Neither: SystemExit with what to do."""
    argv = sys.argv[1:] if argv is None else argv
    if any(arg == opt or arg.startswith(opt + "=") for arg in argv for opt in CONFIG_OPTIONS):
        return None
    conf = checkout / "conf"
    if (conf / f"{config_name}.yaml").is_file():
        return conf
    raise SystemExit(f"error: no Hydra config {conf / config_name}.yaml: the towerrec console scripts read the conf/ "
                     "folder of the checkout they are installed from (pip install -e . in a towerrec checkout); "
                     "run python train.py / serve.py there, or pass --config-dir PATH/TO/conf")


def hydra_main(job: Callable[[DictConfig], object], config_name: str, conf: Path | None) -> None:
    """Run `job` under Hydra on `config_name` from `conf` (None: the directory named on the command line)."""
    hydra.main(version_base="1.3", config_path=None if conf is None else str(conf), config_name=config_name)(job)()


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _exit_with_sentence(error: Exception) -> NoReturn:
    """End a single run that got bad input with its one sentence, also in the job log; Hydra would print a
    traceback (it catches the exception itself, so this runs before it does)."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (error,), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):  # the console gets the sentence on stderr alone
            handler.handle(record)
    print(f"error: {error}", file=sys.stderr, flush=True)
    sys.exit(1)


def _finish_wandb(failed: bool) -> None:
    """Close an open wandb run: the next job of a sweep must start its own, not log into this one."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=1 if failed else 0)


def train_job(cfg: DictConfig) -> float | None:
    """One training job (`towerrec.tasks.train.train`): returns `cfg.optimized_metric` for the sweepers."""
    from towerrec.artifact.format import ArtifactError
    from towerrec.artifact.milvus import VectorStoreError
    from towerrec.data.schema import DataError
    from towerrec.tasks.train import train
    from towerrec.utils.hydra import metric_value

    failed = True
    try:
        metrics, _ = train(cfg)
        value = metric_value(metrics, cfg.get("optimized_metric"))
        failed = False
    except Exception as e:
        if not _in_multirun():
            if isinstance(e, (DataError, ArtifactError, VectorStoreError)) \
                    and os.environ.get("HYDRA_FULL_ERROR") != "1":
                _exit_with_sentence(e)  # their message is the whole story: one sentence, no traceback
            raise
        job = HydraConfig.get()
        log.exception("job %s failed; the sweep goes on without it", job.job.num)
        (Path(job.runtime.output_dir) / "error.log").write_text(traceback.format_exc())
        return None
    finally:
        _finish_wandb(failed)
    if value is not None and math.isnan(value) and _in_multirun():
        log.warning("%s is NaN: reported as a failed trial", cfg.optimized_metric)
        return None
    return value


def serve_job(cfg: DictConfig) -> None:
    """The recommendation service until SIGINT/SIGTERM (`towerrec.serving.server.run`); exits with its status."""
    from towerrec.serving.config import ServeConfig
    from towerrec.serving.server import run

    status = run(ServeConfig.from_cfg(cfg), access_log=bool(cfg.get("access_log", False)))
    if status:
        sys.exit(status)


def train_main(conf: Path | None = None) -> None:
    """`towerrec-train [overrides]`, the same as `python train.py [overrides]`."""
    conf = conf or find_conf("train")
    import towerrec.tasks.train  # noqa: F401  (before Hydra's logging setup: see the module docstring)

    hydra_main(train_job, "train", conf)


def serve_main(conf: Path | None = None) -> None:
    """`towerrec-serve artifacts=PATH [overrides]`, the same as `python serve.py ...`."""
    conf = conf or find_conf("serve")
    import towerrec.serving.server  # noqa: F401  (before Hydra's logging setup: see the module docstring)

    hydra_main(serve_job, "serve", conf)
