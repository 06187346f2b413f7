"""Test-only Lightning callback that simulates a hard crash (OOM killer, preemption): SIGKILL mid-epoch.

Added to a run from the command line, with tests/ on PYTHONPATH:
    python train.py ... +callbacks.crash._target_=helpers.crash_callback.KillAt +callbacks.crash.epoch=1 \
        +callbacks.crash.batch=3
SIGKILL cannot be caught, so nothing is flushed or saved: the run ends exactly as after a power cut.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning as L


class KillAt(L.Callback):
    """SIGKILL this process when training batch `batch` of epoch `epoch` is about to run.

    If `require_last_ckpt` (default), the checkpoint callback's `last.ckpt` must exist by then, so a test
    can resume from it; if it does not, this raises instead of killing, which fails the run loudly.
    """

    def __init__(self, epoch: int, batch: int, require_last_ckpt: bool = True):
        self.epoch, self.batch, self.require_last_ckpt = int(epoch), int(batch), require_last_ckpt

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if trainer.current_epoch != self.epoch or batch_idx != self.batch:
            return
        if self.require_last_ckpt:
            ckpt = trainer.checkpoint_callback
            last = Path(ckpt.dirpath) / f"{ckpt.CHECKPOINT_NAME_LAST}{ckpt.FILE_EXTENSION}" if ckpt else None
            if last is None or not last.is_file():
                raise RuntimeError(f"KillAt: no last checkpoint at {last} before epoch {self.epoch} batch {self.batch}")
        os.kill(os.getpid(), signal.SIGKILL)


class FailInJob(L.Callback):
    """Raise at the start of training in sweep job number `job` only (Hydra's `hydra.job.num`): a trial that
    crashes while the others succeed, whatever values the sweeper picks."""

    def __init__(self, job: int):
        self.job = int(job)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.get().job.num == self.job:
            raise RuntimeError(f"FailInJob: simulated crash in job {self.job}")
