"""Train and evaluate a recommender: `python train.py [overrides]` (see conf/train.yaml and README).

In a multirun (`-m`, e.g. a sweep or `hparams_search=optuna`) a job that raises does not end the sweep:
its traceback goes to the job's log and to `error.log` in its directory, and it returns None, which the
Optuna sweeper records as a failed trial before going on. (Not NaN: hydra-optuna-sweeper 1.3 re-tells a NaN
value with the FAIL state, which Optuna rejects, and the whole study dies.) A NaN objective is likewise
turned into a failed trial. A single run that raises exits non-zero with the error, as usual; bad input (a
`DataError` or an `ArtifactError`, whose message names the file and what is wrong, or a `VectorStoreError`
naming the Milvus URI) prints that one sentence to
stderr as `error: ...`, without a traceback, and exits 1. `HYDRA_FULL_ERROR=1` shows the full traceback instead.
"""

import logging
import math
import os
import sys
import traceback
from pathlib import Path
from typing import NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from towerrec.artifact.format import ArtifactError
from towerrec.artifact.milvus import VectorStoreError
from towerrec.data.schema import DataError
from towerrec.tasks.train import train
from towerrec.utils.hydra import metric_value

log = logging.getLogger("train")

BAD_INPUT = (DataError, ArtifactError, VectorStoreError)  # their message is the whole story: one sentence


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


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    failed = True
    try:
        metrics, _ = train(cfg)
        value = metric_value(metrics, cfg.get("optimized_metric"))
        failed = False
    except Exception as e:
        if not _in_multirun():
            if isinstance(e, BAD_INPUT) and os.environ.get("HYDRA_FULL_ERROR") != "1":
                _exit_with_sentence(e)
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


if __name__ == "__main__":
    main()
