"""Towers and encoders on a tiny random BERT: pooling, freezing, shapes, sharing, item-id embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.data import TINY_BERT

from towerrec.data.tokens import pad_batch, tokenize
from towerrec.model.encoders import load_encoder, resolve_path, train_wordpiece_tokenizer
from towerrec.model.towers import TwoTower, encoder_layers, freeze_lower_layers, pool

TEXTS = ["yoga mat", "trail running shoe brand stridex", "water bottle", "espresso machine"]


def batch_of(tokenizer, texts=TEXTS, item_idx=None) -> dict:
    batch = pad_batch(tokenize(tokenizer, texts, max_length=32), tokenizer.pad_token_id)
    if item_idx is not None:
        batch["item_idx"] = torch.tensor(item_idx)
    return batch


# ---------------------------------------------------------------------------------------------- pool


def test_pool_mean_ignores_padding_and_cls_takes_first_position():
    hidden = torch.tensor(
        [
            [[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]],  # last position is padding
            [[5.0, 6.0], [100.0, 100.0], [100.0, 100.0]],  # only the first position is real
        ]
    )  # (B=2, L=3, H=2)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    torch.testing.assert_close(pool(hidden, mask, "mean"), torch.tensor([[2.0, 3.0], [5.0, 6.0]]))
    torch.testing.assert_close(pool(hidden, mask, "cls"), torch.tensor([[1.0, 2.0], [5.0, 6.0]]))
    with pytest.raises(ValueError, match="pooling must be 'mean' or 'cls'"):
        pool(hidden, mask, "max")


def test_pool_mean_of_fully_masked_row_is_zero_not_nan():
    out = pool(torch.ones(1, 2, 3), torch.zeros(1, 2, dtype=torch.long), "mean")
    assert torch.equal(out, torch.zeros(1, 3))


# ------------------------------------------------------------------------------------------ freezing


def trainable(module) -> bool:
    return all(p.requires_grad for p in module.parameters())


def frozen(module) -> bool:
    return not any(p.requires_grad for p in module.parameters())


def test_freeze_embeddings_and_lowest_layers(tiny_encoder):
    encoder, _ = tiny_encoder
    layers = encoder_layers(encoder)
    assert len(layers) == 2
    freeze_lower_layers(encoder, 1)
    assert frozen(encoder.embeddings)
    assert frozen(layers[0])
    assert trainable(layers[1])


def test_freeze_zero_all_and_too_many(tiny_encoder):
    encoder, _ = tiny_encoder
    freeze_lower_layers(encoder, 0)
    assert trainable(encoder)
    with pytest.raises(ValueError, match="cannot freeze 3 layers: the encoder has 2"):
        freeze_lower_layers(encoder, 3)
    assert trainable(encoder)  # a refused request changes nothing
    freeze_lower_layers(encoder, -1)
    assert frozen(encoder)


def test_freeze_unknown_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot find the transformer layers of Linear"):
        freeze_lower_layers(torch.nn.Linear(2, 2), 1)


# ------------------------------------------------------------------------------------------ TwoTower


def test_two_tower_outputs_unit_norm_rows(tiny_encoder):
    encoder, tokenizer = tiny_encoder
    model = TwoTower(encoder).eval()
    batch = batch_of(tokenizer)
    users, items = model.embed_users(batch), model.embed_items(batch)
    assert users.shape == items.shape == (len(TEXTS), 16)
    assert model.dim == 16
    torch.testing.assert_close(users.norm(dim=-1), torch.ones(len(TEXTS)))
    torch.testing.assert_close(items.norm(dim=-1), torch.ones(len(TEXTS)))
    torch.testing.assert_close(users, items)  # shared encoder, no projection, no id embedding: same function


def test_two_tower_projection_changes_dimension(tiny_encoder):
    encoder, tokenizer = tiny_encoder
    model = TwoTower(encoder, projection_dim=8, pooling="cls").eval()
    batch = batch_of(tokenizer)
    assert model.dim == 8
    assert model.embed_users(batch).shape == model.embed_items(batch).shape == (len(TEXTS), 8)
    torch.testing.assert_close(model.embed_items(batch).norm(dim=-1), torch.ones(len(TEXTS)))


def test_two_tower_without_normalisation(tiny_encoder):
    encoder, tokenizer = tiny_encoder
    users = TwoTower(encoder, normalize=False).eval().embed_users(batch_of(tokenizer))
    assert not torch.allclose(users.norm(dim=-1), torch.ones(len(TEXTS)))


def test_shared_encoder_is_one_module(tiny_encoder):
    encoder, _ = tiny_encoder
    model = TwoTower(encoder, shared_encoder=True)
    assert model.user_tower.encoder is model.item_tower.encoder
    n_encoder = sum(p.numel() for p in encoder.parameters())
    n_model = sum(p.numel() for p in model.parameters())  # parameters() deduplicates shared ones
    assert n_model == n_encoder


def test_separate_encoders_have_distinct_parameters(tiny_encoder):
    encoder, _ = tiny_encoder
    model = TwoTower(encoder, shared_encoder=False, freeze_layers=1)
    user_params = dict(model.user_tower.encoder.named_parameters())
    item_params = dict(model.item_tower.encoder.named_parameters())
    assert model.user_tower.encoder is not model.item_tower.encoder
    assert user_params.keys() == item_params.keys()
    for name, p in user_params.items():
        q = item_params[name]
        assert p is not q and p.data_ptr() != q.data_ptr()
        assert torch.equal(p, q)  # same starting weights
        assert p.requires_grad == q.requires_grad  # both encoders frozen alike
    assert frozen(model.item_tower.encoder.embeddings) and frozen(model.user_tower.encoder.embeddings)
    # training one tower leaves the other alone
    with torch.no_grad():
        next(model.item_tower.encoder.parameters()).add_(1.0)
    assert not torch.equal(next(model.item_tower.encoder.parameters()), next(model.user_tower.encoder.parameters()))


# ------------------------------------------------------------------------------- item-id embeddings

COUNTS = np.array([3, 0, 1, 0])  # items 0 and 2 seen in training, 1 and 3 not


def test_id_embedding_table_has_a_zero_row_for_unseen_items(tiny_encoder):
    encoder, _ = tiny_encoder
    tower = TwoTower(encoder, projection_dim=8, item_id_counts=COUNTS).item_tower
    assert tower.id_rows.tolist() == [1, 0, 2, 0]
    assert tower.id_embedding.weight.shape == (3, 8)
    assert torch.equal(tower.id_embedding.weight[0], torch.zeros(8))
    assert "id_rows" in tower.state_dict()  # saved with checkpoints
    assert TwoTower(encoder).item_tower.id_embedding is None


def test_unseen_and_new_items_get_the_text_only_embedding(tiny_encoder):
    encoder, tokenizer = tiny_encoder
    model = TwoTower(encoder, projection_dim=8, item_id_counts=COUNTS).eval()
    with torch.no_grad():
        model.item_tower.id_embedding.weight[1:] = 0.5  # make the seen items' id vectors large and plain
    text_only = model.embed_items(batch_of(tokenizer))  # no item_idx: text alone
    # rows: item 0 (seen), item 1 (unseen), item 2 (seen), item 7 (beyond the table: a new product)
    with_ids = model.embed_items(batch_of(tokenizer, item_idx=[0, 1, 2, 7]))
    assert torch.equal(with_ids[1], text_only[1])
    assert torch.equal(with_ids[3], text_only[3])
    assert (with_ids[0] - text_only[0]).abs().max() > 1e-2
    assert (with_ids[2] - text_only[2]).abs().max() > 1e-2
    torch.testing.assert_close(with_ids.norm(dim=-1), torch.ones(4))
    # the user tower has no id embedding at all
    assert model.user_tower.id_embedding is None


def test_unseen_row_is_never_trained(tiny_encoder):
    encoder, tokenizer = tiny_encoder
    model = TwoTower(encoder, item_id_counts=COUNTS)
    model.embed_items(batch_of(tokenizer, item_idx=[0, 1, 2, 3])).sum().backward()
    grad = model.item_tower.id_embedding.weight.grad
    assert torch.equal(grad[0], torch.zeros(16))
    assert grad[1:].abs().sum() > 0


# ------------------------------------------------------------------------------------------ encoders


def test_random_init_encoder_sizes(tiny_encoder, corpus):
    encoder, tokenizer = tiny_encoder
    assert encoder.config.hidden_size == 16
    assert encoder.config.num_hidden_layers == 2
    assert encoder.config.vocab_size == len(tokenizer) <= TINY_BERT["vocab_size"]
    ids = tokenizer("yoga mat")["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    with pytest.raises(ValueError, match="needs a corpus"):
        load_encoder({"random_init": dict(TINY_BERT)})


def test_wordpiece_tokenizer_is_deterministic(corpus):
    # five trainings on the same corpus; with tokenizers 0.23 every one of them differs
    tokenizers = [train_wordpiece_tokenizer(corpus, vocab_size=200) for _ in range(5)]
    text = "Trail running shoe for coffee lovers"
    assert all(t.get_vocab() == tokenizers[0].get_vocab() for t in tokenizers)
    assert all(t(text)["input_ids"] == tokenizers[0](text)["input_ids"] for t in tokenizers)


def test_wordpiece_tokenizer_special_tokens(corpus):
    tok = train_wordpiece_tokenizer(corpus, vocab_size=200)
    vocab = tok.get_vocab()
    assert [vocab[t] for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [0, 1, 2, 3, 4]
    assert tok.pad_token_id == 0
    assert tok("Yoga MAT")["input_ids"] == tok("yoga mat")["input_ids"]  # lower-cased
    assert len(tok) <= 200


def test_resolve_path(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model.*not a local model directory"):
        resolve_path(str(missing))
    assert resolve_path(str(tmp_path)) == str(tmp_path)
