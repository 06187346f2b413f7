"""LM calls under a deadline (towerrec.rerank.deadline): a watched model stops at its next decoder layer once the
calling thread's deadline has passed, and a served LM stage that runs late frees its slot at once instead of
computing on for nobody (towerrec.serving.components.BudgetedStage)."""

from __future__ import annotations

import time

import pytest
import torch

from towerrec.rerank import deadline as D
from towerrec.rerank.lm import build_tiny_lm
from towerrec.serving.components import BudgetedStage


@pytest.fixture(scope="module")
def model():
    model, _ = build_tiny_lm()
    return D.watch(model.eval())


def forward(model):
    with torch.inference_mode():
        return model(input_ids=torch.arange(1, 9)[None]).logits


def test_a_watched_model_stops_once_the_deadline_has_passed(model):
    assert forward(model).shape[:2] == (1, 8)  # no deadline: unaffected
    with D.deadline(time.monotonic() + 60):
        assert forward(model).shape[:2] == (1, 8)
    with D.deadline(time.monotonic() - 1), pytest.raises(D.DeadlineExceeded, match="past its deadline"):
        forward(model)
    assert forward(model).shape[:2] == (1, 8)  # the block restored "no deadline"
    hooks = sum(len(layer._forward_pre_hooks) for layer in model.model.layers)
    D.watch(model)
    assert sum(len(layer._forward_pre_hooks) for layer in model.model.layers) == hooks == len(model.model.layers)


def test_a_late_lm_call_frees_its_slot_within_the_budget(model):
    stage = BudgetedStage("rerank", max_concurrent=1)

    def long_call():  # forward passes for 5 s unless stopped
        end = time.monotonic() + 5
        while time.monotonic() < end:
            forward(model)
        return "finished"

    try:
        start = time.monotonic()
        assert stage.run(long_call, 0.1).reason == "timeout"
        while stage.run(lambda: "next", 1.0).reason == "busy" and time.monotonic() - start < 5:
            time.sleep(0.01)
        assert time.monotonic() - start < 1.0  # the late call stopped; without the deadline it holds the slot 5 s
        assert stage.run(lambda: "next", 1.0).value == "next"
    finally:
        stage.shutdown()


def test_a_model_without_layers_cannot_be_watched():
    with pytest.raises(ValueError, match="no list of layers"):
        D.watch(torch.nn.Linear(2, 2))
