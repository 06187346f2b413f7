"""The sequence towers' in-batch loss under DDP (2 gloo processes): each rank's softmax columns are the next items
of every rank's batch, gathered even when the ranks hold different numbers of predicting slots."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import torch
from test_sequence_module import build  # the tiny sequence setting through the real config

from towerrec.model import loss as losses

WORLD = 2


def _halves(module, datamodule):
    """One training batch split unevenly between the ranks: [(inputs, targets)] per rank."""
    batch = next(iter(datamodule.train_dataloader()))
    cut = 6  # of 16 windows
    return [(batch["inputs"][:cut], batch["targets"][:cut]), (batch["inputs"][cut:], batch["targets"][cut:])]


def _worker(rank: int, init_file: str, out_dir: str, module, halves) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        inputs, targets = halves[rank]
        with torch.no_grad():
            every = losses.gather_uneven(targets[targets >= 0])
            loss = module.slot_loss(inputs, targets)
        torch.save({"targets": every, "loss": loss}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_each_rank_scores_against_every_ranks_next_items(compose_cfg, tmp_path, monkeypatch):
    import torch.multiprocessing as mp

    module, datamodule = build(compose_cfg, tmp_path, [])
    module.eval()  # no dropout: the same loss in the workers and here
    datamodule.setup("fit")
    halves = _halves(module, datamodule)
    method = "fork" if sys.platform == "linux" else "spawn"  # fork: the children inherit the built module
    context = mp.start_processes(_worker, args=(str(tmp_path / "init"), str(tmp_path), module, halves),
                                 nprocs=WORLD, join=False, start_method=method)
    deadline = time.monotonic() + 120
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the gloo workers did not finish in 120 s")
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    every = torch.cat([t[t >= 0] for _, t in halves])
    assert len(halves[0][1][halves[0][1] >= 0]) != len(halves[1][1][halves[1][1] >= 0])  # uneven ranks
    for r in range(WORLD):
        assert torch.equal(results[r]["targets"], every)
    with torch.no_grad():
        local = [module.slot_loss(*halves[r]) for r in range(WORLD)]  # one process: own columns only
        monkeypatch.setattr(losses, "gather_uneven", lambda t: every)
        global_ = [module.slot_loss(*halves[r]) for r in range(WORLD)]
    for r in range(WORLD):
        torch.testing.assert_close(results[r]["loss"], global_[r], rtol=1e-5, atol=1e-6)
        assert not torch.isclose(global_[r], local[r], rtol=1e-4)  # the other rank's columns count
