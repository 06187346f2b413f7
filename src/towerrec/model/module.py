"""RetrievalModule: the two towers trained with in-batch sampled softmax, evaluated by full ranking.

Validation and test encode the whole catalog with the product tower, encode each user's history with the
user tower, and hand both to the foundation harness (`towerrec.evaluation.evaluate`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import lightning as L
import numpy as np
import torch
from torch import nn

from towerrec import evaluation
from towerrec.data.splits import Examples
from towerrec.model import loss as losses
from towerrec.model.encode import encode_tokens
from towerrec.model.towers import TwoTower


class RetrievalModule(L.LightningModule):
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
        super().__init__()
        self.eval_config = evaluation.EvalConfig.from_any(eval_config)
        self.save_hyperparameters(ignore=["model", "optimizer", "scheduler", "item_counts", "eval_config",
                                          "model_config"])
        # checkpoints carry the settings and the values that rebuild the towers (stage=export reads them back)
        self.hparams.update(eval_config=self.eval_config.kwargs(), model_config=dict(model_config or {}))
        self.model = model
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)), requires_grad=learn_temperature)
        counts = np.zeros(1) if item_counts is None else np.asarray(item_counts)
        self.register_buffer("log_q", losses.log_q_from_counts(torch.as_tensor(counts, dtype=torch.float32)), persistent=False)
        self.item_counts = counts
        self.memory = losses.CrossBatchMemory(memory_size) if memory_size else None
        self.automatic_optimization = cache_chunk_size is None
        self._eval_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._item_emb: torch.Tensor | None = None
        self.eval_metrics: dict[str, dict[str, float]] = {}

    # ---- training -----------------------------------------------------------------------------------
    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp().clamp(0.005, 1.0)

    def on_train_epoch_start(self) -> None:
        # dropout draws depend only on (seed, epoch): an epoch replayed after a crash is bit-identical
        torch.manual_seed(self.hparams.seed * 100_003 + self.current_epoch)

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

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params=params)
        if self.scheduler_factory is None:
            return optimizer
        steps = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer=optimizer, num_training_steps=max(steps, 1))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- evaluation ---------------------------------------------------------------------------------
    def _eval_start(self) -> None:
        dm = self.trainer.datamodule
        tower = self.model.item_tower
        self._item_emb = encode_tokens(tower, dm.item_tokens, dm.pad_id, tower.dim, batch_size=dm.eval_batch_size,
                                       device=self.device, item_idx=np.arange(len(dm.item_tokens)))  # (N, D)
        self._eval_outputs = []

    def _eval_step(self, batch: dict) -> None:
        q = self.model.embed_users(batch).float()  # (B, D)
        self._eval_outputs.append((batch["example_idx"], q))

    def _eval_end(self, stage: str) -> dict[str, float]:
        dm = self.trainer.datamodule
        examples = dm.eval_examples[stage]
        idx = torch.cat([i for i, _ in self._eval_outputs])
        user_emb = torch.empty(len(examples), self.model.dim, device=self.device)
        user_emb[idx] = torch.cat([q for _, q in self._eval_outputs])
        positions = Examples(np.arange(len(examples)), examples.histories, examples.targets)
        item_emb = self._item_emb

        def scorer(histories, users):
            return (user_emb[torch.as_tensor(users, device=self.device)] @ item_emb.T).float().cpu()  # (B, N)

        cfg = self.eval_config
        metrics = evaluation.evaluate(
            scorer, positions, item_emb.shape[0], item_counts=self.item_counts,
            item_categories=dm.split.catalog.top_category(), ks=cfg.ks, beyond_k=cfg.beyond_k,
            tie_seed=cfg.tie_seed, exclude_history=cfg.exclude_history,
        )
        self._eval_outputs, self._item_emb = [], None
        self.eval_metrics[stage] = metrics
        return metrics

    def on_validation_epoch_start(self) -> None:
        self._eval_start()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self._eval_outputs = []
            return
        metrics = self._eval_end("valid")
        keep = {k: v for k, v in metrics.items() if k.split("@")[0] in ("recall", "ndcg", "mrr")}
        self.log_dict(evaluation.prefix(keep, "val"))

    def on_test_epoch_start(self) -> None:
        self._eval_start()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        metrics = self._eval_end("test")
        self.log_dict(evaluation.prefix(metrics, "test"))
