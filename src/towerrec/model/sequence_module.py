"""SequenceModule: the sequence towers trained causally, every slot of every window predicting its next item.

Negatives (`loss.kind`): `inbatch` (default) — every distinct next item of the batch is a column of the sampled
softmax shared by all slots, logQ-corrected by training popularity (under DDP, the next items of every rank's
batch: `losses.gather_uneven`); `full` — a softmax over the whole catalog. Evaluation is `CatalogRankingModule`'s
(full ranking, both protocols).

When the text encoder trains (`model.text_encoder.train` top_layers / full: the product tower has a
`text_module`), each step computes the text vectors of the batch's distinct items (history inputs and targets)
with grad through the encoder. The rest of the catalog is the stored table, refreshed without grad when the
catalog is evaluated (each epoch's validation) and at the start of an epoch after steps it has not seen. With
`loss=inbatch` every column is a batch item, computed now. With `loss=full` the columns are the stored table's
values, the batch items' with the gradient of their fresh vectors (straight through): columns of fresh values
among stale ones would let the encoder lower the loss by moving the batch's items away from the table (measured
on Scientific: 5.7 nats on training batches for 7.6 once the table was refreshed), which the refreshed table
of evaluation takes back. The encoder's layers train at `encoder_lr` (their own parameter group).
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
        encoder_lr: float | None = None,  # learning rate of the text encoder's trained layers (None: optimizer's)
        progress: bool = False,  # a progress bar over the catalog refresh of a training text encoder
    ):
        if loss_kind not in LOSSES:
            raise ValueError(f"loss.kind must be one of {LOSSES} for the sequence towers, got {loss_kind!r}")
        super().__init__(optimizer, scheduler, temperature, learn_temperature, item_counts, eval_config, model_config,
                         encoder_lr)
        self.save_hyperparameters(ignore=["model", "optimizer", "scheduler", "item_counts", "eval_config",
                                          "model_config", "progress"])
        self._store_hparams()
        self.model = model
        self.progress = progress
        self._refreshed_at = 0  # global step of the last catalog refresh (built: step 0); kept in checkpoints

    @property
    def text_module(self):
        return self.model.items.text_module

    def encoder_parameters(self) -> list:
        return [] if self.text_module is None else list(self.text_module.parameters())

    def slot_loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """inputs, targets (B, L) positions (-1: padding / no target) -> the mean loss over predicting slots."""
        items, real = self.model.items, targets >= 0  # (B, L)
        full, table = self.hparams.loss_kind == "full", None
        t = targets[real]  # (P,)
        every_t = t if full else losses.gather_uneven(t)  # (P_all,) in-batch columns: every rank's next items
        if self.text_module is None:  # frozen text vectors: everything is the stored table
            states, table, columns_of = self.model.user_states(inputs), None, items
        else:  # the batch's distinct items computed now, with grad through the text encoder
            distinct = torch.unique(torch.cat([inputs[inputs >= 0], every_t]))  # (U,)
            text = self.text_module(distinct).to(items.text.dtype)  # (U, H)
            fresh = items.with_text(distinct, text)  # (U, D)
            local = torch.zeros(items.num_items, dtype=torch.long, device=distinct.device)
            local[distinct] = torch.arange(len(distinct), device=distinct.device)  # position -> row of fresh
            states = self.model.user_states(torch.where(inputs >= 0, local[inputs.clamp_min(0)], -1), fresh)
            if full:  # the stored table's values; the batch's rows carry their fresh vectors' gradient
                straight = items.with_text(distinct, items.text[distinct] + (text - text.detach()))  # (U, D)
                table = items.all()  # (N, D)
                table = table.index_copy(0, distinct, straight.to(table.dtype))  # autocast may give bf16
            else:
                def columns_of(idx):
                    return fresh[local[idx]]  # (C, D)
        q = states[real]  # (P, D)
        if full:
            return losses.full_softmax_loss(q, items.all() if table is None else table, t, self.temperature)
        columns = torch.unique(every_t)  # (C,): each next item once
        labels = torch.searchsorted(columns, t)  # (P,) each slot's own next item among them
        log_q = self.log_q[columns] if self.hparams.log_q_correction and len(self.log_q) > 1 else None
        return losses.in_batch_softmax_loss(q, columns_of(columns), columns, self.temperature, log_q, labels,
                                            mask_accidental_hits=False)  # distinct columns: no accidental hits

    def refresh_catalog(self) -> None:
        """Recompute the stored catalog text vectors by the training text encoder (no grad)."""
        self.model.items.refresh_text(self.progress)
        self._refreshed_at = self.global_step

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        if self.text_module is not None and self._refreshed_at != self.global_step:
            self.refresh_catalog()  # steps since the last refresh (no validation after them)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["catalog_refreshed_at"] = self._refreshed_at  # the stored table (items.text) is from that step

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._refreshed_at = checkpoint.get("catalog_refreshed_at", -1)  # unknown: refresh before training on

    def training_step(self, batch: dict, batch_idx: int):
        loss = self.slot_loss(batch["inputs"], batch["targets"])
        predicting = int((batch["targets"] >= 0).sum())
        self.log("train/loss", loss, prog_bar=True, batch_size=predicting)
        self.log("train/temperature", self.temperature.detach(), batch_size=predicting)
        return loss

    def catalog_vectors(self) -> torch.Tensor:
        if self.text_module is not None:
            self.refresh_catalog()
        return self.model.items.all()  # (N, D)

    def user_vectors(self, batch: dict) -> torch.Tensor:
        return self.model.embed_users(batch["windows"])  # (B, D)
