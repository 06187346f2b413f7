"""CatalogRankingModule: the validation and test loop shared by the towers' LightningModules.

At the start of an evaluation epoch the subclass's `catalog_vectors()` embeds every product once (N, D); each
batch's users are embedded by `user_vectors(batch)` (B, D) and kept by `example_idx`; at the end the harness
(`towerrec.evaluation.evaluate`) ranks the full catalog for every user, under the configured protocol and,
with `eval.both_protocols`, the other one too (`<stage>_kept/...`: history items kept, RecBole's protocol).
It also holds what the modules share: the temperature, the logQ table, per-batch seeding and the optimizer
set-up (the subclass's `encoder_parameters()` in a parameter group of their own at `encoder_lr`, when set).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

import lightning as L
import numpy as np
import torch
from torch import nn

from towerrec import evaluation
from towerrec.data.splits import Examples
from towerrec.model import loss as losses


class CatalogRankingModule(L.LightningModule):
    def __init__(self, optimizer: Callable, scheduler: Callable | None, temperature: float, learn_temperature: bool,
                 item_counts: np.ndarray | None, eval_config: evaluation.EvalConfig | Mapping | None,
                 model_config: Mapping | None, encoder_lr: float | None = None):
        super().__init__()
        self.encoder_lr = encoder_lr
        self.eval_config = evaluation.EvalConfig.from_any(eval_config)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)), requires_grad=learn_temperature)
        self.item_counts = np.zeros(1) if item_counts is None else np.asarray(item_counts)
        counts = torch.as_tensor(self.item_counts, dtype=torch.float32)
        self.register_buffer("log_q", losses.log_q_from_counts(counts), persistent=False)  # (N,) logQ correction
        self._model_config = dict(model_config or {})
        self._eval_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._item_emb: torch.Tensor | None = None
        self.eval_metrics: dict[str, dict[str, float]] = {}  # stage -> harness metrics (unprefixed)
        self.protocol_metrics: dict[str, dict[str, float]] = {}  # stage -> the other protocol's, prefixed

    def _store_hparams(self) -> None:
        """Checkpoints carry the settings and the values that rebuild the towers (stage=export reads them)."""
        self.hparams.update(eval_config=dataclasses.asdict(self.eval_config), model_config=self._model_config)

    # ---- what a subclass provides ------------------------------------------------------------------
    def catalog_vectors(self) -> torch.Tensor:
        """(N, D) product vectors of the whole catalog."""
        raise NotImplementedError

    def user_vectors(self, batch: dict) -> torch.Tensor:
        """(B, D) user vectors of one evaluation batch."""
        raise NotImplementedError

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Text-encoder parameters that train at `encoder_lr` (none by default)."""
        return []

    # ---- shared ------------------------------------------------------------------------------------
    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp().clamp(0.005, 1.0)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # dropout draws depend only on (seed, epoch, batch, rank), not on whatever drew random numbers before
        # (data loader iterators, a resumed run's restore): an epoch replayed after a crash is bit-identical
        rank = self.trainer.global_rank if self._trainer is not None else 0
        torch.manual_seed(int(np.random.SeedSequence([self.hparams.seed, self.current_epoch, batch_idx,
                                                      rank]).generate_state(1)[0]))

    def param_groups(self) -> list[dict]:
        """The optimizer's parameter groups: the trainable text-encoder parameters at `encoder_lr` (when set and
        there are any), everything else that trains at the optimizer's own learning rate."""
        params = [p for p in self.parameters() if p.requires_grad]
        encoder = {id(p) for p in self.encoder_parameters() if p.requires_grad}
        if self.encoder_lr is None or not encoder:
            return [{"params": params}]
        return [{"params": [p for p in params if id(p) not in encoder]},
                {"params": [p for p in params if id(p) in encoder], "lr": float(self.encoder_lr)}]

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.param_groups())
        if self.scheduler_factory is None:
            return optimizer
        steps = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer=optimizer, num_training_steps=max(steps, 1))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _eval_start(self) -> None:
        self._item_emb = self.catalog_vectors().float()  # (N, D)
        self._eval_outputs = []

    def _eval_step(self, batch: dict) -> None:
        self._eval_outputs.append((batch["example_idx"], self.user_vectors(batch).float()))  # (B,), (B, D)

    def _eval_end(self, stage: str) -> dict[str, float]:
        dm = self.trainer.datamodule
        examples = dm.eval_examples[stage]
        idx = torch.cat([i for i, _ in self._eval_outputs])
        item_emb = self._item_emb
        user_emb = torch.empty(len(examples), item_emb.shape[1], device=self.device)  # (U, D)
        user_emb[idx] = torch.cat([q for _, q in self._eval_outputs])
        positions = Examples(np.arange(len(examples)), examples.histories, examples.targets)

        def scorer(histories, users):
            return (user_emb[torch.as_tensor(users, device=self.device)] @ item_emb.T).float().cpu()  # (B, N)

        cfg = self.eval_config
        common = dict(item_counts=self.item_counts, ks=cfg.ks, beyond_k=cfg.beyond_k, tie_seed=cfg.tie_seed)
        metrics = evaluation.evaluate(scorer, positions, item_emb.shape[0], exclude_history=cfg.exclude_history,
                                      item_categories=dm.split.catalog.top_category(), **common)
        self.protocol_metrics[stage] = {}
        if cfg.both_protocols:
            protocol, other = evaluation.other_protocol(cfg)
            m = evaluation.evaluate(scorer, positions, item_emb.shape[0], exclude_history=other.exclude_history,
                                    **common)
            self.protocol_metrics[stage] = evaluation.protocol_metrics(m, evaluation.stage_tag(stage), protocol)
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
        keep = {k: v for k, v in metrics.items() if k.split("@")[0] in evaluation.ACCURACY}
        self.log_dict({**evaluation.prefix(keep, "val"), **self.protocol_metrics["valid"]})

    def on_test_epoch_start(self) -> None:
        self._eval_start()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        metrics = self._eval_end("test")
        self.log_dict({**evaluation.prefix(metrics, "test"), **self.protocol_metrics["test"]})

    def run_metrics(self) -> dict[str, float]:
        """The valid and test metrics of the last evaluation, slash-prefixed, both protocols."""
        out: dict[str, float] = {}
        for stage in ("valid", "test"):
            out.update(evaluation.prefix(self.eval_metrics[stage], evaluation.stage_tag(stage)))
            out.update(self.protocol_metrics.get(stage, {}))
        return out
