"""Export of the product index (towerrec.export): round trip, atomic writes, index presets, sharding, and
adding / removing products without retraining (verification and tampering: test_verify.py). A tiny
random-init BERT on a tiny synthetic world; one export is shared and copied by the tests that modify it."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pytest
import torch
from helpers.tiny_artifact import ROOT, TEXT, TINY_BERT, do_export
from omegaconf import OmegaConf

from towerrec.artifact import Artifact, store
from towerrec.artifact import export as artifact_export
from towerrec.artifact.cli import main
from towerrec.artifact.format import ArtifactError
from towerrec.artifact.towers import save_tower
from towerrec.artifact.update import add_items, remove_items, set_metrics
from towerrec.data.text import TextConfig, render_items
from towerrec.index import IndexConfig, build_index, build_sharded_index, describe
from towerrec.model.encode import encode_texts, normalize_rows
from towerrec.model.encoders import load_encoder
from towerrec.model.towers import TwoTower
from towerrec.retrieval import Retriever

pytestmark = pytest.mark.usefixtures("one_thread_faiss")


def preset(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "index" / f"{name}.yaml"))


# ------------------------------------------------------------------------------------------ round trip


def test_round_trip_restores_vectors_towers_and_manifest(base, model, tokenizer, split):
    art = Artifact.load(base, verify=True)
    m = art.manifest
    assert m["schema_version"] == 1 and m["metric"] == "ip" and m["normalized"] is True
    assert m["dim"] == 16 and m["num_items"] == split.num_items == art.index.ntotal
    assert m["data"]["fingerprint"] == split.fingerprint
    assert m["metrics"] == {"test/recall@10": 0.25}
    assert m["encoder"]["name_or_path"] == "random_init"
    assert m["train_config"]["data"]["user_id_secret"] == "<redacted>"
    files = {p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(m["files"]) == files  # every file checksummed
    for name in ("index.faiss", "items.parquet", "item_embeddings.safetensors", "popularity.safetensors",
                 "text.json", "user_tower/model.safetensors", "user_tower/config.json", "user_tower/tower.json",
                 "item_tower/model.safetensors", "item_tower/tokenizer.json"):
        assert name in files
    assert TextConfig.from_dict(json.loads((base / "text.json").read_text())) == TEXT

    # stored vectors = the product tower's, unit norm; the index finds each item as its own best match
    expected = encode_texts(model.item_tower, tokenizer, render_items(split.catalog, TEXT), 32)
    np.testing.assert_array_equal(art.embeddings, expected)
    np.testing.assert_allclose(np.linalg.norm(art.embeddings, axis=1), 1.0, atol=1e-5)
    _, labels = art.index.search(art.embeddings[:5], 1)
    assert labels[:, 0].tolist() == [0, 1, 2, 3, 4]
    assert art.items["item_id"].tolist() == split.catalog.item_ids.tolist()
    assert art.items["row_id"].tolist() == list(range(split.num_items))
    np.testing.assert_array_equal(art.popularity, split.item_counts())
    # known users' whole sequences, by pseudonymized id, oldest first
    assert "users.parquet" in files
    for user, seq in list(zip(split.users, split.sequences))[:5]:
        assert art.user_history(user) == split.catalog.item_ids[seq].tolist()
    assert art.user_history("no-such-user") is None

    # towers rebuilt from their directories compute what the trained ones do
    texts = ["Korsen road bike ; blue socks", "a blender"]
    for which, tower in (("user", model.user_tower), ("item", model.item_tower)):
        rebuilt = art.tower(which)
        np.testing.assert_allclose(rebuilt.encode(texts), encode_texts(tower, tokenizer, texts, 48), atol=1e-6)
        assert rebuilt.tokenizer("a blender")["input_ids"] == tokenizer("a blender")["input_ids"]
    assert art.user_tower.max_length == 48 and art.item_tower.max_length == 32


def test_no_raw_user_ids_or_secrets_in_any_file(base, split):
    blobs = b"".join(p.read_bytes() for p in base.rglob("*") if p.is_file())
    assert b"user_000" not in blobs  # the generator's raw ids ("user_00042") never reach the artifact
    assert str(split.users[0]).startswith("u_") and str(split.users[0]).encode() in blobs  # pseudonyms do
    assert b"s3cret-key" not in blobs and b"test-secret" not in blobs


def test_tower_with_projection_id_embedding_and_separate_encoders(tmp_path, split, tokenizer):
    torch.manual_seed(1)
    encoder, _ = load_encoder({"random_init": dict(TINY_BERT)}, corpus=render_items(split.catalog, TEXT))
    model = TwoTower(encoder, projection_dim=8, shared_encoder=False, item_id_counts=split.item_counts()).eval()
    with torch.no_grad():
        model.item_tower.id_embedding.weight.normal_(std=0.5)  # make the id embedding matter
    art = Artifact.load(do_export(tmp_path / "a", model, tokenizer, split))
    meta = art.item_tower.meta
    assert meta["projection_dim"] == 8 and meta["id_embedding"]["num_items"] == split.num_items
    assert art.user_tower.meta["id_embedding"] is None
    texts = render_items(split.catalog, TEXT)[:6]
    ids = np.arange(6)
    trained = encode_texts(model.item_tower, tokenizer, texts, 32, item_idx=ids)
    np.testing.assert_allclose(art.item_tower.encode(texts, item_idx=ids), trained, atol=1e-6)
    np.testing.assert_allclose(art.embeddings[:6], trained, atol=1e-6)
    # the id embedding is part of the stored vectors: text alone gives other vectors
    assert not np.allclose(art.embeddings[:6], art.item_tower.encode(texts), atol=1e-3)


# ------------------------------------------------------------------------------------------ atomic writes


def _snapshot(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def test_interrupted_export_leaves_the_previous_export_intact(art_dir, model, tokenizer, split, monkeypatch):
    before = _snapshot(art_dir)
    calls = []
    real_save_tower = save_tower

    def crash_on_second_tower(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash while writing the item tower")
        return real_save_tower(*args, **kwargs)

    monkeypatch.setattr(artifact_export, "save_tower", crash_on_second_tower)
    with pytest.raises(RuntimeError, match="simulated crash"):
        do_export(art_dir, model, tokenizer, split)
    assert _snapshot(art_dir) == before
    assert sorted(p.name for p in art_dir.parent.iterdir() if p.name != ".artifact.lock") == ["artifact"]
    Artifact.load(art_dir)

    # a crash after the old version was renamed aside, before the new one was renamed in
    monkeypatch.setattr(artifact_export, "save_tower", real_save_tower)
    real_rename = store.os.rename
    renames = []

    def crash_on_second_rename(src, dst):
        renames.append(1)
        if len(renames) == 2:
            raise KeyboardInterrupt("killed between the renames")
        return real_rename(src, dst)

    monkeypatch.setattr(store.os, "rename", crash_on_second_rename)
    with pytest.raises(KeyboardInterrupt):
        do_export(art_dir, model, tokenizer, split)
    monkeypatch.setattr(store.os, "rename", real_rename)
    assert not art_dir.exists()
    assert Artifact.load(art_dir).manifest["files"] == json.loads(before["manifest.json"])["files"]  # from aside
    set_metrics(art_dir, {"test/recall@10": 0.5})  # an update restores the aside version first
    assert Artifact.load(art_dir).manifest["metrics"] == {"test/recall@10": 0.5}
    assert not (art_dir.parent / ".artifact.old").exists()
    # a dead writer's temporary directory is cleaned up, the previous version restored, then replaced
    (art_dir.parent / ".artifact.tmp-dead").mkdir()
    do_export(art_dir, model, tokenizer, split)
    assert sorted(p.name for p in art_dir.parent.iterdir() if p.name != ".artifact.lock") == ["artifact"]
    assert Artifact.load(art_dir).manifest["created_at"] >= json.loads(before["manifest.json"])["created_at"]


# ------------------------------------------------------------------------------------------ index presets


def test_nlist_and_pq_rules():
    ivf = IndexConfig.from_any(preset("ivf"))
    assert ivf.nlist_for(1_000_000) == 4000
    assert ivf.nlist_for(80) == 2  # at most N / 39
    assert ivf.resolve(10_000, 384) == "IVF256,Flat"  # 4 * sqrt(10000) = 400 > 10000 // 39 = 256
    pq = IndexConfig.from_any(preset("ivfpq"))
    assert pq.resolve(1_000_000, 384) == "IVF4000,PQ48x8np,RFlat"
    assert pq.resolve(80, 16) == "IVF2,PQ2x6np,RFlat"  # 2^6 <= 80 training vectors
    with pytest.raises(ValueError, match="unknown index option"):
        IndexConfig.from_any({"factory": "Flat", "nprobe": 3})
    with pytest.raises(ValueError, match="unknown index search parameter"):
        IndexConfig.from_any({"factory": "Flat", "search": {"ef": 3}})


@pytest.mark.parametrize("name", ["flat", "fp16", "hnsw", "ivf", "ivfpq"])
def test_index_presets_export_load_and_search(tmp_path, model, tokenizer, split, name):
    cfg = preset(name)
    art = Artifact.load(do_export(tmp_path / name, model, tokenizer, split, index_cfg=cfg))
    info = art.manifest["index"]
    chain = describe(art.index)
    assert info["search"] == cfg.get("search", {})
    if name == "hnsw":
        assert info["factory"] == "IDMap2,HNSW32,Flat"
        assert faiss.downcast_index(art.index.index).hnsw.efSearch == cfg["search"]["efSearch"]
    if name in ("ivf", "ivfpq"):
        ivf = faiss.extract_index_ivf(art.index)
        assert ivf.nlist == 2 and ivf.nprobe == 2  # nprobe clamped to nlist; set after loading
        assert info["trained_on"] == split.num_items
    if name == "fp16":
        assert info["factory"] == "IDMap2,SQfp16" and "IndexScalarQuantizer" in chain
    if name == "ivfpq":
        assert info["factory"] == "IDMap2,IVF2,PQ2x6np,RFlat"
        assert "IndexRefineFlat" in chain
        assert faiss.downcast_index(art.index.index).k_factor == cfg["search"]["k_factor"]
    # every item is its own nearest neighbour: exact for flat / IVF (all cells probed); for IVF-PQ once
    # k * k_factor candidates reach the exact re-ranking (the random tiny model's vectors are near-collinear)
    _, labels = art.index.search(art.embeddings, 10)
    assert (labels[:, 0] == art.row_ids).mean() >= (0.95 if name in ("fp16", "hnsw", "ivfpq") else 1.0)


# ------------------------------------------------------------------------------------------ sharding


def test_two_shards_answer_exactly_like_one_flat_index():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1000, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(1000, dtype=np.int64) + 5
    flat, _ = build_index(x, ids, "IDMap2,Flat")
    shards, parts, info = build_sharded_index(x, ids, 2, "IDMap2,Flat")
    assert isinstance(shards, faiss.IndexShards) and shards.ntotal == 1000 and info["shards"] == 2
    assert [p.ntotal for p in parts] == [500, 500]
    queries = rng.standard_normal((20, 16)).astype(np.float32)
    d1, i1 = flat.search(queries, 10)
    d2, i2 = shards.search(queries, 10)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(d1, d2, rtol=1e-6)
    # each shard holds a successive id range
    _, first = parts[0].search(x[:1], 1)
    _, second = parts[1].search(x[999:], 1)
    assert first[0, 0] == 5 and second[0, 0] == 1004


def test_sharded_export_loads_as_shards_and_retrieves_like_the_flat_one(tmp_path, base, model, tokenizer, split):
    path = do_export(tmp_path / "sharded", model, tokenizer, split, index_cfg={**preset("flat"), "shards": 2})
    art = Artifact.load(path)
    assert {"index.shard0.faiss", "index.shard1.faiss"} <= set(art.manifest["files"])
    assert not (path / "index.faiss").exists() and art.manifest["index"]["shards"] == 2
    assert isinstance(art.index, faiss.IndexShards) and art.index.ntotal == split.num_items
    flat = Retriever(Artifact.load(base))
    sharded = Retriever(art)
    q = art.embeddings[:7]
    got, want = sharded.search(q, 5, [{0}] * 7), flat.search(q, 5, [{0}] * 7)
    assert [[i for i, _ in r] for r in got] == [[i for i, _ in r] for r in want]
    # adding to a sharded artifact fills one shard; removal works on every shard
    add_items(path, pd.DataFrame([{"item_id": "NEW-1", "title": "Brand new gadget", "category": "Electronics"}]))
    remove_items(path, [split.catalog.item_ids[0]])
    art = Artifact.load(path)
    assert art.index.ntotal == split.num_items and sum(p.ntotal for p in art.parts) == split.num_items
    ids = {int(i) for i in art.index.search(art.embeddings, art.num_items)[1].ravel()}
    assert 0 not in ids and split.num_items in ids


# ------------------------------------------------------------------------------------------ add / remove


def _new_rows(split) -> pd.DataFrame:
    src = split.catalog.items.iloc[[10]].copy()
    twin = src.assign(item_id="TWIN-10")  # same product text as item 10
    fresh = pd.DataFrame([{"item_id": "NEW-1", "title": "Quantum flux capacitor deluxe", "brand": "Zorbix",
                           "category": "Electronics > Gadgets", "price": 1.5}])
    return pd.concat([twin, fresh], ignore_index=True)


def test_added_products_become_retrievable_without_retraining(art_dir, split):
    before = Artifact.load(art_dir)
    summary = add_items(art_dir, _new_rows(split))
    assert summary == {"added": 2, "updated": 0, "num_items": 82}
    art = Artifact.load(art_dir, verify=True)
    m = art.manifest
    assert m["num_items"] == 82 == art.index.ntotal and m["next_row_id"] == 82
    assert m["history"][-1]["action"] == "add" and m["history"][-1]["added"] == 2
    assert art.items["row_id"].tolist()[-2:] == [80, 81]
    assert art.popularity[-2:].tolist() == [0, 0]
    np.testing.assert_array_equal(art.embeddings[:80], before.embeddings)  # existing products untouched
    np.testing.assert_array_equal(art.embeddings[80], before.embeddings[10])  # same text, same vector
    # unchanged files are carried over (same checksums), the towers included
    for rel in ("user_tower/model.safetensors", "text.json"):
        assert m["files"][rel] == before.manifest["files"][rel]

    r = Retriever(art)
    new_text = art.items.loc[art.items.item_id == "NEW-1", "text"].item()
    top = r.recommend(None, k=3, text=new_text)
    assert top[0]["item_id"] == "NEW-1" and top[0]["title"] == "Quantum flux capacitor deluxe"
    assert top[0]["score"] > top[1]["score"]
    assert r.similar_items(split.catalog.item_ids[10], k=1)[0]["item_id"] == "TWIN-10"


def test_replace_updates_in_place_and_remove_drops_products(art_dir, split):
    changed = split.catalog.items.iloc[[3]].assign(title="Completely different title for a tent")
    with pytest.raises(ArtifactError, match="already present"):
        add_items(art_dir, changed, replace=False)
    assert add_items(art_dir, changed) == {"added": 0, "updated": 1, "num_items": 80}
    art = Artifact.load(art_dir)
    row = art.items.iloc[3]
    assert row["row_id"] == 3 and row["title"] == "Completely different title for a tent"
    assert "Completely different title for a tent" in row["text"] and art.index.ntotal == 80
    expected = normalize_rows(art.item_tower.encode([row["text"]]))[0]
    np.testing.assert_allclose(art.embeddings[3], expected, atol=1e-6)
    _, labels = art.index.search(expected[None], 1)
    assert labels[0, 0] == 3

    gone = split.catalog.item_ids[[0, 5]].tolist()
    with pytest.raises(ArtifactError, match="unknown item id"):
        remove_items(art_dir, ["no-such-item"])
    assert remove_items(art_dir, gone) == {"removed": 2, "num_items": 78}
    art = Artifact.load(art_dir)
    assert art.index.ntotal == 78 and not set(gone) & set(art.items.item_id)
    labels = art.index.search(art.embeddings, 78)[1]
    assert not {0, 5} & set(labels.ravel().tolist())
    # ids are never reused: a product added after a removal gets a fresh one
    add_items(art_dir, pd.DataFrame([{"item_id": "NEW-2", "title": "Another thing"}]))
    assert Artifact.load(art_dir).items["row_id"].iloc[-1] == 80
    assert [h["action"] for h in Artifact.load(art_dir).manifest["history"]] == ["add", "remove", "add"]


@pytest.mark.parametrize("name,removable", [("ivf", True), ("hnsw", False), ("ivfpq", False)])
def test_removal_is_incremental_where_the_index_allows_it_else_a_rebuild(tmp_path, model, tokenizer, split, name,
                                                                          removable):
    path = do_export(tmp_path / name, model, tokenizer, split, index_cfg=preset(name))
    factory = Artifact.load(path).manifest["index"]["factory"]
    add_items(path, pd.DataFrame([{"item_id": "NEW-1", "title": "Brand new gadget"}]))  # adding always works
    assert Artifact.load(path).index.ntotal == 81
    if not removable:
        with pytest.raises(ArtifactError, match=r"cannot remove vectors.*rebuild"):
            remove_items(path, ["NEW-1"])
        assert Artifact.load(path).num_items == 81
    remove_items(path, ["NEW-1", split.catalog.item_ids[2]], rebuild=not removable)
    art = Artifact.load(path)
    assert art.num_items == art.index.ntotal == 79
    assert art.manifest["index"]["factory"] == factory  # a rebuild keeps the index kind
    assert art.manifest["history"][-1]["rebuilt"] is (not removable)
    labels = art.index.search(art.embeddings, 10)[1]
    assert not {2, 80} & set(labels.ravel().tolist())
    assert (labels[:, 0] == art.row_ids).mean() >= 0.9


def test_cli_add_remove_verify(art_dir, tmp_path, split, capsys):
    csv = tmp_path / "new.csv"
    row = {"item_id": "00123", "title": "CLI gadget", "brand": "Cli", "category": "Electronics", "price": 3}
    pd.DataFrame([row]).to_csv(csv, index=False)
    assert main(["add", str(art_dir), str(csv)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["added"] == 1
    assert "00123" in Artifact.load(art_dir).items["item_id"].tolist()  # ids stay strings
    assert main(["add", str(art_dir), str(csv), "--no-replace"]) == 1
    assert "already present" in capsys.readouterr().err
    assert main(["remove", str(art_dir), "00123"]) == 0
    assert main(["verify", str(art_dir)]) == 0
    assert "80 items" in capsys.readouterr().out


def test_reindex_rebuilds_the_index_from_the_stored_vectors(art_dir, capsys):
    before = Artifact.load(art_dir)
    queries = np.ascontiguousarray(before.embeddings[:20])
    exact = before.index.search(queries, 5)
    assert main(["reindex", str(art_dir), "--factory", "IDMap2,SQfp16"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["factory"] == "IDMap2,SQfp16"
    after = Artifact.load(art_dir, verify=True)
    assert after.version != before.version and after.manifest["index"]["factory"] == "IDMap2,SQfp16"
    assert after.manifest["history"][-1] == {**after.manifest["history"][-1], "action": "reindex",
                                             "from": "IDMap2,Flat", "to": "IDMap2,SQfp16"}
    pd.testing.assert_frame_equal(after.items, before.items)
    scores, labels = after.index.search(queries, 5)
    np.testing.assert_allclose(scores, exact[0], atol=2e-3)  # half precision: about three digits
    assert (labels[:, 0] == exact[1][:, 0]).mean() >= 0.9
    assert main(["reindex", str(art_dir), "--factory", "NotAFactory"]) == 1
    assert "NotAFactory" in capsys.readouterr().err
    assert Artifact.load(art_dir).version == after.version  # a failed rebuild leaves the artifact as it was
