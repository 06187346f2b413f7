"""Tampered artifacts for the verify and reload tests: each case damages a copy of a good artifact, mostly with
the manifest checksum rewritten to match, so that only the content checks can catch it."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy

from towerrec.utils.io import sha256_file


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def edit_manifest(path: Path, **changes) -> None:
    (path / "manifest.json").write_text(json.dumps({**_manifest(path), **changes}))


def _edit_index(path: Path, **changes) -> None:
    edit_manifest(path, index={**_manifest(path)["index"], **changes})


def rewrite_checksum(path: Path, rel: str) -> None:
    """Make the manifest entry of `rel` match its (damaged) content: only content checks can catch it."""
    manifest = _manifest(path)
    manifest["files"][rel] = {"sha256": sha256_file(path / rel), "bytes": (path / rel).stat().st_size}
    (path / "manifest.json").write_text(json.dumps(manifest))


def _unlist(path: Path, rel: str) -> None:
    manifest = _manifest(path)
    del manifest["files"][rel]
    (path / "manifest.json").write_text(json.dumps(manifest))


def _damage(path: Path, rel: str, change, checksum: bool = True) -> None:
    """Replace the bytes of `rel` by change(bytes), then (by default) rewrite its checksum to match."""
    (path / rel).write_bytes(change(bytearray((path / rel).read_bytes())))
    if checksum:
        rewrite_checksum(path, rel)


def _flip(at: int):
    def change(data: bytearray) -> bytes:
        data[at] ^= 0xFF
        return bytes(data)
    return change


def _safetensors_header(data: bytearray) -> bytes:
    """The JSON header of a safetensors file (after its 8-byte length) made unreadable."""
    data[8:12] = b"}}}}"
    return bytes(data)


def _tampered_title(path: Path) -> None:
    items = pd.read_parquet(path / "items.parquet")
    items.loc[0, "title"] = "TAMPERED title shown to users"
    items.to_parquet(path / "items.parquet", index=False)


def _tampered_title_unlisted(path: Path) -> None:
    """What the outside probe did: drop items.parquet from manifest.files, then edit it."""
    _unlist(path, "items.parquet")
    _tampered_title(path)


def _write_json(path: Path, rel: str, obj) -> None:
    (path / rel).write_text(json.dumps(obj))
    rewrite_checksum(path, rel)


def _edit_tower_meta(path: Path, **changes) -> None:
    meta = json.loads((path / "user_tower/tower.json").read_text())
    _write_json(path, "user_tower/tower.json", {**meta, **changes})


def _users(path: Path, table: pd.DataFrame) -> None:
    table.to_parquet(path / "users.parquet", index=False)
    rewrite_checksum(path, "users.parquet")


def _items(path: Path, change) -> None:
    items = pd.read_parquet(path / "items.parquet")
    change(items)
    items.to_parquet(path / "items.parquet", index=False)
    rewrite_checksum(path, "items.parquet")


def _other_dim_index(path: Path) -> None:
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(8))
    index.add_with_ids(np.eye(8, dtype=np.float32)[np.arange(80) % 8], np.arange(80, dtype=np.int64))
    faiss.write_index(index, str(path / "index.faiss"))
    rewrite_checksum(path, "index.faiss")


def _short_embeddings(path: Path) -> None:
    t = load_numpy(str(path / "item_embeddings.safetensors"))
    save_numpy({"embeddings": t["embeddings"][:79], "row_id": t["row_id"]}, str(path / "item_embeddings.safetensors"))
    rewrite_checksum(path, "item_embeddings.safetensors")


def _drop_field(path: Path, key: str) -> None:
    manifest = _manifest(path)
    del manifest[key]
    (path / "manifest.json").write_text(json.dumps(manifest))


def _entry(path: Path, rel: str, **changes) -> None:
    manifest = _manifest(path)
    manifest["files"][rel] = {**manifest["files"][rel], **changes}
    (path / "manifest.json").write_text(json.dumps(manifest))


# case: (tamper(path), the error message expected); each is refused by Artifact.load itself
REFUSED_ON_LOAD = {
    # the outside probe's cases
    "index byte 0 flipped": (lambda p: _damage(p, "index.faiss", _flip(0)), r"/index\.faiss: not a readable FAISS"),
    "index truncated": (lambda p: _damage(p, "index.faiss", lambda d: bytes(d[: len(d) // 2])),
                        r"/index\.faiss: not a readable FAISS"),
    "user tower weights header": (lambda p: _damage(p, "user_tower/model.safetensors", _safetensors_header),
                                  r"/user_tower/model\.safetensors: not a readable safetensors file"),
    "user tower.json fields": (lambda p: _write_json(p, "user_tower/tower.json", {"pooling": "mean"}),
                               r"/user_tower/tower\.json: required field 'encoder_has_pooler' is missing"),
    "user tower.json not JSON": (lambda p: _damage(p, "user_tower/tower.json", lambda d: bytes(d[:-9])),
                                 r"/user_tower/tower\.json: not valid JSON"),
    "files as a list": (lambda p: edit_manifest(p, files=sorted(_manifest(p)["files"])),
                        r"manifest\.json: field 'files' must be a mapping"),
    "dim not a number": (lambda p: edit_manifest(p, dim="abc"),
                         r"manifest\.json: field 'dim' must be a positive integer, got 'abc'"),
    "metric l2": (lambda p: edit_manifest(p, metric="l2"), r"manifest\.json: field 'metric' must be 'ip'"),
    "unlisted file": (lambda p: (p / "notes.txt").write_text("hello"), r"/notes\.txt: not listed in manifest\.json"),
    "unlisted file in a tower": (lambda p: (p / "item_tower" / "vocab.extra").write_text("x"),
                                 r"/item_tower/vocab\.extra: not listed"),
    "listed file deleted": (lambda p: (p / "text.json").unlink(), r"/text\.json: missing \(listed in"),
    "users file deleted": (lambda p: (p / "users.parquet").unlink(), r"/users\.parquet: missing"),
    "title tampered": (_tampered_title, r"/items\.parquet: .*modified or corrupted"),
    "title tampered, file unlisted": (_tampered_title_unlisted, r"/items\.parquet: not listed in manifest\.json"),
    # more damage to what serving reads
    "flipped embedding byte": (lambda p: _damage(p, "item_embeddings.safetensors", _flip(-3), checksum=False),
                               r"item_embeddings\.safetensors: checksum mismatch"),
    "flipped weight byte": (lambda p: _damage(p, "user_tower/model.safetensors", _flip(-3), checksum=False),
                            r"user_tower/model\.safetensors: checksum"),
    "truncated, checksum kept": (lambda p: _damage(p, "index.faiss", lambda d: bytes(d[:-10]), checksum=False),
                                 r"/index\.faiss: \d+ bytes but manifest\.json lists \d+"),
    "embeddings header": (lambda p: _damage(p, "item_embeddings.safetensors", _safetensors_header),
                          r"/item_embeddings\.safetensors: not a readable safetensors file"),
    "items not parquet": (lambda p: _damage(p, "items.parquet", lambda d: bytes(d[: len(d) // 2])),
                          r"/items\.parquet: not a readable parquet table"),
    "duplicate item ids": (lambda p: _items(p, lambda t: t.__setitem__("item_id", "same")),
                           r"/items\.parquet: .*item_id.*unique"),
    "negative row id": (lambda p: _items(p, lambda t: t.__setitem__("row_id", t["row_id"] - 1)),
                        r"/items\.parquet: .*row_id"),
    "users not parquet": (lambda p: _damage(p, "users.parquet", lambda d: bytes(d[:40])),
                          r"/users\.parquet: not a readable parquet table"),
    "users columns": (lambda p: _users(p, pd.DataFrame({"user": ["u"]})), r"/users\.parquet: .*user_id"),
    "text.json fields": (lambda p: _write_json(p, "text.json", {"no_such_option": 1}),
                         r"/text\.json: not a text configuration"),
    "tower config.json": (lambda p: _damage(p, "user_tower/config.json", lambda d: b"[1, 2"),
                          r"/user_tower/config\.json: not valid JSON"),
    "tower dim": (lambda p: _edit_tower_meta(p, dim=8), r"/user_tower/tower\.json: dim 8 != manifest dim 16"),
    "tower pooling": (lambda p: _edit_tower_meta(p, pooling=3), r"/user_tower/tower\.json: field 'pooling'"),
    "index dim": (_other_dim_index, r"index\.faiss: index dimension 8 != manifest dim 16"),
    "count": (lambda p: edit_manifest(p, num_items=81),
              r"index\.faiss: the index holds 80 vectors but manifest num_items is 81"),
    "embedding shape": (_short_embeddings,
                        r"item_embeddings\.safetensors: embeddings .*79, 16.* != expected \(80, 16\)"),
    # manifest fields
    "newer schema": (lambda p: edit_manifest(p, schema_version=2), r"manifest\.json: schema_version 2 is newer"),
    "bad schema": (lambda p: edit_manifest(p, schema_version="one"), r"manifest\.json: schema_version 'one'"),
    "dropped manifest": (lambda p: (p / "manifest.json").unlink(), r"manifest\.json: missing"),
    "manifest not JSON": (lambda p: (p / "manifest.json").write_text("{"), r"manifest\.json: not valid JSON"),
    "manifest a list": (lambda p: (p / "manifest.json").write_text("[]"), r"manifest\.json: .*JSON object"),
    "dim zero": (lambda p: edit_manifest(p, dim=0), r"field 'dim' must be a positive integer, got 0"),
    "dim bool": (lambda p: edit_manifest(p, dim=True), r"field 'dim' must be a positive integer, got True"),
    "num_items negative": (lambda p: edit_manifest(p, num_items=-1), r"field 'num_items' must be a non-negative"),
    "not normalized": (lambda p: edit_manifest(p, normalized=False), r"field 'normalized' must be true"),
    "missing metric": (lambda p: _drop_field(p, "metric"), r"manifest\.json: required field 'metric' is missing"),
    "index a string": (lambda p: edit_manifest(p, index="Flat"), r"field 'index' must be a mapping"),
    "index factory": (lambda p: _edit_index(p, factory=3), r"field 'index\.factory' must be a non-empty string"),
    "index shards": (lambda p: _edit_index(p, shards=0), r"field 'index\.shards' must be a positive integer"),
    "search params": (lambda p: _edit_index(p, search={"nprobe": [1]}), r"field 'index\.search\.nprobe' must be"),
    "search param unusable": (lambda p: _edit_index(p, search={"efSearch": 8}),
                              r"index\.faiss: search parameter efSearch=8 does not apply"),
    "history not a list": (lambda p: edit_manifest(p, history="add"), r"field 'history' must be a list"),
    "data not a mapping": (lambda p: edit_manifest(p, data="x"), r"field 'data' must be a mapping"),
    "development key a string": (lambda p: edit_manifest(p, data={**_manifest(p)["data"], "development_key": "no"}),
                                 r"field 'data\.development_key' must be true, false or null, got 'no'"),
    "checksum not hex": (lambda p: _entry(p, "text.json", sha256="0"), r"'files\.text\.json\.sha256' must be 64"),
    "bytes not a number": (lambda p: _entry(p, "text.json", bytes="12"), r"'files\.text\.json\.bytes' must be"),
    "escaping path": (lambda p: edit_manifest(p, files={"../x": {"sha256": "0" * 64, "bytes": 1}}),
                      r"points outside the artifact"),
    "manifest listed": (lambda p: edit_manifest(p, files={**_manifest(p)["files"], "manifest.json": {}}),
                        r"manifest\.json: files entry 'manifest\.json'"),
}

# cases whose files Artifact.load reads lazily (tower rebuild, probe encode): refused by Artifact.check
REFUSED_ON_CHECK = {
    "tokenizer": (lambda p: _damage(p, "item_tower/tokenizer.json", lambda d: b"{}"),
                  r"/item_tower: cannot rebuild the tower"),
    "weights of another shape": (lambda p: _edit_tower_meta(p, projection_dim=16),
                                 r"/user_tower/model\.safetensors: weights do not fit"),
    "users table content": (lambda p: _users(p, pd.DataFrame({"user_id": ["u"], "items": [3]})),
                            r"/users\.parquet: not a users table"),
}
