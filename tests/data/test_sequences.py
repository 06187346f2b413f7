"""SequenceDataModule: training batches replay by (seed, epoch), shard across ranks, and cover every window;
batches drop only slots that are padding in every row, which leaves the users' vectors as they were; evaluation
batches cover every user once, shortest histories first."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from towerrec.data.sequences import SequenceDataModule, trim_padding
from towerrec.model.sequence import SequenceUserTower


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
        inputs, targets = dm.train_inputs[rows], dm.train_targets[rows]
        cut = inputs.shape[1] - batch["inputs"].shape[1]  # leading slots dropped: padding in every row
        assert (inputs[:, :cut] < 0).all() and (inputs[:, cut] >= 0).any()
        np.testing.assert_array_equal(batch["inputs"].numpy(), inputs[:, cut:])
        np.testing.assert_array_equal(batch["targets"].numpy(), targets[:, cut:])
    return [r for rows in index_batches for r in rows]


def test_ranks_see_disjoint_halves_of_one_epoch(tiny_split):
    whole = _rows(_module(tiny_split), 0)
    halves = [_rows(_module(tiny_split, 2, r), 0) for r in (0, 1)]
    assert len(whole) == len(set(whole)) and len(halves[0]) == len(halves[1]) > 0
    assert not set(halves[0]) & set(halves[1]) and set(halves[0]) | set(halves[1]) <= set(whole)


def test_trim_padding_keeps_the_slots_any_row_uses():
    windows = torch.tensor([[-1, -1, -1, 4, 5], [-1, -1, 2, 3, 1]])
    other = torch.arange(10).view(2, 5)
    w, o = trim_padding(windows, other)
    assert w.tolist() == [[-1, 4, 5], [2, 3, 1]] and o.tolist() == [[2, 3, 4], [7, 8, 9]]
    assert trim_padding(torch.full((2, 3), -1))[0].shape == (2, 1)  # all padding: one slot stays


def test_trimmed_windows_give_the_users_vectors_of_full_windows():
    torch.manual_seed(0)
    tower = SequenceUserTower(8, 6, layers=2, heads=2, dropout=0.0).eval()
    table = torch.nn.functional.normalize(torch.randn(10, 8), dim=-1)
    windows = torch.tensor([[-1, -1, -1, -1, 4, 5], [-1, -1, -1, 2, 3, 1]])
    with torch.no_grad():
        full, trimmed = tower.embed_windows(table, windows), tower.embed_windows(table, trim_padding(windows)[0])
    torch.testing.assert_close(trimmed, full, atol=1e-6, rtol=1e-5)


def test_eval_batches_cover_every_user_once_shortest_first(tiny_split):
    dm = _module(tiny_split)
    dm.eval_batch_size = 16
    seen, lengths = [], []
    for batch in dm.val_dataloader():
        idx, windows = batch["example_idx"].numpy(), batch["windows"].numpy()
        full = dm.eval_windows["valid"][idx]
        np.testing.assert_array_equal(windows, full[:, full.shape[1] - windows.shape[1]:])
        assert (full[:, : full.shape[1] - windows.shape[1]] < 0).all()
        seen += idx.tolist()
        lengths += (windows >= 0).sum(1).tolist()
    assert sorted(seen) == list(range(len(dm.eval_windows["valid"])))
    assert lengths == sorted(lengths) and lengths[0] < lengths[-1]


def test_length_pool_batches_similar_lengths_and_covers_the_same_windows(tiny_split):
    plain, pooled = _module(tiny_split), SequenceDataModule(tiny_split, max_len=6, batch_size=8, seed=3,
                                                            length_pool=4)
    pooled.trainer = plain.trainer
    pooled.setup("fit")
    rows, n = _rows(pooled, 0), len(pooled.train_inputs)
    assert len(rows) == len(set(rows)) == len(_rows(plain, 0)) > n - 8  # every window once but the last partial batch

    def padded_slots(dm):
        return sum(int((b < 0).sum()) for b in _batches(dm, 0))

    assert padded_slots(pooled) < padded_slots(plain)
