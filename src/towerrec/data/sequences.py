"""LightningDataModule for the sequence towers: item-position windows, every slot predicting the next item.

Training sequences (each user's items before the validation target) are cut from their newest end into windows
of `max_len + 1` items (consecutive windows share one item, so every transition is used once); a window gives
inputs = items[:-1] and targets = items[1:], right-aligned with -1 padding on the left. Training batches are
shuffled by (seed, epoch) alone and sharded across DDP ranks (the two-tower's `BucketBatchSampler`), so an epoch
replayed after a crash sees the same batches. `length_pool` > 1 sorts each pool of that many batches by window
length before batching (batches of similar length, far fewer padded slots: most histories are short); 1 (the
default) batches windows in their shuffled order. Validation and test batches carry one right-aligned history
window per user (`example_idx` says which example), users ordered by history length so that batches are of
similar length. Every batch drops its leading slots that are padding in all of its
rows (`trim_padding`): padding never changes a slot's vector, and the transformer's cost grows with the window.
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader

from towerrec.data.datamodule import BucketBatchSampler
from towerrec.data.splits import Split
from towerrec.data.windows import right_aligned, training_windows, trim_padding


class SequenceDataModule(L.LightningDataModule):
    def __init__(self, split: Split, max_len: int = 50, batch_size: int = 128, eval_batch_size: int = 512,
                 seed: int = 0, num_workers: int = 0, length_pool: int = 1):
        super().__init__()
        self.split, self.max_len, self.seed = split, max_len, seed
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        if length_pool < 1:
            raise ValueError(f"model.datamodule.length_pool must be >= 1, got {length_pool}")
        self.length_pool = length_pool
        self._prepared = False

    def setup(self, stage: str | None = None) -> None:
        if self._prepared:
            return
        windows = training_windows(self.split.train_sequences(), self.max_len)  # (W, L + 1)
        inputs, targets = windows[:, :-1], windows[:, 1:].copy()
        targets[inputs < 0] = -1  # a padded slot predicts nothing
        self.train_inputs, self.train_targets = inputs, targets
        self.eval_examples = {s: self.split.examples(s) for s in ("valid", "test")}
        self.eval_windows = {s: right_aligned(ex.histories, self.max_len) for s, ex in self.eval_examples.items()}
        self._prepared = True

    def train_dataloader(self) -> DataLoader:
        data = torch.utils.data.TensorDataset(torch.from_numpy(self.train_inputs), torch.from_numpy(self.train_targets))
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)
        sampler = BucketBatchSampler((self.train_inputs >= 0).sum(1), self.batch_size, self.seed,
                                     pool=self.length_pool, num_replicas=world, rank=rank)
        return DataLoader(data, batch_sampler=sampler, num_workers=self.num_workers, collate_fn=_collate_train)

    def _eval_loader(self, stage: str) -> DataLoader:
        windows = torch.from_numpy(self.eval_windows[stage])  # (U, L)
        order = torch.argsort((windows >= 0).sum(1), stable=True)  # shortest histories first
        data = torch.utils.data.TensorDataset(order, windows[order])
        return DataLoader(data, batch_size=self.eval_batch_size, collate_fn=_collate_eval,
                          num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("valid")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")


def _collate_train(rows) -> dict:
    inputs, targets = trim_padding(*map(torch.stack, zip(*rows)))
    return {"inputs": inputs, "targets": targets}  # (B, L') each


def _collate_eval(rows) -> dict:
    idx, windows = zip(*rows)
    return {"example_idx": torch.stack(idx), "windows": trim_padding(torch.stack(windows))[0]}  # (B,), (B, L')
