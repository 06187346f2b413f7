"""Deadlines for LM calls: a forward pass that runs past its caller's time budget stops at the next decoder layer.

A served request waits for the LM at most its budget, then goes on without it; without a way to stop the call,
the forward pass would go on computing for nobody, holding its concurrency slot and the cores that the next
requests need. `with deadline(at):` sets a per-thread deadline (a `time.monotonic()` value); `watch(model)`
registers a forward pre-hook on each of the model's decoder layers that raises `DeadlineExceeded` once the
calling thread's deadline has passed (a few microseconds per layer, nothing without a deadline). Batch jobs,
evaluation and training set no deadline and are unaffected.
"""

from __future__ import annotations

import contextlib
import threading
import time

import torch

_local = threading.local()


class DeadlineExceeded(TimeoutError):
    """The calling thread's deadline passed during an LM forward pass."""


@contextlib.contextmanager
def deadline(at: float | None):
    """Within the block, LM forward passes in this thread stop (DeadlineExceeded) once time.monotonic() > at;
    None: no deadline."""
    previous = getattr(_local, "at", None)
    _local.at = at
    try:
        yield
    finally:
        _local.at = previous


def check() -> None:
    """Raise DeadlineExceeded if this thread's deadline has passed."""
    at = getattr(_local, "at", None)
    if at is not None and time.monotonic() > at:
        raise DeadlineExceeded(f"the LM call ran past its deadline by {(time.monotonic() - at) * 1000:.0f} ms")


def _layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder layers: the longest ModuleList in the model (model.model.layers for Llama-style LMs)."""
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise ValueError(f"{type(model).__name__} has no list of layers to watch for deadlines")
    return max(lists, key=len)


def watch(model: torch.nn.Module) -> torch.nn.Module:
    """Check the thread's deadline before every decoder layer of `model` (once per model); returns it."""
    if not getattr(model, "_towerrec_deadline_watched", False):
        for layer in _layers(model):
            layer.register_forward_pre_hook(lambda module, args: check())
        model._towerrec_deadline_watched = True
    return model
