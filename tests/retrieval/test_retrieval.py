"""Retrieval over an exported artifact (towerrec.retrieval): users rendered and embedded as in training,
the artifact's metrics equal the in-training evaluation, and search with exclusions / category filters
returns exactly k valid results (exact and over-fetch paths, approximate indexes included)."""

from __future__ import annotations

import copy
import functools
import math
from pathlib import Path

import faiss
import lightning as L
import numpy as np
import pytest
import torch

from towerrec.artifact import Artifact
from towerrec.artifact.export import export_artifact
from towerrec.data.datamodule import RetrievalDataModule
from towerrec.data.text import TextConfig, render_items
from towerrec.model.encode import encode_texts
from towerrec.model.encoders import load_encoder
from towerrec.model.module import RetrievalModule
from towerrec.model.towers import TwoTower
from towerrec.retrieval import Retriever, evaluate_artifact
from towerrec.tasks.export import export_checkpoint, export_run

ROOT = Path(__file__).resolve().parents[2]
TINY_BERT = {"vocab_size": 300, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 32, "max_position_embeddings": 128}
TEXT = TextConfig(user_max_items=3, user_max_tokens=48)
DM_ARGS = dict(batch_size=8, eval_batch_size=32, item_max_length=32, user_max_length=48, max_history=5)


pytestmark = pytest.mark.usefixtures("one_thread_faiss")


@pytest.fixture(scope="module")
def split(tiny_split):
    return tiny_split


@pytest.fixture(scope="module")
def trained(split, tmp_path_factory):
    """(module, datamodule): one epoch of a tiny model with an item-id embedding, then trainer.test."""
    corpus = render_items(split.catalog, TEXT)
    torch.manual_seed(0)
    encoder, tokenizer = load_encoder({"random_init": dict(TINY_BERT)}, corpus=corpus)
    dm = RetrievalDataModule(split, tokenizer, TEXT, cache_dir=str(tmp_path_factory.mktemp("cache")), **DM_ARGS)
    model = TwoTower(encoder, projection_dim=12, item_id_counts=split.item_counts())
    module = RetrievalModule(model, functools.partial(torch.optim.AdamW, lr=5e-3), item_counts=split.item_counts(),
                             eval_config={"ks": (5, 10, 20, 50)})
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        use_distributed_sampler=False)
    trainer.fit(module, datamodule=dm)
    trainer.validate(module, datamodule=dm, verbose=False)
    trainer.test(module, datamodule=dm, verbose=False)
    return module, dm


@pytest.fixture(scope="module")
def artifact(trained, tmp_path_factory) -> Artifact:
    module, dm = trained
    path = export_artifact(tmp_path_factory.mktemp("art") / "artifact", module.model, dm.tokenizer, dm.split,
                              dm.text, item_max_length=dm.item_max_length, user_max_length=dm.user_max_length,
                              train_cfg={}, metrics={}, batch_size=dm.eval_batch_size, progress=False)
    return Artifact.load(path)


@pytest.fixture(scope="module")
def retriever(artifact) -> Retriever:
    return Retriever(artifact)


# ------------------------------------------------------------------------------------------ parity with training


def test_user_texts_are_the_training_texts(retriever, trained, split):
    _, dm = trained
    for stage in ("valid", "test"):
        examples = split.examples(stage)
        assert [retriever.user_text(h) for h in examples.histories] == dm.user_texts(examples)
    # by item ids (what serving receives), oldest first, as the split stores histories
    history = split.examples("test").histories[0]
    ids = split.catalog.item_ids[history].tolist()
    assert retriever.user_text(retriever.history_positions(ids)) == dm.user_texts(split.examples("test"))[0]


def test_artifact_metrics_equal_the_in_training_evaluation(artifact, trained, split):
    module, dm = trained
    metrics = evaluate_artifact(artifact, split, {"ks": [5, 10, 20, 50]}, stages=("valid", "test"),
                                batch_size=dm.eval_batch_size)
    for stage, tag in (("valid", "val"), ("test", "test")):
        expected = module.eval_metrics[stage]
        got = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith(tag + "/")}
        assert got.keys() == expected.keys()
        np.testing.assert_allclose([got[k] for k in expected], list(expected.values()), rtol=1e-9, atol=1e-12)
    assert metrics["test/recall@50"] > 0


def test_embed_user_is_the_user_tower_on_the_training_text(retriever, trained, split):
    module, dm = trained
    history = split.examples("test").histories[3]
    vec = retriever.embed_user(split.catalog.item_ids[history].tolist())
    expected = encode_texts(module.model.user_tower, dm.tokenizer, [dm.user_texts(split.examples("test"))[3]], 48)
    np.testing.assert_allclose(vec, expected[0], atol=1e-6)
    assert vec.shape == (12,) and np.linalg.norm(vec) == pytest.approx(1.0, abs=1e-5)


def test_embed_histories_is_user_text_then_embed_texts_bit_for_bit(retriever, split):
    """The one generic path (embed_user, recommend and the harness use it) is today's text path exactly."""
    histories = split.examples("test").histories[:7] + [np.array([], dtype=np.int64), np.array([-1, 2])]
    texts = [None, "red running shoes", None, "  ", "a tent", None, None, "blue socks", None]
    for batch_size in (None, 4):
        np.testing.assert_array_equal(
            retriever.embed_histories(histories, batch_size=batch_size),
            retriever.embed_texts([retriever.user_text(h) for h in histories], batch_size))
        np.testing.assert_array_equal(
            retriever.embed_histories(histories, texts, batch_size=batch_size),
            retriever.embed_texts([retriever.user_text(h, t) for h, t in zip(histories, texts)], batch_size))
    assert not retriever.is_sequence and retriever.artifact.kind == "two_tower"
    assert retriever.artifact.manifest["model"] == {"kind": "two_tower"}
    with pytest.raises(ValueError, match="2 texts for 9 histories"):
        retriever.embed_histories(histories, texts[:2])


def test_free_text_is_rendered_first_within_the_budget(retriever, split):
    ids = split.catalog.item_ids[[1, 2]].tolist()
    positions = retriever.history_positions(ids)
    both = retriever.user_text(positions, text="  red   running shoes ")
    newest = retriever.items["history_text"].iloc[positions[-1]]
    assert both.startswith("red running shoes" + TEXT.item_sep + newest)  # query, then newest first
    assert retriever.artifact.user_tower.count_tokens(both) <= TEXT.user_max_tokens + 2  # the older item did not fit the budget
    assert retriever.items["history_text"].iloc[positions[0]] not in both
    assert retriever.user_text([], text="red running shoes") == "red running shoes"
    assert not np.allclose(retriever.embed_user(ids, text="red running shoes"), retriever.embed_user(ids))
    with pytest.raises(ValueError, match="empty history and no text"):
        retriever.embed_user([])
    with pytest.raises(ValueError, match="unknown to the artifact"):
        retriever.embed_user(["no-such-item"])
    np.testing.assert_array_equal(retriever.embed_user(["no-such-item", *ids]), retriever.embed_user(ids))


# ------------------------------------------------------------------------------------------ search


def brute_force(art: Artifact, q: np.ndarray, k: int, exclude: set[int], mask: np.ndarray | None) -> list[int]:
    scores = art.embeddings @ q
    keep = np.ones(art.num_items, bool) if mask is None else mask.copy()
    keep[[i for i in exclude]] = False
    order = [i for i in np.argsort(-scores, kind="stable") if keep[i]]
    return [int(art.row_ids[i]) for i in order[:k]]


@pytest.mark.parametrize("path", ["exact", "overfetch"])
def test_search_with_exclusions_and_category_returns_exactly_k_valid(artifact, path):
    r = Retriever(artifact, exact_filter_max=2048 if path == "exact" else 0, exact_filter_fraction=0.0)
    top = artifact.items["category"].str.split(" > ").str[0]
    category = top.value_counts().index[0]  # the largest top-level category
    mask = r.category_mask(category)
    assert 10 < mask.sum() < artifact.num_items
    rng = np.random.default_rng(0)
    q = artifact.embeddings[rng.choice(artifact.num_items, 6, replace=False)]
    allowed_ids = artifact.row_ids[mask]
    exclude = [set(rng.choice(allowed_ids, 5, replace=False).tolist()) | {int(rng.integers(80))} for _ in range(6)]
    k = int(mask.sum()) - 8  # more than a simple over-fetch of k + |exclude| brings through the filter
    results = r.search(q, k, exclude, category)
    for qi, hits, excl in zip(q, results, exclude):
        ids = [i for i, _ in hits]
        assert len(ids) == k == len(set(ids))
        assert not set(ids) & excl
        cats = artifact.items.set_index("row_id").loc[ids, "category"]
        assert all(c == category or c.startswith(category + " > ") for c in cats)
        scores = [s for _, s in hits]
        assert scores == sorted(scores, reverse=True)
        assert set(ids) == set(brute_force(artifact, qi, k, excl, mask))
    # asking for more than exist returns all the eligible ones
    many = r.search(q[:1], 79, exclude[:1], category)[0]
    assert len(many) == len(set(allowed_ids) - exclude[0])


@pytest.mark.parametrize("path", ["exact", "overfetch"])
def test_search_with_a_mask_keeps_only_its_products_and_the_category(artifact, path):
    r = Retriever(artifact, exact_filter_max=2048 if path == "exact" else 0, exact_filter_fraction=0.0)
    category = artifact.items["category"].str.split(" > ").str[0].value_counts().index[0]
    in_category = r.category_mask(category)
    prices = artifact.table.prices
    with np.errstate(invalid="ignore"):
        mask = prices <= np.nanmedian(prices[in_category])  # an (N,) filter over table positions, e.g. a price range
    both = in_category & mask
    assert 5 < both.sum() < in_category.sum()
    q = artifact.embeddings[:4]
    exclude = [{int(artifact.row_ids[np.flatnonzero(both)[i]])} for i in range(4)]
    k = int(both.sum()) - 2
    for qi, hits, excl in zip(q, r.search(q, k, exclude, category, mask=mask), exclude):
        ids = [i for i, _ in hits]
        assert len(ids) == k == len(set(ids)) and not set(ids) & excl
        assert both[artifact.table.positions_of_rows(ids)].all()
        assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
        assert set(ids) == set(brute_force(artifact, qi, k, excl, both))
    # the mask alone, and a mask nothing passes
    alone = r.search(q[:1], 5, None, mask=mask)[0]
    assert [i for i, _ in alone] == brute_force(artifact, q[0], 5, set(), mask)
    assert r.search(q[:2], 5, None, mask=np.zeros(artifact.num_items, dtype=bool)) == [[], []]
    with pytest.raises(ValueError, match=r"mask must have shape \(80,\)"):
        r.search(q[:1], 5, mask=mask[:-1])


class CountingIndex:
    def __init__(self, index):
        self.index, self.fetches = index, []

    def search(self, q, k):
        self.fetches.append(k)
        return self.index.search(q, k)


def test_overfetch_grows_until_enough_pass_the_filter(artifact):
    art = copy.copy(artifact)
    art.index = CountingIndex(artifact.index)
    r = Retriever(art, exact_filter_max=0, exact_filter_fraction=0.0)
    k, n = 3, artifact.num_items
    # a (category, query) pair whose k-th in-category product ranks beyond the first fetch, k * N / |category|
    cases = []
    for category in artifact.items["category"].str.split(" > ").str[0].unique():
        mask = r.category_mask(category)
        first_fetch = math.ceil(k * n / mask.sum())
        for i in range(n):
            order = np.argsort(-(artifact.embeddings @ artifact.embeddings[i]), kind="stable")
            kth = np.flatnonzero(mask[order])[k - 1]
            if kth >= first_fetch and first_fetch < n:
                cases.append((category, i))
    assert cases
    category, i = cases[0]
    hits = r.search(artifact.embeddings[i : i + 1], k, None, category)[0]
    assert len(art.index.fetches) >= 2 and art.index.fetches == sorted(art.index.fetches)
    assert [h for h, _ in hits] == brute_force(artifact, artifact.embeddings[i], k, set(), r.category_mask(category))


def test_category_filter_matches_whole_path_segments(retriever, artifact):
    cat = artifact.items["category"].iloc[0]  # "A > B > C"
    parent = cat.rsplit(" > ", 1)[0]
    assert retriever.category_mask(parent)[0] and retriever.category_mask(cat)[0]
    assert not retriever.category_mask(parent[:-1])[0]  # a prefix that cuts a segment matches nothing of it
    assert not retriever.category_mask("No such category").any()
    assert retriever.search(artifact.embeddings[:1], 5, None, "No such category") == [[]]


def test_approximate_index_still_returns_exactly_k(tmp_path, trained, artifact):
    module, dm = trained
    cfg = {"factory": "IVF{nlist},Flat", "nlist": 8, "search": {"nprobe": 1}}
    path = export_artifact(tmp_path / "ivf", module.model, dm.tokenizer, dm.split, dm.text,
                              item_max_length=32, user_max_length=48, index_cfg=cfg, batch_size=32, progress=False)
    r = Retriever(path)
    assert faiss.extract_index_ivf(r.artifact.index).nprobe == 1
    q = artifact.embeddings[:4]
    _, labels = r.artifact.index.search(q, 60)
    assert ((labels >= 0).sum(1) < 60).all()  # one probed cell cannot supply 60 results
    exclude = [set(range(10)) for _ in range(4)]
    for qi, hits in zip(q, r.search(q, 60, exclude)):
        ids = [i for i, _ in hits]
        assert len(ids) == 60 == len(set(ids)) and not set(ids) & set(range(10))
    # a filter mask on the index path (not scored exactly up front): the exact fallback still finds k
    masked = Retriever(r.artifact, exact_filter_max=0, exact_filter_fraction=0.0)
    half = np.arange(masked.num_items) % 2 == 0
    for hits in masked.search(q, 30, exclude, mask=half):
        ids = [i for i, _ in hits]
        assert len(ids) == 30 == len(set(ids)) and not set(ids) & set(range(10))
        assert half[masked.table.positions_of_rows(ids)].all()


def test_recommend_and_similar_items(retriever, artifact, split):
    history = split.catalog.item_ids[[4, 9, 17]].tolist()
    recs = retriever.recommend(history, k=10)
    assert len(recs) == 10 and not {r["item_id"] for r in recs} & set(history)
    assert set(recs[0]) == {"item_id", "score", "title", "brand", "category", "price", "row_id"}
    row = artifact.items.set_index("item_id").loc[recs[0]["item_id"]]
    assert recs[0]["title"] == row["title"] and recs[0]["category"] == row["category"]
    assert recs[0]["price"] is None or math.isclose(recs[0]["price"], row["price"])
    with_seen = retriever.recommend(history, k=79, exclude_seen=False)
    assert set(history) <= {r["item_id"] for r in with_seen}
    category = split.catalog.items["category"].iloc[4].split(" > ")[0]
    assert all(r["category"].startswith(category) for r in retriever.recommend(history, k=3, category=category))
    with pytest.raises(ValueError, match="empty history and no text"):
        retriever.recommend([], k=3)

    item = split.catalog.item_ids[7]
    similar = retriever.similar_items(item, k=5)
    assert len(similar) == 5 and item not in {s["item_id"] for s in similar}
    assert [s["row_id"] for s in similar] == brute_force(artifact, artifact.embeddings[7], 5, {7}, None)
    with pytest.raises(KeyError, match="unknown item id"):
        retriever.similar_items("no-such-item")


# ------------------------------------------------------------------------------------------ pipeline hooks


def test_pipeline_export_and_checkpoint_export_reproduce_the_run_metrics(tmp_path):
    """train(cfg) with experiment=tiny_two_tower, then the two lead-facing hooks: export_run (end of training) and
    export_checkpoint (`stage=export ckpt_path=...`); the artifact's own metrics equal the run's."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    from towerrec.data.load import load_split
    from towerrec.tasks.train import train

    run_dir = tmp_path / "run"
    overrides = ["experiment=tiny_two_tower", "data.num_users=60", "data.num_items=80", "data.max_len=8",
                 "model.datamodule.batch_size=16", "model.datamodule.eval_batch_size=32", "trainer.max_epochs=1",
                 "trainer.enable_progress_bar=false", "logger=none", "model.item_id_embedding=true",
                 f"paths.log_dir={tmp_path / 'logs'}", f"paths.cache_dir={tmp_path / 'cache'}"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    try:
        with open_dict(cfg):
            del cfg["hydra"]
            if "index" not in cfg:  # until the lead adds the groups to conf/train.yaml
                cfg.index = OmegaConf.load(ROOT / "conf" / "index" / "flat.yaml")
                cfg.export = OmegaConf.load(ROOT / "conf" / "export" / "default.yaml")
        metrics, objects = train(cfg)
        path = export_run(cfg, objects, metrics)
        assert path == run_dir / "artifact"
        art = Artifact.load(path)
        assert art.manifest["metrics"]["test/recall@10"] == metrics["test/recall@10"]
        split = load_split(cfg.data)
        got = evaluate_artifact(art, split, cfg.eval, stages=("valid", "test"), batch_size=32)
        for key, value in got.items():
            assert value == pytest.approx(metrics[key], abs=1e-9), key

        ckpt = objects["best_ckpt"]
        assert ckpt is not None
        path2 = export_checkpoint(cfg, ckpt, out_dir=tmp_path / "from_ckpt")
        art2 = Artifact.load(path2)
        np.testing.assert_array_equal(art2.embeddings, art.embeddings)
        assert art2.manifest["train_config"]["ckpt_path"] == str(ckpt)
        for key, value in got.items():
            assert art2.manifest["metrics"][key] == pytest.approx(value, abs=1e-9), key

        # the checkpoint, not the config it is handed, says how the towers are built
        assert torch.load(ckpt, weights_only=True)["hyper_parameters"]["model_config"]["model"]["item_id_embedding"]
        with open_dict(cfg):
            cfg.model.item_id_embedding = False
            cfg.model.projection_dim = 7
            cfg.model.encoder.random_init.hidden_size = 48
        path3 = export_checkpoint(cfg, ckpt, out_dir=tmp_path / "other_cfg", evaluate=False)
        np.testing.assert_array_equal(Artifact.load(path3).embeddings, art.embeddings)
    finally:
        HydraConfig.instance().cfg = None
