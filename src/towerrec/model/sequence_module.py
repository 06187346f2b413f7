"""SequenceModule: the sequence towers trained causally, every slot of every window predicting its next item.

Negatives (`loss.kind`): `inbatch` (default) — every distinct next item of the batch is a column of the sampled
softmax shared by all slots, logQ-corrected by training popularity; `full` — a softmax over the whole catalog.
Evaluation is `CatalogRankingModule`'s (full ranking, both protocols).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch

from towerrec import evaluation
from towerrec.model import loss as losses
from towerrec.model.ranking import CatalogRankingModule
from towerrec.model.sequence import SequenceRecommender

LOSSES = ("inbatch", "full")


class SequenceModule(CatalogRankingModule):
    def __init__(
        self,
        model: SequenceRecommender,
        optimizer: Callable,
        scheduler: Callable | None = None,
        temperature: float = 0.05,
        learn_temperature: bool = False,
        loss_kind: str = "inbatch",
        log_q_correction: bool = True,
        item_counts: np.ndarray | None = None,
        eval_config: evaluation.EvalConfig | Mapping | None = None,
        seed: int = 0,
        model_config: Mapping | None = None,
    ):
        if loss_kind not in LOSSES:
            raise ValueError(f"loss.kind must be one of {LOSSES} for the sequence towers, got {loss_kind!r}")
        super().__init__(optimizer, scheduler, temperature, learn_temperature, item_counts, eval_config, model_config)
        self.save_hyperparameters(ignore=["model", "optimizer", "scheduler", "item_counts", "eval_config",
                                          "model_config"])
        self._store_hparams()
        self.model = model

    def slot_loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """inputs, targets (B, L) positions (-1: padding / no target) -> the mean loss over predicting slots."""
        states = self.model.user_states(inputs)  # (B, L, D)
        real = targets >= 0  # (B, L)
        q, t = states[real], targets[real]  # (P, D), (P,)
        if self.hparams.loss_kind == "full":
            return losses.full_softmax_loss(q, self.model.items.all(), t, self.temperature)
        columns, labels = torch.unique(t, return_inverse=True)  # (U,), (P,): each next item once
        log_q = self.log_q[columns] if self.hparams.log_q_correction and len(self.log_q) > 1 else None
        return losses.in_batch_softmax_loss(q, self.model.items(columns), columns, self.temperature, log_q, labels,
                                            mask_accidental_hits=False)  # distinct columns: no accidental hits

    def training_step(self, batch: dict, batch_idx: int):
        loss = self.slot_loss(batch["inputs"], batch["targets"])
        predicting = int((batch["targets"] >= 0).sum())
        self.log("train/loss", loss, prog_bar=True, batch_size=predicting)
        self.log("train/temperature", self.temperature.detach(), batch_size=predicting)
        return loss

    def catalog_vectors(self) -> torch.Tensor:
        return self.model.items.all()  # (N, D)

    def user_vectors(self, batch: dict) -> torch.Tensor:
        return self.model.embed_users(batch["windows"])  # (B, D)
