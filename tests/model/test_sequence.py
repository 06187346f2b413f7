"""The sequence towers: causal and padding-blind user vectors, batched = one by one, the frozen text-vector cache,
the full-catalog loss by hand, training windows, and the presets running (and exporting) end to end on the tiny
setting."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from towerrec.artifact import Artifact
from towerrec.data.windows import right_aligned, training_windows
from towerrec.model import text_vectors as tv
from towerrec.model.loss import full_softmax_loss
from towerrec.model.sequence import ItemEncoder, SequenceRecommender, SequenceUserTower, attention_mask

ROOT = Path(__file__).resolve().parents[2]
TINY_ENCODER = {"random_init": {"vocab_size": 200, "hidden_size": 16, "num_hidden_layers": 1,
                                "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 64}}


def make_model(item_ids=False, text=True, num_items=30, dim=16, max_len=8, seed=0):
    torch.manual_seed(seed)
    vectors = np.random.default_rng(seed).normal(size=(num_items, 24)).astype(np.float32) if text else None
    counts = np.r_[np.ones(num_items - 5), np.zeros(5)]  # the last 5 products were never bought
    items = ItemEncoder(vectors, dim, num_items=num_items, item_ids=item_ids, item_counts=counts)
    users = SequenceUserTower(dim, max_len, layers=2, heads=2, dropout=0.0)
    return SequenceRecommender(items, users).eval()


def windows(histories, length=8):
    return torch.as_tensor(right_aligned(histories, length))


def test_no_slot_sees_a_later_item():
    model = make_model()
    w = windows([[3, 4, 5, 6, 7]])
    changed = w.clone()
    changed[0, -2] = 20  # the second newest item
    before, after = model.user_states(w)[0], model.user_states(changed)[0]  # (L, D)
    torch.testing.assert_close(before[:-2], after[:-2])  # older slots never see it
    assert not torch.allclose(before[-2:], after[-2:])


@pytest.mark.parametrize("layers", [1, 2])
def test_newest_slot_path_equals_the_full_forward(layers):
    torch.manual_seed(layers)
    tower = SequenceUserTower(16, 8, layers=layers, heads=2, dropout=0.3).eval()
    table = torch.randn(30, 16)
    w = windows([[3], [4, 5, 6], [1, 2, 3, 4, 5, 6, 7, 8], [9, 9, 2]])
    real = w >= 0
    full = tower(table[w.clamp_min(0)], real)[:, -1]  # every slot through every layer
    torch.testing.assert_close(tower.newest(table[w.clamp_min(0)], real), full)
    torch.testing.assert_close(tower.embed_windows(table, w), full)
    tower.train()  # training keeps the full path (dropout, every slot's output)
    assert tower.embed_windows(table, w).shape == full.shape


def test_padding_does_not_change_a_users_vector():
    model = make_model(item_ids=True)
    history = [2, 9, 4]
    alone = model.embed_users(windows([history], 3))
    for length in (5, 8):
        torch.testing.assert_close(model.embed_users(windows([history], length)), alone)
    # what sits in a padded slot does not matter either
    w = windows([history], 6)
    noisy = w.clone()
    noisy[0, :3] = torch.tensor([11, 12, 13])
    real = w >= 0
    states = model.users(model.items(noisy.clamp_min(0)), real)
    torch.testing.assert_close(states[0, -1], alone[0])


def test_batched_equals_one_by_one():
    model = make_model(item_ids=True)
    histories = [[1], [2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16]]
    batched = model.embed_users(windows(histories))
    for row, h in enumerate(histories):
        torch.testing.assert_close(batched[row], model.embed_users(windows([h]))[0])


def test_attention_mask_blocks_the_future_and_padding_but_not_a_slots_own():
    real = torch.tensor([[False, True, True]])
    mask = attention_mask(real, heads=1)[0]
    expected = torch.tensor([[False, True, True], [True, False, True], [True, False, False]])
    assert torch.equal(mask, expected)


def test_a_new_product_appended_to_a_history_changes_the_user_and_can_be_found():
    model = make_model(item_ids=True)
    unseen = 27  # no id vector: text alone
    assert torch.equal(model.items.ids(model.items.id_rows[torch.tensor([unseen])]), torch.zeros(1, 16))
    before = model.embed_users(windows([[1, 2]]))
    after = model.embed_users(windows([[1, 2, unseen]]))
    assert not torch.allclose(before, after)
    scores = model.items.all() @ model.items(torch.tensor([unseen]))[0]  # (N,)
    assert int(scores.argmax()) == unseen  # its own vector is its nearest


def test_id_only_items_and_unknown_adapters():
    model = make_model(text=False, item_ids=True)
    assert model.items.all().shape == (30, 16) and model.items.adapter is None
    with pytest.raises(ValueError, match="needs text vectors, item ids, or both"):
        ItemEncoder(None, 8, num_items=5, item_ids=False)
    with pytest.raises(ValueError, match="model.adapter must be one of"):
        ItemEncoder(np.zeros((3, 4), np.float32), 4, adapter="whitening")


def test_full_softmax_loss_by_hand():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    items = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    targets = torch.tensor([2, 1])
    t = 0.5
    # row 0 logits (2, 0, 1.2), target 2; row 1 logits (0, 2, 1.6), target 1
    row0 = -1.2 + math.log(math.exp(2) + 1 + math.exp(1.2))
    row1 = -2.0 + math.log(1 + math.exp(2) + math.exp(1.6))
    assert full_softmax_loss(q, items, targets, t).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_training_windows_use_every_transition_once():
    seqs = [np.arange(10, 17), np.array([1]), np.array([2, 3])]
    w = training_windows(seqs, max_len=3)
    inputs, targets = w[:, :-1], w[:, 1:]
    pairs = sorted((int(a), int(b)) for a, b in zip(inputs.ravel(), targets.ravel()) if a >= 0)
    assert pairs == [(2, 3)] + [(i, i + 1) for i in range(10, 16)]
    assert (w[:, -1] >= 0).all()  # right-aligned: the newest item in the last slot


def test_text_vector_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    texts = ["red boots", "blue bag", "green tent"]
    first, _, _ = tv.text_vectors(TINY_ENCODER, texts, max_length=8, cache_dir=tmp_path, progress=False)
    assert first.shape == (3, 16) and len(list(tmp_path.glob("textvec-*.npy"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("recomputed although the cache holds these vectors")

    monkeypatch.setattr(tv, "compute_text_vectors", fail)
    again, _, _ = tv.text_vectors(TINY_ENCODER, texts, max_length=8, cache_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(again, first)
    monkeypatch.undo()
    key = tv.cache_key(TINY_ENCODER, "mean", 8, texts)
    assert key != tv.cache_key(TINY_ENCODER, "mean", 8, ["red boots", "blue bag", "green tents"])  # a text
    assert key != tv.cache_key(TINY_ENCODER, "mean", 8, ["Title: red boots", "blue bag", "green tent"])  # template
    assert key != tv.cache_key({"name_or_path": "minilm"}, "mean", 8, texts)  # the encoder
    assert key != tv.cache_key(TINY_ENCODER, "cls", 8, texts) != tv.cache_key(TINY_ENCODER, "mean", 16, texts)
    assert key != tv.cache_key(TINY_ENCODER, "mean", 8, texts, seed=1)  # random init: another seed, other weights


@pytest.mark.parametrize("preset", ["sequence", "sequence_ids", "sasrec"])
@pytest.mark.parametrize("loss", ["inbatch", "full"])
def test_presets_compose_and_train_on_the_tiny_setting(preset, loss, tmp_path, compose_cfg):
    from towerrec.tasks.train import train

    overrides = ["experiment=tiny", f"model={preset}", f"loss={loss}", "model.dim=16", "model.max_len=10",
                 "data.num_users=80", "data.num_items=60", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
                 "logger=none", "plots=false"]
    metrics, objects = train(compose_cfg(overrides, tmp_path / "run"))
    module = objects["module"]
    assert (module.model.items.adapter is None) == (preset == "sasrec")
    assert (module.model.items.ids is not None) == (preset != "sequence")
    for key in ("val/ndcg@10", "test/recall@10", "test_kept/ndcg@10", "val_kept/recall@10"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["test_kept/recall@50"] >= 0
    # every preset exports (tests/artifact/test_sequence_export.py checks the artifact itself)
    art = Artifact.load(objects["artifact"])
    assert art.kind == "sequence" and art.has_text_path == (preset != "sasrec")
    assert art.manifest["model"]["item_ids"] == (preset != "sequence")
    assert art.manifest["metrics"]["test/ndcg@10"] == metrics["test/ndcg@10"]
