"""SequenceDataModule: training batches replay by (seed, epoch), shard across ranks, and cover every window."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from towerrec.data.sequences import SequenceDataModule


def _batches(dm: SequenceDataModule, epoch: int) -> list[np.ndarray]:
    loader = dm.train_dataloader()
    loader.batch_sampler.set_epoch(epoch)  # what Lightning calls at every epoch start
    return [batch["inputs"].numpy() for batch in loader]


def _module(split, world: int = 1, rank: int = 0) -> SequenceDataModule:
    dm = SequenceDataModule(split, max_len=6, batch_size=8, seed=3)
    dm.trainer = SimpleNamespace(world_size=world, global_rank=rank)
    dm.setup("fit")
    return dm


def test_an_epoch_replays_the_same_batches_and_the_next_epoch_reshuffles(tiny_split):
    dm = _module(tiny_split)
    first, again = _batches(dm, 1), _batches(_module(tiny_split), 1)  # a fresh module, as after a restart
    assert len(first) == len(dm.train_inputs) // 8 > 2  # full batches only
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, b) for a, b in zip(first, _batches(dm, 2)))


def _rows(dm: SequenceDataModule, epoch: int) -> list[int]:
    """The window indices the loader draws in `epoch`, checked against the batches it yields."""
    loader = dm.train_dataloader()
    loader.batch_sampler.set_epoch(epoch)
    index_batches = list(loader.batch_sampler)
    for rows, batch in zip(index_batches, loader, strict=True):
        np.testing.assert_array_equal(batch["inputs"].numpy(), dm.train_inputs[rows])
        np.testing.assert_array_equal(batch["targets"].numpy(), dm.train_targets[rows])
    return [r for rows in index_batches for r in rows]


def test_ranks_see_disjoint_halves_of_one_epoch(tiny_split):
    whole = _rows(_module(tiny_split), 0)
    halves = [_rows(_module(tiny_split, 2, r), 0) for r in (0, 1)]
    assert len(whole) == len(set(whole)) and len(halves[0]) == len(halves[1]) > 0
    assert not set(halves[0]) & set(halves[1]) and set(halves[0]) | set(halves[1]) <= set(whole)
