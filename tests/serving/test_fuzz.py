"""Fuzzing the service through a REAL uvicorn server on an ephemeral port: the raw cases of
`helpers.serve.probe` (NaN, Infinity, 1e309, huge integers, lone surrogates, NUL and control characters, deep
and oversized bodies, bytes that are not UTF-8, odd content types, paths and tokens, over-long artifact
paths, clients that disconnect mid-body) to every endpoint, with and without the reload token: no answer is a
5xx, and /metrics counts exactly the responses the clients received. Then what each case answers (422
naming the field and the problem, the input echoed only where it can be encoded), the token checked before
the body is parsed, and reloads of unreadable artifacts refused with 422 while the served one stays."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import httpx
import pytest
from helpers.serve import ServerThread, export_tiny_artifact, http_counts, probe
from helpers.tamper import REFUSED_ON_CHECK, REFUSED_ON_LOAD

from towerrec.artifact.format import ArtifactError
from towerrec.serving import ServeConfig, create_app
from towerrec.serving.app import load_error
from towerrec.serving.body import MAX_DEPTH, BodyError, encodable_errors, parse_json

TOKEN = "fuzz-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

pytestmark = pytest.mark.usefixtures("one_thread_faiss")


@pytest.fixture(scope="module")
def artifact_dir(tiny_split, tmp_path_factory) -> Path:
    return export_tiny_artifact(tmp_path_factory.mktemp("fuzz") / "artifact", tiny_split)


@pytest.fixture(scope="module")
def server(artifact_dir):
    cfg = ServeConfig(artifacts=str(artifact_dir), reload_token=TOKEN, worker_threads=4)
    with ServerThread(create_app(cfg)) as srv:
        srv.wait_ready()
        srv.cfg = cfg
        srv.client = httpx.Client(base_url=srv.url, timeout=60)
        yield srv
        srv.client.close()


def counts(server) -> tuple:
    return http_counts(server.client.get("/metrics").text)


def served_version(server) -> str:
    return server.client.get("/readyz").json()["artifact"]["version"]


# ------------------------------------------------------------------------------------------ the whole probe


def test_no_fuzz_case_is_a_5xx_and_metrics_count_what_clients_saw(server):
    before, disconnects_before = counts(server)
    seen, failures, disconnects = probe(server.url, TOKEN, server.cfg.max_body_bytes)
    assert not failures, "\n".join(failures)
    assert sum(seen.values()) > 500 and not [s for s in seen if s >= 500]
    deadline = time.monotonic() + 20  # the server notices the disconnects asynchronously
    while (after := counts(server))[1] < disconnects_before + disconnects and time.monotonic() < deadline:
        time.sleep(0.05)
    statuses, disconnected = after
    assert disconnected == disconnects_before + disconnects  # counted as disconnects, not as 500s
    assert statuses - before == seen and before - statuses == {}  # exactly the responses clients received
    # (the fixture's wait_ready may have met /readyz's 503 while the artifact loaded: counted before the probe)
    assert not [s for s in statuses - before if s >= 500]
    assert server.client.post("/recommend", json={"k": 2}).status_code == 200  # and it still serves


# ------------------------------------------------------------------------------------------ what each case says


@pytest.mark.parametrize("body, loc, type_, words", [
    (b'{"k": NaN}', ["body", "k"], "finite_number", "NaN"),
    (b'{"k": -Infinity}', ["body", "k"], "finite_number", "-Infinity"),
    (b'{"filters": {"price_max": Infinity}}', ["body", "filters", "price_max"], "finite_number", "Infinity"),
    (b'{"k": 1e309}', ["body", "k"], "finite_number", "1e309 is out of range"),
    (b'{"history": ["a", NaN]}', ["body", "history", 1], "finite_number", "NaN"),
    (b'{"query": "\\ud800"}', ["body", "query"], "string_unicode", "lone UTF-16 surrogate"),
    (b'{"\\udc00": 1}', ["body", "\\udc00"], "string_unicode", "field name"),
    (b'{"k": 1' + b"0" * 5000 + b"}", ["body", "k"], "int_parsing_size", "5001 digits"),
    (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), ["body"] + [0] * MAX_DEPTH, "json_invalid", "too deeply"),
    (b'{"k": 3,', ["body", 8], "json_invalid", "line 1 column 9"),
])
@pytest.mark.parametrize("path", ["/recommend", "/admin/reload"])
def test_json_python_accepts_but_json_does_not_is_422_naming_the_field(server, path, body, loc, type_, words):
    r = server.client.post(path, content=body, headers={"content-type": "application/json", **AUTH})
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["loc"] == loc and error["type"] == type_ and words in error["msg"], error


def test_unencodable_input_is_not_echoed_but_loc_and_msg_are(server):
    r = server.client.post("/recommend", content=b"\xff\xfe{", headers={"content-type": "text/plain"})
    assert r.status_code == 422
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body"] and error["msg"] and "input" not in error
    r = server.client.post("/recommend", json={"query": 5, "user_id": "a\u0000\u0007b"})  # encodable: echoed
    assert r.status_code == 422 and r.json()["detail"] == [
        {"loc": ["body", "query"], "msg": "Input should be a valid string", "type": "string_type", "input": 5}]
    r = server.client.post("/similar-items", json={"item_id": "\u0000\u001b[31m"})
    assert r.status_code == 404 and "'\\x00\\x1b[31m'" in r.json()["detail"]  # quoted, escaped


def test_a_body_that_is_not_utf8_is_400_and_nul_bytes_are_ordinary_text(server):
    r = server.client.post("/recommend", content='{"query": "é"}'.encode("latin-1"),
                           headers={"content-type": "application/json; charset=latin-1"})
    assert r.status_code == 400 and "not valid UTF-8 (byte 11)" in r.json()["detail"]
    json_type = {"content-type": "application/json"}
    assert server.client.post("/recommend", content='{"k": 2}'.encode("utf-16"), headers=json_type).status_code == 400
    r = server.client.post("/recommend", content=b'\xef\xbb\xbf{"k": 2, "query": "\xff"}', headers=json_type)
    assert r.status_code == 400 and "(byte 22)" in r.json()["detail"]  # counted in the body as sent
    r = server.client.post("/recommend", content=b'\xef\xbb\xbf{"k": 2}', headers=json_type)
    assert r.status_code == 200  # a UTF-8 byte order mark is ignored
    r = server.client.post("/recommend", json={"query": "caf\u00e9 \u0000\u0001", "k": 2})
    assert r.status_code == 200 and len(r.json()["items"]) == 2


def test_parse_json_and_encodable_errors_directly():
    pair = "\ud83d\ude00".encode("unicode_escape")  # a surrogate pair is one character, not a lone surrogate
    assert parse_json(b'{"a": [1, 2.5, "%s", null, 1e-400]}' % pair) == {"a": [1, 2.5, "\U0001f600", None, 0.0]}
    assert parse_json(b'{"a":' * MAX_DEPTH + b"1" + b"}" * MAX_DEPTH)  # MAX_DEPTH levels are fine
    for body in (b"[" * 100_000 + b"]" * 100_000, b"[" * 100_000):  # past the parser's recursion limit
        with pytest.raises(BodyError) as e:
            parse_json(body)
        assert e.value.status_code == 422 and "too deeply" in e.value.detail[0]["msg"]
    errors = encodable_errors([
        {"loc": ("body", "\ud800"), "msg": "bad \udfff", "type": "x", "input": float("nan"),
         "ctx": {"e": ValueError("v")}},
        {"loc": ("body", 0), "msg": "m", "type": "y", "input": "x" * 5000},
        {"loc": ("body",), "msg": "m", "type": "z", "input": b"\xff", "ctx": {"limit": 3}},
    ])
    assert errors == [{"loc": ["body", "\\ud800"], "msg": "bad \\udfff", "type": "x", "ctx": {"e": "v"}},
                      {"loc": ["body", 0], "msg": "m", "type": "y"},
                      {"loc": ["body"], "msg": "m", "type": "z", "ctx": {"limit": 3}}]
    json.dumps(errors, allow_nan=False, ensure_ascii=False).encode("utf-8")  # encodes


# ------------------------------------------------------------------------------------------ reload


@pytest.mark.parametrize("body", [b'{"k": NaN}', b'{"path": "\\ud800"}', b"[" * 3000, b'{"path": 1e309}',
                                  b'{"path": "/nowhere"}', b""])
def test_reload_checks_the_token_before_the_body(server, body):
    version = served_version(server)
    for headers, status in (({}, 401), ({"Authorization": "Bearer wrong-token-0"}, 403),
                            ({"Authorization": "Basic dXNlcjpwYXNz"}, 401)):
        r = server.client.post("/admin/reload", content=body, headers={"content-type": "application/json", **headers})
        assert r.status_code == status and isinstance(r.json()["detail"], str), r.text
    assert served_version(server) == version


@pytest.mark.parametrize("name", ["x" * 300, "y" * 200 + "/" + "z" * 256 + "/artifact"])
def test_reload_of_an_over_long_path_is_422_and_the_served_artifact_stays(server, tmp_path, name):
    version = served_version(server)
    r = server.client.post("/admin/reload", json={"path": str(tmp_path / name)}, headers=AUTH)
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", "path"] and "\n" not in error["msg"], error
    assert "not loaded (the served one stays)" in error["msg"] and str(tmp_path) in error["msg"]
    assert served_version(server) == version


def test_load_errors_are_one_sentence_naming_the_path():
    assert load_error(OSError(36, "File name too long", "/a/" + "x" * 300), "/a") == \
        "/a/" + "x" * 117 + "... (303 characters): File name too long"
    assert load_error(ValueError("embedded null byte"), "a\u0000b") == "a\u0000b: embedded null byte"
    assert load_error(ArtifactError("/a/index.faiss: not a readable FAISS index"), "/a") == \
        "/a/index.faiss: not a readable FAISS index"


PROBED = ["index byte 0 flipped", "index truncated", "user tower weights header", "files as a list",
          "dim not a number"]  # the outside probe's cases, first
NOT_READ_BY_SERVING = {"tokenizer"}  # the item tower's: serving embeds users only
CASES = PROBED + [c for c in {**REFUSED_ON_LOAD, **REFUSED_ON_CHECK} if c not in PROBED + [*NOT_READ_BY_SERVING]]


@pytest.mark.parametrize("case", CASES)
def test_reload_of_an_unreadable_artifact_is_422_and_the_served_one_stays(server, artifact_dir, tmp_path, case):
    """Checksums rewritten to match the damage (where the case does so): only reading the content can tell."""
    tamper = {**REFUSED_ON_LOAD, **REFUSED_ON_CHECK}[case][0]
    version = served_version(server)
    before, _ = counts(server)
    damaged = Path(shutil.copytree(artifact_dir, tmp_path / "damaged"))
    tamper(damaged)
    r = server.client.post("/admin/reload", json={"path": str(damaged)}, headers=AUTH)
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", "path"] and "\n" not in error["msg"] and str(damaged) in error["msg"], error
    assert served_version(server) == version
    assert server.client.post("/recommend", json={"k": 3}).status_code == 200
    assert not [s for s in counts(server)[0] - before if s >= 500]
