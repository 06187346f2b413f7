"""Helpers of the service tests (tests/test_serve.py): a tiny exported artifact, a real uvicorn server in a
thread on an ephemeral port, and LM test doubles (a fast deterministic reranker, a deliberately slow one,
a failing one, explainers whose output is or is not grounded)."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch
import uvicorn

from towerrec.artifact.export import export_artifact
from towerrec.data.text import TextConfig, render_items
from towerrec.model.encoders import load_encoder
from towerrec.model.towers import TwoTower
from towerrec.rerank.reranker import RerankResult

TINY_BERT = {"vocab_size": 300, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 32, "max_position_embeddings": 128}
TEXT = TextConfig(user_max_items=3, user_max_tokens=48)


def export_tiny_artifact(out: Path, split) -> Path:
    """A random-init two-tower model (no training: serving does not care how good the vectors are) exported
    with the split's known users."""
    torch.manual_seed(0)
    encoder, tokenizer = load_encoder({"random_init": dict(TINY_BERT)}, corpus=render_items(split.catalog, TEXT))
    model = TwoTower(encoder, projection_dim=12).eval()
    return export_artifact(out, model, tokenizer, split, TEXT, item_max_length=32, user_max_length=48,
                              train_cfg={}, metrics={}, batch_size=32, progress=False)


class ServerThread:
    """`with ServerThread(app) as server:` a real uvicorn server on 127.0.0.1, port chosen by the OS."""

    def __init__(self, app, timeout: float = 60.0):
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", log_config=None,
                                timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.timeout = timeout
        self.thread = threading.Thread(target=self.server.run, name="test-uvicorn", daemon=True)

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + self.timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def wait_ready(self, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            r = httpx.get(self.url + "/readyz", timeout=10)
            if r.status_code == 200:
                return r.json()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the service did not get ready: {r.json()}")
            time.sleep(0.05)

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)


# ------------------------------------------------------------------------------------------ LM doubles


class ReverseReranker:
    """Deterministic: the LM 'prefers' the retrieval order reversed (lm_score = fused_score = position)."""

    def __init__(self):
        self.calls: list[dict] = []

    def rank(self, history, candidates, query=None):
        self.calls.append({"history": history, "candidates": candidates, "query": query})
        scores = np.arange(len(candidates), dtype=np.float64)
        return RerankResult(order=np.arange(len(candidates), dtype=np.int64)[::-1], lm_score=scores,
                            fused_score=scores.copy())


class SlowReranker(ReverseReranker):
    """Takes `delay` seconds per call: longer than any budget the tests give it."""

    def __init__(self, delay: float):
        super().__init__()
        self.delay = delay
        self.finished = threading.Event()

    def rank(self, history, candidates, query=None):
        time.sleep(self.delay)
        out = super().rank(history, candidates, query)
        self.finished.set()
        return out


class ForeignReranker(ReverseReranker):
    """Answers something other than a ranking of its candidates: an order with one dropped, one twice or an
    index out of range, scores of the wrong length, or the old protocol's list of dicts."""

    CHANGES = ("drop", "duplicate", "unknown", "scores", "dicts")

    def __init__(self, change: str):
        super().__init__()
        assert change in self.CHANGES, change
        self.change = change

    def rank(self, history, candidates, query=None):
        out = super().rank(history, candidates, query)
        order = out.order
        if self.change == "drop":
            return dataclasses.replace(out, order=order[:-1])
        if self.change == "duplicate":
            return dataclasses.replace(out, order=np.concatenate([order[:-1], order[:1]]))
        if self.change == "unknown":
            return dataclasses.replace(out, order=np.concatenate([order[:-1], [len(candidates)]]))
        if self.change == "scores":
            return dataclasses.replace(out, lm_score=out.lm_score[:-1])
        return [{**candidates[i], "lm_score": 0.0, "fused_score": 0.0} for i in order]


class FailingReranker:
    def rank(self, history, candidates, query=None):
        raise RuntimeError("the LM fell over")


class Explanation:
    def __init__(self, text, grounded, flagged=(), attempts=1):
        self.text, self.grounded, self.flagged, self.attempts = text, grounded, list(flagged), attempts


class TitleExplainer:
    """Grounded by construction: it only repeats the product's title and the newest history title."""

    def __init__(self, items=None):
        self.items = items

    def explain(self, history, item):
        last = history[-1]["title"] if history else "your searches"
        return Explanation(f"{item['title']} goes with {last}.", True)

    def explain_many(self, history, items):
        return [self.explain(history, item) for item in items]

    def describe(self, history, item):
        return Explanation(f"{item['title']}: picked for you.", True)


class InventingExplainer(TitleExplainer):
    """Always ungrounded (the explainer's own check flagged an invented brand after 3 attempts)."""

    def explain(self, history, item):
        return Explanation("Made by Acme, the best brand.", False, ["brand: Acme"], attempts=3)  # text must not show

    def describe(self, history, item):
        return Explanation(None, False, ["number: $5"], attempts=3)


class Switch:
    """A stand-in whose behaviour a test swaps: every call goes to `impl` (a reranker or an explainer)."""

    def __init__(self, impl):
        self.default = self.impl = impl

    def reset(self):
        self.impl = self.default

    def __getattr__(self, name):
        return getattr(self.impl, name)
