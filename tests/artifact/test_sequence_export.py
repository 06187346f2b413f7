"""Export of the sequence towers (model=sequence / sequence_ids / sasrec) and serving them through the Retriever:
exported = trained (the artifact's metrics are the run's), histories and free-text queries, products added
later (embedded by the product text path, then usable in histories), the id-only model's refusals, verify, the
checkpoint export, and what Artifact.load refuses; for a text encoder trained with the towers (top_layers, full),
the artifact's text path is the fine-tuned encoder. One tiny run per preset, shared by the module."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.numpy import load_file as load_numpy

from towerrec.artifact import Artifact, ArtifactError, add_items, remove_items
from towerrec.artifact.cli import main
from towerrec.data.text import render_item, render_items
from towerrec.data.windows import right_aligned
from towerrec.model.encode import encode_texts
from towerrec.model.sequence import TextItemTower
from towerrec.retrieval import Retriever, evaluate_artifact
from towerrec.tasks.export import export_checkpoint
from towerrec.utils.io import sha256_file

ROOT = Path(__file__).resolve().parents[2]
EVAL_BATCH = 32  # small next to the 60 users: evaluation runs in several batches, which the export must match

pytestmark = pytest.mark.usefixtures("one_thread_faiss")


def train_tiny(tmp: Path, preset: str, extra: tuple[str, ...] = ()) -> dict:
    """train(cfg) on the tiny sequence setting, 1 epoch; {"cfg", "metrics", "objects", "path", "split"}."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    from towerrec.tasks.train import train

    overrides = ["experiment=tiny", f"model={preset}", "model.dim=16", "model.max_len=6",
                 "data.num_users=60", "data.num_items=60", "data.max_len=12", "trainer.max_epochs=1",
                 f"model.datamodule.eval_batch_size={EVAL_BATCH}", "model.datamodule.batch_size=16",
                 "trainer.enable_progress_bar=false", "logger=none", "plots=false", "export.progress=false",
                 f"paths.log_dir={tmp / 'logs'}", f"paths.cache_dir={tmp / 'cache'}", *extra]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp / "run")
    HydraConfig.instance().set_config(cfg)
    try:
        with open_dict(cfg):
            del cfg["hydra"]
        metrics, objects = train(cfg)
        OmegaConf.resolve(cfg)  # ${hydra:...} paths, for export_checkpoint after HydraConfig is cleared
    finally:
        HydraConfig.instance().cfg = None
    objects["module"].eval()  # Lightning leaves it in training mode (dropout) after trainer.test
    return {"cfg": cfg, "metrics": metrics, "objects": objects, "path": objects["artifact"], "split": objects["split"]}


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_thread_faiss):
    """Text vectors + learned item ids (model=sequence_ids): every part of the export in one run."""
    return train_tiny(tmp_path_factory.mktemp("seq"), "sequence_ids")


@pytest.fixture(scope="module")
def id_only(tmp_path_factory, one_thread_faiss):
    return train_tiny(tmp_path_factory.mktemp("sasrec"), "sasrec")


FINE_TUNED = {"top_layers": ("model.text_encoder.train=top_layers", "model.text_encoder.top_layers=1"),
              "full": ("model.text_encoder.train=full", "loss=full")}


@pytest.fixture(scope="module", params=list(FINE_TUNED))
def tuned(request, tmp_path_factory, one_thread_faiss):
    """A run whose text encoder trained: top_layers (+ item ids, in-batch loss) or full (text only, loss=full)."""
    mode = request.param
    preset = "sequence_ids" if mode == "top_layers" else "sequence"
    return {"mode": mode, **train_tiny(tmp_path_factory.mktemp(mode), preset, FINE_TUNED[mode])}


@pytest.fixture
def art_copy(run, tmp_path) -> Path:
    return Path(shutil.copytree(run["path"], tmp_path / "artifact"))


def catalog_row(item_id: str, title: str, category: str = "Outdoor > Tents") -> dict:
    return {"item_id": item_id, "title": title, "brand": "Nordpeak", "category": category,
            "description": "a light tent for two", "price": 129.0}


def assert_run_metrics(art: Artifact, r: dict) -> None:
    got = evaluate_artifact(art, r["split"], r["cfg"].eval, stages=("valid", "test"), batch_size=EVAL_BATCH)
    metrics = r["metrics"]
    assert {k.split("/")[0] for k in got} == {"val", "test", "val_kept", "test_kept"}  # both protocols
    for key, value in got.items():
        assert value == pytest.approx(metrics[key], abs=1e-9), key
        assert art.manifest["metrics"][key] == metrics[key], key


# ------------------------------------------------------------------------------------------ layout, parity


def test_layout_and_manifest(run):
    art = Artifact.load(run["path"])
    m, module = art.manifest, run["objects"]["module"]
    assert m["model"] == {"kind": "sequence", "text": True, "item_ids": True, "adapter": "linear", "max_len": 6}
    assert art.kind == "sequence" and art.has_text_path and m["max_length"] == {"item": 64}
    assert m["encoder"]["name_or_path"] == "random_init" and m["dim"] == 16
    files = set(m["files"])
    assert {"user_tower/tower.json", "user_tower/model.safetensors", "item_tower/tower.json",
            "item_tower/model.safetensors", "item_tower/config.json", "item_tower/tokenizer.json"} <= files
    assert not {f for f in files if f.startswith("user_tower/")} - {"user_tower/tower.json",
                                                                      "user_tower/model.safetensors"}
    user = json.loads((art.path / "user_tower/tower.json").read_text())
    assert user == {"kind": "sequence", "dim": 16, "max_len": 6, "layers": 2, "heads": 2, "ff_mult": 4,
                    "dropout": pytest.approx(0.2)}
    item = json.loads((art.path / "item_tower/tower.json").read_text())
    assert item["kind"] == "sequence_items" and item["text"] is True and item["dim"] == 16
    assert item["pooling"] == "mean" and item["max_length"] == 64 and item["adapter"] == "linear"
    # the item tower holds the encoder and the adapter, not the training text vectors or the id table
    keys = load_numpy(str(art.path / "item_tower/model.safetensors")).keys()
    assert any(k.startswith("encoder.") for k in keys) and {"adapter.weight", "adapter.bias"} <= set(keys)
    assert not [k for k in keys if k.startswith(("text", "ids", "id_rows"))]
    # the stored vectors are exactly what the user tower reads for history items in training
    with torch.no_grad():
        expected = module.model.items.all().numpy()
    np.testing.assert_array_equal(art.embeddings, expected)
    assert art.items["item_id"].tolist() == run["split"].catalog.item_ids.tolist()


def test_exported_equals_trained(run):
    art = Artifact.load(run["path"])
    assert_run_metrics(art, run)
    # and user by user: the stage's vectors are the trained model's, bit for bit
    module, split = run["objects"]["module"], run["split"]
    histories = split.examples("test").histories
    got = Retriever(art).embed_histories(histories, batch_size=EVAL_BATCH)
    with torch.no_grad():
        windows = torch.as_tensor(right_aligned(histories, 6))
        expected = torch.cat([module.model.embed_users(w) for w in windows.split(EVAL_BATCH)]).numpy()
    np.testing.assert_array_equal(got, expected)


def test_id_only_exported_equals_trained(id_only):
    art = Artifact.load(id_only["path"])
    assert art.manifest["model"] == {"kind": "sequence", "text": False, "item_ids": True, "adapter": None,
                                     "max_len": 6}
    assert set(art.manifest["files"]) >= {"item_tower/tower.json"}
    assert not [f for f in art.manifest["files"] if f.startswith("item_tower/") and f != "item_tower/tower.json"]
    assert "encoder" not in art.manifest
    assert_run_metrics(art, id_only)


# ------------------------------------------------------------------------------------------ retriever


def test_recommend_from_a_history_and_a_free_text_query(run):
    retriever, split = Retriever(run["path"]), run["split"]
    art, module = retriever.artifact, run["objects"]["module"]
    history = split.catalog.item_ids[[3, 8, 1]].tolist()
    recs = retriever.recommend(history, k=5)
    assert len(recs) == 5 and not {r["item_id"] for r in recs} & set(history)
    assert set(recs[0]) == {"item_id", "score", "title", "brand", "category", "price", "row_id"}
    query = "lightweight camping tent"
    with_query = retriever.recommend(history, k=5, text=query)
    assert len(with_query) == 5
    assert [(r["item_id"], r["score"]) for r in with_query] != [(r["item_id"], r["score"]) for r in recs]

    # the query is the newest element: its product-text-path vector after the history's stored vectors
    dm = run["objects"]["datamodule"]
    text_path = TextItemTower.from_items(dm.text_encoder, "mean", module.model.items).eval()
    q = encode_texts(text_path, dm.tokenizer, [query], 64)  # (1, D)
    np.testing.assert_allclose(art.item_tower.encode(["  lightweight   camping tent "]), q, atol=1e-6)
    with torch.no_grad():
        x = torch.cat([torch.from_numpy(art.embeddings[[3, 8, 1]]), torch.from_numpy(q)])[None]  # (1, 4, D)
        expected = module.model.users(x, torch.ones(1, 4, dtype=torch.bool))[0, -1].numpy()
    np.testing.assert_allclose(retriever.embed_user(history, text=query), expected, atol=1e-6)
    # a full window keeps the newest max_len: the query and the newest max_len - 1 items
    long = split.catalog.item_ids[list(range(10))].tolist()
    np.testing.assert_array_equal(retriever.embed_user(long, text=query),
                                  retriever.embed_user(long[-5:], text=query))
    np.testing.assert_array_equal(retriever.embed_user(long), retriever.embed_user(long[-6:]))
    # a query alone; batched = one by one; unknown history items dropped
    assert retriever.embed_user([], text=query).shape == (16,)
    batch = retriever.embed_histories([[3, 8, 1], [2], []], [None, query, query])
    for row, (h, t) in enumerate([(history, None), (split.catalog.item_ids[[2]].tolist(), query), ([], query)]):
        np.testing.assert_allclose(batch[row], retriever.embed_user(h, text=t), atol=1e-6)
    np.testing.assert_array_equal(retriever.embed_user(["no-such-item", *history]), retriever.embed_user(history))
    with pytest.raises(ValueError, match="empty history and no text"):
        retriever.recommend([], k=3)
    # no user text for the sequence towers: one clear sentence
    for call in (lambda: retriever.user_text([1, 2]), lambda: retriever.embed_texts(["a user"])):
        with pytest.raises(ValueError, match="reads a history as a sequence of product vectors.*embed_histories"):
            call()


def test_added_product_is_embedded_by_the_text_path_retrievable_and_usable_in_histories(run, art_copy):
    module, dm = run["objects"]["module"], run["objects"]["datamodule"]
    new = pd.DataFrame([catalog_row("new-tent", "Nordpeak Ultralight Tent 2P")])
    assert add_items(art_copy, new) == {"added": 1, "updated": 0, "num_items": 61}
    art = Artifact.load(art_copy)
    pos = art.table.positions_of_items(["new-tent"])[0]
    assert pos == 60 and int(art.row_ids[pos]) == 60
    text = render_item(new.iloc[0], art.text, None, [])
    assert art.items["text"].iloc[pos] == text
    text_path = TextItemTower.from_items(dm.text_encoder, "mean", module.model.items).eval()
    np.testing.assert_allclose(art.embeddings[pos], encode_texts(text_path, dm.tokenizer, [text], 64)[0], atol=1e-6)
    # the old products keep their trained vectors (text + id), bit for bit
    np.testing.assert_array_equal(art.embeddings[:60], Artifact.load(run["path"]).embeddings)

    retriever = Retriever(art)
    hits = retriever.search(art.embeddings[pos : pos + 1], 1)[0]
    assert hits[0][0] == 60  # the index finds it
    # in a history: its stored vector is what the user tower reads
    history = [*run["split"].catalog.item_ids[[3, 8]].tolist(), "new-tent"]
    with torch.no_grad():
        x = torch.from_numpy(art.embeddings[[3, 8, pos]])[None]
        expected = module.model.users(x, torch.ones(1, 3, dtype=torch.bool))[0, -1].numpy()
    np.testing.assert_allclose(retriever.embed_user(history), expected, atol=1e-6)
    assert "new-tent" not in [r["item_id"] for r in retriever.recommend(history, k=10)]  # seen: left out
    # removing products keeps the rest working (histories are looked up by item id)
    assert remove_items(art_copy, ["new-tent"])["num_items"] == 60
    np.testing.assert_array_equal(Retriever(art_copy).embed_user(history[:2]), retriever.embed_user(history[:2]))


def test_id_only_refuses_new_products_and_free_text(id_only, tmp_path):
    path = Path(shutil.copytree(id_only["path"], tmp_path / "artifact"))
    retriever = Retriever(path)
    history = id_only["split"].catalog.item_ids[[3, 8, 1]].tolist()
    assert len(retriever.recommend(history, k=4)) == 4  # histories work: lookups + the transformer
    for call in (lambda: add_items(path, pd.DataFrame([catalog_row("new-tent", "Ultralight Tent")])),
                 lambda: retriever.recommend(history, k=4, text="a tent"),
                 lambda: retriever.embed_user([], text="a tent"),
                 lambda: retriever.artifact.item_tower.encode(["a tent"])):
        with pytest.raises(ArtifactError, match=r"id-only \(model\.text=false\).* no text path") as e:
            call()
        assert len(str(e.value).split(". ")) == 1  # one sentence
    assert Artifact.load(path).num_items == 60  # nothing was added


# ------------------------------------------------------------------------------------------ verify, checkpoint


@pytest.mark.parametrize("which", ["run", "id_only"])
def test_verify_says_ok(which, request, capsys):
    path = request.getfixturevalue(which)["path"]
    assert main(["verify", str(path)]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert line.startswith(f"ok: {path}: 60 items, dim 16, model sequence") and "2 towers" in line
    assert Artifact.load(path).check()["towers"] == {"user": 16, "item": 16}


def test_checkpoint_export_gives_the_same_artifact(run, tmp_path):
    ckpt = run["objects"]["best_ckpt"]
    assert ckpt is not None
    path = export_checkpoint(run["cfg"], ckpt, out_dir=tmp_path / "from_ckpt")
    art, first = Artifact.load(path), Artifact.load(run["path"])
    np.testing.assert_array_equal(art.embeddings, first.embeddings)
    for rel in ("user_tower/model.safetensors", "item_tower/model.safetensors", "item_tower/tokenizer.json",
                "user_tower/tower.json", "item_tower/tower.json"):
        assert sha256_file(path / rel) == sha256_file(first.path / rel), rel
    assert art.manifest["train_config"]["ckpt_path"] == str(ckpt)
    for key, value in run["metrics"].items():
        if key.split("/")[0] in ("val", "test"):
            assert art.manifest["metrics"][key] == pytest.approx(value, abs=1e-9), key
    texts = render_items(run["split"].catalog, first.text)[:4]
    np.testing.assert_array_equal(art.item_tower.encode(texts), first.item_tower.encode(texts))


# ------------------------------------------------------------------------------------------ fine-tuned encoders


def fine_tuned_text_path(r: dict) -> TextItemTower:
    """The run's product text path as training left it: its trained layers in a whole encoder, and the adapter."""
    module, dm = r["objects"]["module"], r["objects"]["datamodule"]
    items = module.model.items
    return TextItemTower.from_items(items.text_module.export_encoder(dm.text_encoder), "mean", items).eval()


def test_fine_tuned_exported_equals_trained(tuned):
    art = Artifact.load(tuned["path"])
    encoder = art.manifest["encoder"]
    assert encoder["train"] == tuned["mode"] and encoder["frozen"] is False
    assert encoder.get("top_layers") == (1 if tuned["mode"] == "top_layers" else None)
    assert_run_metrics(art, tuned)
    module = tuned["objects"]["module"]
    with torch.no_grad():  # the stored vectors are the table refreshed from the best weights
        np.testing.assert_array_equal(art.embeddings, module.model.items.all().numpy())
        refreshed = module.model.items.text_module.all()
    torch.testing.assert_close(module.model.items.text, refreshed)


def test_fine_tuned_text_path_embeds_products_and_queries(tuned, tmp_path):
    art, r = Artifact.load(tuned["path"]), tuned
    texts = render_items(r["split"].catalog, art.text)
    path, tokenizer = fine_tuned_text_path(r), r["objects"]["datamodule"].tokenizer
    np.testing.assert_allclose(art.item_tower.encode(texts[:8]), encode_texts(path, tokenizer, texts[:8], 64),
                               atol=1e-6)
    # the fine-tuned weights, not the pretrained ones the run started from
    from towerrec.model.text_vectors import load_text_encoder

    start, _ = load_text_encoder(r["cfg"].model.encoder, texts, r["cfg"].seed)
    stored = {k: v for k, v in load_numpy(str(art.path / "item_tower/model.safetensors")).items()
              if k.startswith("encoder.")}
    changed = [k for k, v in stored.items() if not np.array_equal(v, start.state_dict()[k[len("encoder."):]].numpy())]
    assert changed
    if tuned["mode"] == "top_layers":  # the top layer alone trained (of the tiny encoder's 2)
        assert {k.split(".")[3] for k in changed} == {"1"} and all(k.startswith("encoder.encoder.layer.") for k in changed)
    # an existing product's text through the exported path = its training vector (text only: model=sequence)
    if tuned["mode"] == "full":
        np.testing.assert_allclose(art.item_tower.encode(texts[:8]), art.embeddings[:8], atol=1e-5)
    # a product added later is embedded by it
    copy = Path(shutil.copytree(tuned["path"], tmp_path / "artifact"))
    new = pd.DataFrame([catalog_row("new-tent", "Nordpeak Ultralight Tent 2P")])
    add_items(copy, new)
    added = Artifact.load(copy)
    pos = added.table.positions_of_items(["new-tent"])[0]
    text = render_item(new.iloc[0], added.text, None, [])
    np.testing.assert_allclose(added.embeddings[pos], encode_texts(path, tokenizer, [text], 64)[0], atol=1e-6)


def test_fine_tuned_checkpoint_export_gives_the_same_artifact(tuned, tmp_path):
    path = export_checkpoint(tuned["cfg"], tuned["objects"]["best_ckpt"], out_dir=tmp_path / "from_ckpt")
    art, first = Artifact.load(path), Artifact.load(tuned["path"])
    np.testing.assert_array_equal(art.embeddings, first.embeddings)
    for rel in ("user_tower/model.safetensors", "item_tower/model.safetensors", "item_tower/tower.json"):
        assert sha256_file(path / rel) == sha256_file(first.path / rel), rel
    assert art.manifest["encoder"] == first.manifest["encoder"]
    for key, value in tuned["metrics"].items():
        if key.split("/")[0] in ("val", "test"):
            assert art.manifest["metrics"][key] == pytest.approx(value, abs=1e-9), key


# ------------------------------------------------------------------------------------------ refused on load


def _edit_json(path: Path, rel: str, change) -> None:
    from towerrec.utils.io import sha256_file as sha

    obj = json.loads((path / rel).read_text())
    change(obj)
    (path / rel).write_text(json.dumps(obj))
    if rel != "manifest.json":
        manifest = json.loads((path / "manifest.json").read_text())
        manifest["files"][rel] = {"sha256": sha(path / rel), "bytes": (path / rel).stat().st_size}
        (path / "manifest.json").write_text(json.dumps(manifest))


REFUSED = {
    "model kind unknown": (lambda p: _edit_json(p, "manifest.json", lambda m: m["model"].update(kind="bert4rec")),
                           r"manifest\.json: field 'model\.kind' must be one of two_tower, sequence"),
    "model text missing": (lambda p: _edit_json(p, "manifest.json", lambda m: m["model"].pop("text")),
                           r"manifest\.json: required field 'model\.text' is missing"),
    "model kind two_tower": (lambda p: _edit_json(p, "manifest.json", lambda m: m["model"].update(kind="two_tower")),
                             r"user_tower/config\.json: missing \(required"),  # a text tower has an encoder
    "model text false": (lambda p: _edit_json(p, "manifest.json", lambda m: m["model"].update(text=False)),
                         r"item_tower/tower\.json: text True != manifest model\.text False"),
    "tower kind unknown": (lambda p: _edit_json(p, "user_tower/tower.json", lambda t: t.update(kind="gru")),
                           r"user_tower/tower\.json: field 'kind' must be one of 'sequence', 'sequence_items'"),
    "tower heads": (lambda p: _edit_json(p, "user_tower/tower.json", lambda t: t.update(heads=3)),
                    r"user_tower/tower\.json: field 'heads' must be a divisor of dim 16"),
    "tower max_len": (lambda p: _edit_json(p, "user_tower/tower.json", lambda t: t.pop("max_len")),
                      r"user_tower/tower\.json: required field 'max_len' is missing"),
    "item weights missing": (lambda p: (p / "item_tower/model.safetensors").unlink(),
                             r"item_tower/model\.safetensors: missing"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_damaged_sequence_artifact_is_refused_naming_the_file(art_copy, case):
    tamper, message = REFUSED[case]
    tamper(art_copy)
    with pytest.raises(ArtifactError, match=message):
        Artifact.load(art_copy)


def test_user_tower_weights_of_another_shape_are_refused_by_check(art_copy):
    _edit_json(art_copy, "user_tower/tower.json", lambda t: t.update(ff_mult=2))
    art = Artifact.load(art_copy)
    with pytest.raises(ArtifactError, match=r"user_tower/model\.safetensors: weights do not fit"):
        art.check()


def test_ready_made_windows_and_position_lists_embed_alike(run):
    art = Artifact.load(run["path"])
    histories = run["split"].examples("valid").histories
    tower = art.user_tower
    from_lists = tower.embed_histories(histories, art.embeddings, batch_size=EVAL_BATCH)
    windows = right_aligned(histories, 6)
    np.testing.assert_array_equal(tower.embed_histories(windows, art.embeddings, batch_size=EVAL_BATCH), from_lists)
    np.testing.assert_array_equal(tower.windows([np.array([4, -1, 7])], [True]), [[-1, -1, -1, 4, 7, -2]])
    np.testing.assert_array_equal(tower.windows([np.arange(9)], [True]), [[4, 5, 6, 7, 8, -2]])


def test_artifacts_without_a_model_kind_load_as_text_two_tower_artifacts(art_dir):
    """Artifacts exported before manifest.model existed are text two-tower ones, unchanged."""
    _edit_json(art_dir, "manifest.json", lambda m: m.pop("model"))
    art = Artifact.load(art_dir)
    assert art.kind == "two_tower" and art.has_text_path and art.check()["towers"] == {"user": 16, "item": 16}
    assert Retriever(art).user_text([1, 2])


def test_serving_a_sequence_artifact_does_not_import_lightning(run):
    """Loading, checking and querying a sequence artifact needs torch and the towers, never Lightning."""
    import os
    import subprocess
    import sys

    code = "\n".join([
        "import sys",
        "from towerrec.retrieval import Retriever",
        f"r = Retriever({str(run['path'])!r})",
        "r.artifact.check()",
        "assert len(r.recommend([r.items['item_id'][3]], k=3, text='a tent')) == 3",
        "found = sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning'))",
        "assert not found, found",
    ])
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_short_histories_are_embedded_without_their_padding_slots(run):
    """embed_histories drops the window slots that are padding in every row of a batch (a 2-item history costs
    2 positions of the transformer, not max_len), with the vectors the full window gives."""
    art = Artifact.load(run["path"])
    tower = art.user_tower
    windows = tower.windows([np.array([3, 5]), np.array([1])])  # (2, max_len), mostly padding
    assert windows.shape[1] == tower.max_len > 2
    with torch.inference_mode():
        w = torch.from_numpy(windows)
        full = tower.module(torch.from_numpy(art.embeddings)[w.clamp_min(0)], w != -1)[:, -1].numpy()
    seen = []
    last_layer = tower.module.transformer.layers[-1]  # runs on the (trimmed) window in either path
    hook = last_layer.norm1.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    try:
        got = tower.embed_histories(windows, art.embeddings)
    finally:
        hook.remove()
    assert seen == [2]
    np.testing.assert_allclose(got, full, atol=1e-5)
