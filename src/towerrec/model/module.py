"""RetrievalModule: the text two towers trained with in-batch sampled softmax, evaluated by full ranking.

Validation and test encode the whole catalog with the product tower and each user's history text with the
user tower (`CatalogRankingModule` runs the harness on them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np
import torch

from towerrec import evaluation
from towerrec.model import loss as losses
from towerrec.model.encode import encode_tokens
from towerrec.model.ranking import CatalogRankingModule
from towerrec.model.towers import TwoTower


class RetrievalModule(CatalogRankingModule):
    def __init__(
        self,
        model: TwoTower,
        optimizer: Callable,  # partial: params -> torch.optim.Optimizer
        scheduler: Callable | None = None,  # partial: (optimizer, num_training_steps) -> LR scheduler
        temperature: float = 0.05,
        learn_temperature: bool = False,
        log_q_correction: bool = True,
        mask_accidental_hits: bool = True,
        memory_size: int = 0,  # cross-batch memory of recent item embeddings (extra negatives)
        cache_chunk_size: int | None = None,  # GradCache: embed this many rows at a time
        item_counts: np.ndarray | None = None,
        eval_config: evaluation.EvalConfig | Mapping | None = None,
        seed: int = 0,
        model_config: Mapping | None = None,  # what rebuilds `model` (plain `model` and `text` config values)
    ):
        super().__init__(optimizer, scheduler, temperature, learn_temperature, item_counts, eval_config, model_config)
        self.save_hyperparameters(ignore=["model", "optimizer", "scheduler", "item_counts", "eval_config",
                                          "model_config"])
        self._store_hparams()
        self.model = model
        self.memory = losses.CrossBatchMemory(memory_size) if memory_size else None
        self.automatic_optimization = cache_chunk_size is None

    # ---- training -----------------------------------------------------------------------------------
    def _loss(self, q: torch.Tensor, items: torch.Tensor, ids: torch.Tensor, num_pos: int) -> torch.Tensor:
        """q (B, D) users; items (B + U, D): positives then the datamodule's uniform negatives; ids (B + U,).

        Under DDP the item rows of every rank are gathered ([pos_0, neg_0, pos_1, neg_1, ...]) and
        `losses.rank_offset_labels` points each query at its positive among them.
        """
        h = self.hparams
        log_q = None
        if h.log_q_correction and len(self.log_q) > 1:
            log_q = self.log_q[ids].clone()  # (M,)
            log_q[num_pos:] = -math.log(len(self.log_q))  # uniform negatives: q = 1/N
        distributed = self._trainer is not None and self._trainer.world_size > 1
        # B positives + U negatives on every rank; one rank: arange(B)
        labels = losses.rank_offset_labels(len(q), self.global_rank if distributed else 0,
                                           columns_per_rank=len(items), device=q.device)  # (B,)
        if distributed:  # items of every rank, with gradients
            items = losses.gather_with_grad(items)  # (world * M, D)
            ids = losses.gather_with_grad(ids)
            log_q = losses.gather_with_grad(log_q) if log_q is not None else None
        if self.memory is not None and len(self.memory):
            mem_emb, mem_ids = self.memory.get()
            items = torch.cat([items, mem_emb.to(items)])
            ids = torch.cat([ids, mem_ids.to(ids)])
            if log_q is not None:
                log_q = torch.cat([log_q, self.log_q[mem_ids.to(ids.device)]])
        return losses.in_batch_softmax_loss(q, items, ids, self.temperature, log_q, labels, h.mask_accidental_hits)

    def training_step(self, batch: dict, batch_idx: int):
        ids, num_pos = batch["item"]["item_idx"], batch["num_positives"]
        if self.automatic_optimization:
            q = self.model.embed_users(batch["user"])  # (B, D)
            items = self.model.embed_items(batch["item"])  # (M, D)
            loss = self._loss(q, items, ids, num_pos)
        else:
            opt = self.optimizers()
            opt.zero_grad()
            size = self.hparams.cache_chunk_size
            loss = losses.cached_loss_backward(
                self.model.embed_users, self.model.embed_items,
                losses.split_into_chunks(batch["user"], size), losses.split_into_chunks(batch["item"], size),
                lambda q, items: self._loss(q, items, ids, num_pos),
            )
            opt.step()
            sched = self.lr_schedulers()
            if sched is not None:
                sched.step()
            items = None
        if self.memory is not None:
            emb = items if items is not None else None
            if emb is None:
                with torch.no_grad():
                    emb = self.model.embed_items(batch["item"])
            self.memory.enqueue(emb[:num_pos].detach(), ids[:num_pos])
        self.log("train/loss", loss, prog_bar=True, batch_size=num_pos)
        self.log("train/temperature", self.temperature.detach(), batch_size=num_pos)
        return loss

    # ---- evaluation (CatalogRankingModule) ---------------------------------------------------------
    def catalog_vectors(self) -> torch.Tensor:
        dm = self.trainer.datamodule
        tower = self.model.item_tower
        return encode_tokens(tower, dm.item_tokens, dm.pad_id, tower.dim, batch_size=dm.eval_batch_size,
                             device=self.device, item_idx=np.arange(len(dm.item_tokens)))  # (N, D)

    def user_vectors(self, batch: dict) -> torch.Tensor:
        return self.model.embed_users(batch)  # (B, D)
