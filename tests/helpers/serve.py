"""Helpers of the service tests (tests/serving/): tiny exported artifacts (a text two-tower one, and sequence
ones with and without the product text path), a real uvicorn server in a thread on an ephemeral port, LM test
doubles (a fast deterministic reranker, a deliberately slow one, a failing one, explainers whose output is or
is not grounded), and the raw fuzz cases (`probe`: odd bodies, paths and tokens, mid-body disconnects) that
tests/serving/test_fuzz.py and bench/serve_fuzz.py send."""

from __future__ import annotations

import collections
import dataclasses
import json
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch
import uvicorn

from towerrec.artifact.export import export_artifact, export_sequence_artifact
from towerrec.data.text import TextConfig, render_items
from towerrec.model.encoders import load_encoder
from towerrec.model.sequence import ItemEncoder, SequenceRecommender, SequenceUserTower
from towerrec.model.text_vectors import text_vectors
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


SEQUENCE_MAX_LEN = 4  # shorter than the tiny split's histories: the window keeps the newest items


def export_tiny_sequence_artifact(out: Path, split, text: bool = True) -> Path:
    """Untrained sequence towers (dim 16, max_len SEQUENCE_MAX_LEN) exported with the split's known users:
    `text` True, frozen text vectors of a random-init BERT + learned item ids with the product text path
    (free-text queries; model=sequence_ids), False an id-only model (model=sasrec: no text path)."""
    torch.manual_seed(0)
    vectors = encoder = tokenizer = None
    if text:
        vectors, encoder, tokenizer = text_vectors({"random_init": dict(TINY_BERT)}, render_items(split.catalog, TEXT),
                                                   max_length=32, pooling="mean", progress=False)
    items = ItemEncoder(vectors, TINY_BERT["hidden_size"], num_items=split.num_items, item_ids=True,
                        item_counts=split.item_counts())
    users = SequenceUserTower(TINY_BERT["hidden_size"], SEQUENCE_MAX_LEN, layers=1, heads=2, dropout=0.1)
    model = SequenceRecommender(items, users).eval()
    return export_sequence_artifact(out, model, split, TEXT, encoder=encoder, tokenizer=tokenizer, pooling="mean",
                                    text_max_length=32, train_cfg={}, metrics={})


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


# ------------------------------------------------------------------------------------------ raw fuzz cases


@dataclasses.dataclass(frozen=True)
class RawCase:
    """One request sent as raw bytes (no client-side JSON encoding, so invalid JSON reaches the server)."""

    name: str
    method: str
    path: str
    body: bytes | None = None
    content_type: str | None = "application/json"


POST_ENDPOINTS = ("/recommend", "/similar-items", "/describe", "/admin/reload")


def fuzz_bodies(max_body_bytes: int) -> dict[str, bytes]:
    """Bodies no endpoint may answer with a 5xx: non-finite and huge numbers, lone surrogates, NUL and
    control characters, deep nesting, bodies over the limit, non-UTF-8 bytes, JSON that is not an object."""
    deep_list = b"[" * 5000 + b"]" * 5000
    return {
        "nan": b'{"k": NaN}', "infinity": b'{"k": Infinity}', "minus_infinity": b'{"k": -Infinity}',
        "1e309": b'{"k": 1e309}', "minus_1e309": b'{"item_id": "x", "k": -1e309}',
        "nan_nested": b'{"filters": {"price_max": NaN}, "item_id": "x"}', "nan_in_list": b'{"history": [NaN]}',
        "nan_bare": b"NaN", "inf_price_1e400": b'{"filters": {"price_min": 1e400}}',
        "lone_surrogate": b'{"query": "\\ud800", "item_id": "\\ud800"}', "lone_low_surrogate": b'{"path": "\\udc00"}',
        "surrogate_key": b'{"\\ud800": 1}', "surrogate_in_list": b'{"history": ["a", "\\udfff"]}',
        "nul_in_string": b'{"query": "a\\u0000b", "item_id": "\\u0000", "path": "\\u0000"}',
        "control_chars": b'{"query": "\\u0001\\u001b[31m\\u007f", "item_id": "\\u0007"}',
        "raw_control_char": b'{"query": "a\x01b"}', "raw_nul_after_body": b'{"k": 1}\x00',
        "huge_int_4000_digits": b'{"k": 1' + b"0" * 4000 + b"}",
        "huge_int_5000_digits": b'{"k": 1' + b"0" * 5000 + b"}",
        "huge_int_price": b'{"filters": {"price_max": 1' + b"0" * 400 + b"}}",
        "huge_float_1e308": b'{"k": 1e308, "item_id": "x"}', "tiny_float": b'{"k": 1e-400}',
        "deep_list": deep_list, "deep_object": b'{"a":' * 3000 + b"1" + b"}" * 3000,
        "deep_history": b'{"history": ' + b"[" * 900 + b"]" * 900 + b"}",
        "deep_filters": b'{"filters": ' + b'{"x":' * 900 + b"1" + b"}" * 900 + b"}",
        "over_the_limit": b'{"query": "' + b"x" * (max_body_bytes + 10) + b'"}',
        "not_utf8": b'{"query": "\xff\xfe"}', "utf8_encoded_surrogate": b'{"query": "\xed\xa0\x80"}',
        "utf16": '{"k": 3}'.encode("utf-16"), "bom": b'\xef\xbb\xbf{"k": 3}',
        "truncated": b'{"k": 3,', "empty": b"", "null": b"null", "list": b"[]", "string": b'"x"', "number": b"1",
        "duplicate_keys": b'{"k": 1, "k": 2}', "long_string": b'{"query": "' + b"q" * 5000 + b'"}',
        "wrong_types": b'{"k": [], "history": {}, "filters": 1, "item_id": [], "path": 5}',
    }


def fuzz_cases(max_body_bytes: int) -> list[RawCase]:
    """Every fuzz body to every POST endpoint, with odd content types, plus odd paths and over-long
    artifact paths for /admin/reload."""
    cases = [RawCase(f"{path} {name}", "POST", path, body)
             for path in POST_ENDPOINTS for name, body in fuzz_bodies(max_body_bytes).items()]
    for path in POST_ENDPOINTS:
        cases += [RawCase(f"{path} text/plain non-utf8", "POST", path, b"\xff\xfe{", "text/plain"),
                  RawCase(f"{path} no content type nan", "POST", path, b'{"k": NaN}', None),
                  RawCase(f"{path} json charset latin-1", "POST", path, b'{"query": "\xe9"}',
                          "application/json; charset=latin-1")]
    long_name = "x" * 300
    for name, value in (("300-char name", long_name), ("300-char absolute", "/tmp/" + long_name),
                        ("300-char component", f"/tmp/{long_name}/artifact"),
                        ("4096-char", "/".join(["y" * 200] * 20)[:4096]), ("nul byte", "a\u0000b"),
                        ("not an artifact", "/"), ("a file", "/etc/hostname"), ("relative", "../../../etc")):
        body = json.dumps({"path": value}).encode()
        cases.append(RawCase(f"/admin/reload path {name}", "POST", "/admin/reload", body))
    for name, path in (("nul", "/items/%00"), ("surrogate", "/items/%ED%A0%80"), ("not utf8", "/items/%FF%FE"),
                       ("control", "/items/%01%1B%7F"), ("300 chars", "/items/" + "x" * 300),
                       ("encoded slash", "/items/a%2Fb"), ("unknown route", "/nowhere/%ED%A0%80"),
                       ("query string", "/healthz?x=%ED%A0%80&y=%00")):
        cases.append(RawCase(f"GET {name}", "GET", path, None, None))
    return cases


AUTH_VARIANTS = ("none", "wrong", "token", "basic", "not latin-1")


def auth_header(variant: str, token: str) -> dict[str, bytes]:
    values = {"none": None, "wrong": b"Bearer wrong-token-0", "token": f"Bearer {token}".encode(),
              "basic": b"Basic dXNlcjpwYXNz", "not latin-1": b"Bearer \xe9\xff-token"}
    value = values[variant]
    return {} if value is None else {"authorization": value}


def send_raw(client: httpx.Client, case: RawCase, headers: dict) -> httpx.Response:
    headers = dict(headers)
    if case.content_type is not None:
        headers["content-type"] = case.content_type
    return client.request(case.method, case.path, content=case.body, headers=headers)


def disconnect_mid_body(url: str, path: str, sent: bytes, declared: int | None) -> None:
    """Send the request line, headers and part of a body (Content-Length `declared`, or chunked when None),
    then close the connection before the body is complete: the server can send no response."""
    import socket
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    framing = f"Content-Length: {declared}" if declared is not None else "Transfer-Encoding: chunked"
    head = (f"POST {path} HTTP/1.1\r\nHost: {parts.hostname}\r\nContent-Type: application/json\r\n"
            f"{framing}\r\n\r\n").encode()
    body = sent if declared is not None else b"%x\r\n%s\r\n" % (len(sent), sent)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(head + body)
        time.sleep(0.05)  # let the server start reading the body


DISCONNECTS = (("content-length", b'{"k": ', 1000), ("chunked", b'{"k": ', None), ("headers only", b"", 50))


def probe(url: str, token: str, max_body_bytes: int) -> tuple[collections.Counter, list[str], int]:
    """Send every fuzz case with every auth variant, then the mid-body disconnects to each POST endpoint.
    Returns (responses received by status, failures: 5xx answers, transport errors and reloads that were
    not refused for want of a token, disconnects made)."""
    seen, failures = collections.Counter(), []
    with httpx.Client(base_url=url, timeout=120) as client:
        for case in fuzz_cases(max_body_bytes):
            for variant in AUTH_VARIANTS:
                try:
                    r = send_raw(client, case, auth_header(variant, token))
                except httpx.HTTPError as e:
                    failures.append(f"{case.name} [{variant}]: {type(e).__name__}: {e}")
                    continue
                seen[r.status_code] += 1
                unauthorized = case.path == "/admin/reload" and variant != "token" and r.status_code != 413
                if r.status_code >= 500 or (unauthorized and r.status_code not in (401, 403)):
                    failures.append(f"{case.name} [{variant}]: {r.status_code} {r.text[:200]}")
    for path in POST_ENDPOINTS:
        for _, sent, declared in DISCONNECTS:
            disconnect_mid_body(url, path, sent, declared)
    return seen, failures, len(POST_ENDPOINTS) * len(DISCONNECTS)


def http_counts(metrics_text: str) -> tuple[collections.Counter, int]:
    """(requests answered by status, disconnects) from /metrics, leaving out the /metrics route itself."""
    from prometheus_client.parser import text_string_to_metric_families

    statuses, disconnects = collections.Counter(), 0
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            if s.name == "towerrec_http_requests_total" and s.labels["route"] != "/metrics":
                statuses[int(s.labels["status"])] += int(s.value)
            elif s.name == "towerrec_http_disconnects_total":
                disconnects += int(s.value)
    return statuses, disconnects
