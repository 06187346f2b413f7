"""The sequence towers' trainable text encoder (model.text_encoder.train top_layers / full): top_layers over every
layer equals full, the cached lower-layer states equal a fresh forward pass and are reused or invalidated by their
key, gradients reach the trained layers and only those, the optimizer's encoder parameter group, and the settings'
errors naming the config key. A tiny random-init BERT, seconds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from towerrec.model import text_encoder as te
from towerrec.model.build import build_sequence
from towerrec.model.loss import full_softmax_loss
from towerrec.model.sequence_module import SequenceModule
from towerrec.model.text_encoder import TextEncoderSettings, TrainableText
from towerrec.model.text_vectors import compute_text_vectors, load_text_encoder

ENCODER = {"random_init": {"vocab_size": 200, "hidden_size": 16, "num_hidden_layers": 3, "num_attention_heads": 2,
                           "intermediate_size": 32, "max_position_embeddings": 64}}
TEXTS = ["red boots for hiking in the rain", "blue bag", "green tent for two, light and strong", "a lamp",
         "coffee grinder with a steel burr", "yoga mat"]
DEPTH = 3

pytestmark = pytest.mark.usefixtures("one_thread_faiss")  # tiny models: one thread is faster and steadier


def settings(train: str, top_layers: int = 1, cache_dtype: str = "float32", **kw) -> TextEncoderSettings:
    return TextEncoderSettings.from_dict({"train": train, "top_layers": top_layers, "cache_dtype": cache_dtype,
                                          "max_length": 16, "batch_size": 4, **kw})


def encoder_and_tokenizer(seed: int = 0):
    return load_text_encoder(ENCODER, TEXTS, seed)


def product(s: TextEncoderSettings, cache_dir=None, seed: int = 0):
    return te.load_product_text(ENCODER, TEXTS, s, cache_dir=cache_dir, seed=seed, progress=False)


def test_top_layers_over_every_layer_equals_full():
    top, full = product(settings("top_layers", DEPTH)), product(settings("full"))
    assert len(top.trainable.layers) == DEPTH and full.trainable.encoder is full.encoder
    torch.testing.assert_close(top.trainable.all(), full.trainable.all(), atol=1e-5, rtol=1e-5)
    idx = torch.tensor([4, 0, 2])
    with torch.no_grad():
        torch.testing.assert_close(top.trainable.eval()(idx), full.trainable.eval()(idx), atol=1e-5, rtol=1e-5)
    # and both are the frozen encoder's own text vectors before any training
    np.testing.assert_allclose(top.vectors, full.vectors, atol=1e-5)


def test_cached_lower_states_equal_a_fresh_forward_pass():
    encoder, tokenizer = encoder_and_tokenizer()
    for first in range(DEPTH):
        states, lengths = te.lower_states(encoder, tokenizer, TEXTS, 16, first, batch_size=4, dtype=np.float32,
                                          progress=False)
        assert len(te.stack_of(encoder)[0].layer) == DEPTH  # the layer stack is restored
        for i, text in enumerate(TEXTS):
            batch = tokenizer([text], truncation=True, max_length=16, return_tensors="pt")
            with torch.no_grad():
                fresh = encoder(**batch, output_hidden_states=True).hidden_states[first][0]  # (t, H)
            assert lengths[i] == fresh.shape[0]
            np.testing.assert_allclose(states[i, : lengths[i]], fresh.numpy(), atol=1e-5, rtol=1e-5)
            assert not states[i, lengths[i]:].any()  # nothing past the text's end
    single, _ = te.lower_states(encoder, tokenizer, TEXTS, 16, 1, dtype=np.float32, progress=False)
    half, _ = te.lower_states(encoder, tokenizer, TEXTS, 16, 1, dtype=np.float16, progress=False)
    assert half.dtype == np.float16
    np.testing.assert_allclose(half.astype(np.float32), single, atol=1e-2, rtol=1e-2)


def test_lower_state_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    s1 = settings("top_layers", 1, cache_dtype="float16")
    first = product(s1, tmp_path)
    files = sorted(tmp_path.glob("lowerstates-*.npz"))
    assert len(files) == 1

    def fail(*args, **kwargs):
        raise AssertionError("recomputed although the cache holds these states")

    with monkeypatch.context() as m:
        m.setattr(te, "lower_states", fail)
        again = product(s1, tmp_path)  # read back: the same states, so the same text vectors
        np.testing.assert_array_equal(again.vectors, first.vectors)
        with pytest.raises(AssertionError, match="recomputed"):  # another N
            product(settings("top_layers", 2, cache_dtype="float16"), tmp_path)
        with pytest.raises(AssertionError, match="recomputed"):  # another encoder (a random init's other seed)
            product(s1, tmp_path, seed=1)
        with pytest.raises(AssertionError, match="recomputed"):  # another text
            te.load_product_text(ENCODER, [*TEXTS[:-1], "yoga mats"], s1, cache_dir=tmp_path, progress=False)
    base = dict(encoder_cfg=ENCODER, pooling="mean", max_length=16, texts=TEXTS)
    key = te.cache_key(**base, extra={"top_layers": 1, "dtype": "float16"})
    assert files[0].name == f"lowerstates-{key}.npz"
    assert key != te.cache_key(**base, extra={"top_layers": 1, "dtype": "float32"})
    assert key != te.cache_key(**{**base, "encoder_cfg": {"name_or_path": "minilm"}},
                               extra={"top_layers": 1, "dtype": "float16"})
    assert key != te.cache_key(**base)  # the text vectors' key: another file


def test_float16_states_stay_close_to_the_encoders_own_vectors():
    s = settings("top_layers", 1, cache_dtype="float16")
    half = product(s)
    encoder, tokenizer = encoder_and_tokenizer()
    own = compute_text_vectors(encoder, tokenizer, TEXTS, 16, "mean", progress=False)
    assert te.same_vectors(half.vectors, own, s) and not np.array_equal(half.vectors, own)
    assert not te.same_vectors(half.vectors + 0.5, own, s)


def make_module(train: str, top_layers: int = 1, loss: str = "full") -> tuple[SequenceModule, te.ProductText]:
    p = product(settings(train, top_layers))
    torch.manual_seed(0)
    params = {"dim": 16, "max_len": 4, "layers": 1, "heads": 2, "dropout": 0.0, "item_ids": True}
    model = build_sequence(params, p.vectors, len(TEXTS), np.ones(len(TEXTS)), text_module=p.trainable)
    module = SequenceModule(model, optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3), loss_kind=loss,
                            item_counts=np.ones(len(TEXTS)), encoder_lr=1e-5)
    return module, p


BATCH = {"inputs": torch.tensor([[-1, 0, 1, 2], [-1, -1, 3, 1]]), "targets": torch.tensor([[-1, 1, 2, 4], [-1, -1, 1, 5]])}


@pytest.mark.parametrize("loss", ["full", "inbatch"])
def test_gradients_reach_the_top_layers_and_not_the_lower_ones(loss):
    module, p = make_module("top_layers", 1, loss)
    module.slot_loss(BATCH["inputs"], BATCH["targets"]).backward()
    trained = dict(module.text_module.named_parameters())
    assert trained and all(name.startswith("layers.0.") for name in trained)  # a copy of the top layer alone
    assert all(q.grad is not None and q.grad.abs().sum() > 0 for q in trained.values())
    assert all(q.grad is None for q in p.encoder.parameters())  # the lower layers (and the original top) never train
    assert module.model.items.adapter.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("loss", ["full", "inbatch"])
def test_gradients_reach_every_layer_in_full_mode(loss):
    module, _ = make_module("full", loss=loss)
    module.slot_loss(BATCH["inputs"], BATCH["targets"]).backward()
    encoder = module.text_module.encoder
    for i, layer in enumerate(te.stack_of(encoder)[0].layer):
        assert any(q.grad is not None and q.grad.abs().sum() > 0 for q in layer.parameters()), i
    assert encoder.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_the_fine_tuned_batch_vectors_are_the_tables_rows_before_a_step():
    """With dropout off, the vectors computed with grad for a batch equal the stored (refreshed) table's rows."""
    module, _ = make_module("top_layers", 2)
    items = module.model.items
    module.eval()
    idx = torch.tensor([5, 1, 3])
    torch.testing.assert_close(items.with_text(idx, module.text_module(idx)), items(idx), atol=1e-6, rtol=1e-6)


def by_hand(module, columns_from_table: bool):
    """The full-catalog loss of BATCH: queries from the batch's fresh vectors; columns the stored table's values
    (detached from the encoder) or fresh ones for the batch's items."""
    items, (inputs, targets) = module.model.items, (BATCH["inputs"], BATCH["targets"])
    real = targets >= 0
    distinct = torch.unique(torch.cat([inputs[inputs >= 0], targets[real]]))
    fresh = items.with_text(distinct, module.text_module(distinct))
    local = torch.zeros(items.num_items, dtype=torch.long)
    local[distinct] = torch.arange(len(distinct))
    states = module.model.user_states(torch.where(inputs >= 0, local[inputs.clamp_min(0)], -1), fresh)
    table = items.all() if columns_from_table else items.all().index_copy(0, distinct, fresh)
    return full_softmax_loss(states[real], table, targets[real], module.temperature)


def test_full_loss_columns_are_the_stored_table_with_the_encoders_gradient():
    """loss=full after the encoder moved since the last refresh: the columns keep the table's values (fresh
    batch columns among stale ones would be a shortcut), and the batch's columns still pass their gradient to
    the encoder (straight through)."""
    module, _ = make_module("top_layers", 1, loss="full")
    module.eval()  # no dropout: fresh vectors are deterministic
    with torch.no_grad():
        for q in module.text_module.parameters():
            q.add_(0.2 * torch.randn_like(q))  # trained since the table was refreshed
    loss = module.slot_loss(BATCH["inputs"], BATCH["targets"])
    assert loss.item() == pytest.approx(by_hand(module, True).item(), rel=1e-6)
    assert loss.item() != pytest.approx(by_hand(module, False).item(), rel=1e-3)
    grads = []
    for fn in (lambda: module.slot_loss(BATCH["inputs"], BATCH["targets"]), lambda: by_hand(module, True)):
        module.zero_grad()
        fn().backward()
        grads.append(torch.cat([q.grad.flatten() for q in module.text_module.parameters()]))
    assert not torch.allclose(grads[0], grads[1])  # the columns' gradient reaches the encoder too


def test_encoder_layers_get_their_own_learning_rate():
    module, _ = make_module("top_layers", 2)
    groups = module.param_groups()
    assert len(groups) == 2 and groups[1]["lr"] == 1e-5 and "lr" not in groups[0]
    assert {id(q) for q in groups[1]["params"]} == {id(q) for q in module.text_module.parameters()}
    towers = {id(q) for q in module.parameters() if q.requires_grad} - {id(q) for q in groups[1]["params"]}
    assert {id(q) for q in groups[0]["params"]} == towers
    opt = module.optimizer_factory(params=groups)
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-5]


def test_export_encoder_puts_the_trained_top_layers_back():
    p = product(settings("top_layers", 1))
    with torch.no_grad():
        for q in p.trainable.layers.parameters():
            q.add_(0.1)
    exported = p.trainable.export_encoder(p.encoder)
    assert exported is not p.encoder
    layers = te.stack_of(exported)[0].layer
    for name, q in p.trainable.layers[0].state_dict().items():
        torch.testing.assert_close(layers[DEPTH - 1].state_dict()[name], q)
    for name, q in te.stack_of(p.encoder)[0].layer[0].state_dict().items():  # the lower layers as they were
        torch.testing.assert_close(layers[0].state_dict()[name], q)
    encoder, tokenizer = p.encoder, p.tokenizer
    got = compute_text_vectors(exported, tokenizer, TEXTS, 16, "mean", progress=False)
    np.testing.assert_allclose(got, p.trainable.all().numpy(), atol=1e-5)  # the exported encoder = the trained path
    assert not np.allclose(got, compute_text_vectors(encoder, tokenizer, TEXTS, 16, "mean", progress=False))


@pytest.mark.parametrize(("given", "message"), [
    ({"train": "partial"}, r"model\.text_encoder\.train must be one of frozen, top_layers, full, got 'partial'"),
    ({"train": "top_layers", "top_layers": 0}, r"model\.text_encoder\.top_layers must be a positive integer"),
    ({"train": "top_layers", "top_layers": "2"}, r"model\.text_encoder\.top_layers must be a positive integer"),
    ({"lr": -1.0}, r"model\.text_encoder\.lr must be a positive number or null"),
    ({"cache_dtype": "int8"}, r"model\.text_encoder\.cache_dtype must be one of float16, float32"),
    ({"toplayers": 2}, r"unknown model\.text_encoder option\(s\) \['toplayers'\]"),
])
def test_bad_settings_name_the_config_key(given, message):
    with pytest.raises(ValueError, match=message):
        TextEncoderSettings.from_dict(given)


def test_more_top_layers_than_the_encoder_has_is_an_error():
    with pytest.raises(ValueError, match=r"model\.text_encoder\.top_layers must be from 1 to the encoder's depth 3, "
                                         r"got 4"):
        product(settings("top_layers", 4))
    with pytest.raises(ValueError, match="trains no encoder layers"):
        TrainableText(encoder_and_tokenizer()[0], settings("frozen"))
