"""RetrievalModule on a tiny synthetic world with a tiny random-init BERT, trained by a real CPU Trainer:
the loss goes down, validation metrics are the harness's, the temperature learns only when asked, GradCache
gives the plain step's update, and the extra-negative options (memory, uniform, logQ) reach the loss."""

from __future__ import annotations

import functools
import math

import lightning as L
import numpy as np
import pytest
import torch

from towerrec import evaluation
from towerrec.data import synthetic
from towerrec.data.datamodule import BucketBatchSampler, RetrievalDataModule
from towerrec.data.splits import leave_last_out
from towerrec.data.text import TextConfig, render_items
from towerrec.data.tokens import pad_batch
from towerrec.model import loss as losses
from towerrec.model.encoders import load_encoder
from towerrec.model.module import RetrievalModule
from towerrec.model.towers import TwoTower

TINY_BERT = {"vocab_size": 300, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 32, "max_position_embeddings": 128}
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
TEXT = TextConfig(user_max_items=3, user_max_tokens=48)
DM_ARGS = dict(batch_size=8, eval_batch_size=32, item_max_length=32, user_max_length=48, max_history=5)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices gain nothing from intra-op threads, and on a busy machine the thread pool's waits make
    every step 10-50x slower; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def split():
    dataset = synthetic.generate(num_items=80, num_users=60, max_len=8, user_id_secret="test-secret")
    return leave_last_out(dataset)


@pytest.fixture(scope="module")
def corpus(split):
    return render_items(split.catalog, TEXT)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("token-cache"))


@pytest.fixture(scope="module")
def tokenizer(corpus):
    return load_encoder({"random_init": dict(TINY_BERT)}, corpus=corpus)[1]


def make_dm(split, tokenizer, cache_dir, **kwargs) -> RetrievalDataModule:
    dm = RetrievalDataModule(split, tokenizer, TEXT, cache_dir=cache_dir, **{**DM_ARGS, **kwargs})
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def dm(split, tokenizer, cache_dir):
    return make_dm(split, tokenizer, cache_dir)


def make_module(corpus, split, *, seed=0, encoder_cfg=None, optimizer=None, item_ids=False, **kwargs):
    """A fresh module; the same seed gives the same initial weights."""
    torch.manual_seed(seed)
    encoder, _ = load_encoder({"random_init": {**TINY_BERT, **(encoder_cfg or {})}}, corpus=corpus)
    counts = split.item_counts()
    model = TwoTower(encoder, item_id_counts=counts if item_ids else None)
    optimizer = optimizer or functools.partial(torch.optim.AdamW, lr=5e-3)
    return RetrievalModule(model, optimizer, item_counts=counts, eval_config={"ks": (5, 10, 20)}, **kwargs)


def make_trainer(**kwargs) -> L.Trainer:
    args = dict(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                use_distributed_sampler=False)
    return L.Trainer(**{**args, **kwargs})


class Recorder(L.Callback):
    """Per-epoch training losses and the item ids of every training batch."""

    def __init__(self):
        self.losses: dict[int, list[float]] = {}
        self.item_ids: dict[int, list[torch.Tensor]] = {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.item_ids.setdefault(trainer.current_epoch, []).append(batch["item"]["item_idx"].clone())

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.setdefault(trainer.current_epoch, []).append(float(loss))


def snapshot(module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


# ------------------------------------------------------------------------------------------- training


def test_training_reduces_loss_logs_val_metrics_and_reshuffles_each_epoch(corpus, split, dm):
    module = make_module(corpus, split)
    temperature = module.log_temperature.detach().clone()
    recorder = Recorder()
    trainer = make_trainer(max_epochs=3, callbacks=[recorder])
    trainer.fit(module, datamodule=dm)

    means = [np.mean(recorder.losses[e]) for e in range(3)]
    assert all(math.isfinite(m) for m in means)
    assert means[-1] < 0.8 * means[0], means

    metrics = trainer.callback_metrics
    for name in ("val/recall@10", "val/ndcg@10"):
        assert name in metrics
        assert 0.0 <= float(metrics[name]) <= 1.0
    assert float(metrics["val/ndcg@10"]) <= float(metrics["val/recall@10"])
    assert float(metrics["val/recall@20"]) > 0  # random would be about 20 / 80 of non-repeat targets

    # learn_temperature=False: the temperature is a frozen constant
    assert not module.log_temperature.requires_grad
    assert torch.equal(module.log_temperature.detach(), temperature)

    # Lightning reaches the bucketing sampler's set_epoch: each epoch gets its own (seeded) batches
    lengths = [len(t) for t in dm.user_tokens["train"]]
    for epoch in range(3):
        sampler = BucketBatchSampler(lengths, DM_ARGS["batch_size"], seed=0)
        sampler.set_epoch(epoch)
        expected = [torch.from_numpy(dm.train_examples.targets[rows]) for rows in sampler]
        assert len(recorder.item_ids[epoch]) == len(expected)
        assert all(torch.equal(a, b) for a, b in zip(recorder.item_ids[epoch], expected))
    assert not all(torch.equal(a, b) for a, b in zip(recorder.item_ids[0], recorder.item_ids[1]))


def test_validation_metrics_equal_the_harness_on_hand_built_embeddings(corpus, split, dm):
    module = make_module(corpus, split, seed=1, item_ids=True)
    make_trainer(max_steps=2, limit_val_batches=0).fit(module, datamodule=dm)  # item-id embeddings move off 0
    trainer = make_trainer()
    trainer.validate(module, datamodule=dm, verbose=False)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}

    module.eval()
    with torch.no_grad():
        items = pad_batch(dm.item_tokens, dm.pad_id)
        items["item_idx"] = torch.arange(split.num_items)
        item_emb = module.model.embed_items(items)  # (N, D), the whole catalog in one batch
        user_emb = module.model.embed_users(pad_batch(dm.user_tokens["valid"], dm.pad_id))  # (U, D)
    row_of = {u: i for i, u in enumerate(split.users)}

    def scorer(histories, users):
        return user_emb[[row_of[u] for u in users]] @ item_emb.T

    examples = split.examples("valid")
    common = dict(item_counts=split.item_counts(), item_categories=split.catalog.top_category(), ks=(5, 10, 20))
    expected = evaluation.evaluate(scorer, examples, split.num_items, exclude_history=True, **common)
    assert module.eval_metrics["valid"] == pytest.approx(expected, abs=1e-6)
    for name in ("recall", "ndcg", "mrr"):
        for k in (5, 10, 20):
            assert logged[f"val/{name}@{k}"] == pytest.approx(expected[f"{name}@{k}"], abs=1e-6)
    # history exclusion was on: repeat purchases count as misses
    with_history = evaluation.evaluate(scorer, examples, split.num_items, exclude_history=False, **common)
    assert with_history["mrr@20"] != pytest.approx(expected["mrr@20"], abs=1e-6)


@pytest.mark.parametrize("learn", [True, False])
def test_temperature_is_learned_only_when_asked(corpus, split, dm, learn):
    module = make_module(corpus, split, learn_temperature=learn, temperature=0.1)
    before = module.log_temperature.detach().clone()
    make_trainer(max_steps=5, limit_val_batches=0).fit(module, datamodule=dm)
    assert module.log_temperature.requires_grad == learn
    changed = not torch.equal(module.log_temperature.detach(), before)
    assert changed == learn
    if not learn:
        assert float(module.temperature) == pytest.approx(0.1)


def test_gradcache_step_equals_the_plain_step(corpus, split, dm):
    sgd = functools.partial(torch.optim.SGD, lr=1.0)  # update = -grad: compares gradients, not just their sign
    kwargs = dict(encoder_cfg=NO_DROPOUT, optimizer=sgd, item_ids=True, learn_temperature=True)
    plain = make_module(corpus, split, **kwargs)
    cached = make_module(corpus, split, cache_chunk_size=2, **kwargs)
    init = snapshot(plain)
    assert all(torch.equal(init[n], p) for n, p in snapshot(cached).items())
    assert plain.automatic_optimization and not cached.automatic_optimization

    logged = []
    for module in (plain, cached):
        trainer = make_trainer(max_steps=1, limit_val_batches=0)
        trainer.fit(module, datamodule=dm)
        assert trainer.global_step == 1
        logged.append(float(trainer.callback_metrics["train/loss"]))
    assert logged[0] == pytest.approx(logged[1], rel=1e-5)

    after_plain, after_cached = snapshot(plain), snapshot(cached)
    moved = [n for n in init if not torch.equal(after_plain[n], init[n])]
    assert "log_temperature" in moved and len(moved) > len(init) // 2
    for name in init:
        torch.testing.assert_close(after_cached[name], after_plain[name], rtol=1e-4, atol=1e-4, msg=name)


def test_memory_and_uniform_negatives_train_with_finite_losses(corpus, split, tokenizer, cache_dir):
    dm = make_dm(split, tokenizer, cache_dir, uniform_negatives=4)  # tokens come from the module's cache
    module = make_module(corpus, split, memory_size=20)
    recorder = Recorder()
    make_trainer(max_steps=6, limit_val_batches=0, callbacks=[recorder]).fit(module, datamodule=dm)
    steps = recorder.losses[0]
    assert len(steps) == 6 and all(math.isfinite(x) for x in steps)
    assert all(len(ids) == DM_ARGS["batch_size"] + 4 for ids in recorder.item_ids[0])
    assert len(module.memory) == 20  # 6 steps x 8 positives, capped at capacity

    # the memory's rows are extra negatives: they change the loss of a batch
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(8, module.model.dim, generator=g), dim=-1)
    items = torch.nn.functional.normalize(torch.randn(12, module.model.dim, generator=g), dim=-1)
    ids = torch.randint(0, split.num_items, (12,), generator=g)
    with_memory = module._loss(q, items, ids, 8)
    memory, module.memory = module.memory, None
    without_memory = module._loss(q, items, ids, 8)
    module.memory = memory
    assert torch.isfinite(with_memory) and torch.isfinite(without_memory)
    assert not torch.isclose(with_memory, without_memory)


def test_log_q_correction_changes_the_loss_of_a_fixed_batch(corpus, split):
    module = make_module(corpus, split, temperature=0.2)
    module.trainer = make_trainer()  # _loss reads trainer.world_size, and an unattached module raises there
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(6, 16, generator=g), dim=-1)  # (B, D)
    items = torch.nn.functional.normalize(torch.randn(9, 16, generator=g), dim=-1)  # 6 positives + 3 uniform
    counts = split.item_counts()
    by_count = np.argsort(counts, kind="stable")
    ids = torch.as_tensor(np.concatenate([by_count[-3:], by_count[:3], [1, 2, 3]]))  # popular and rare positives
    assert counts[ids[:6].numpy()].std() > 0

    module.hparams.log_q_correction = True
    corrected = module._loss(q, items, ids, 6)
    module.hparams.log_q_correction = False
    plain = module._loss(q, items, ids, 6)
    assert not torch.isclose(corrected, plain)

    log_q = losses.log_q_from_counts(torch.as_tensor(counts, dtype=torch.float32))[ids]
    log_q[6:] = -math.log(split.num_items)  # uniform negatives: q = 1/N
    torch.testing.assert_close(corrected, losses.in_batch_softmax_loss(q, items, ids, 0.2, log_q))
    torch.testing.assert_close(plain, losses.in_batch_softmax_loss(q, items, ids, 0.2))


# ------------------------------------------------------------------------------------------- labels


def test_training_step_takes_its_labels_from_rank_offset_labels(corpus, split, tokenizer, cache_dir, monkeypatch):
    calls, used = [], []
    real_labels, real_loss = losses.rank_offset_labels, losses.in_batch_softmax_loss

    def spy_labels(*args, **kwargs):
        out = real_labels(*args, **kwargs)
        calls.append((args, kwargs, out))
        return out

    def spy_loss(q, items, ids, temperature, log_q=None, labels=None, *args, **kwargs):
        used.append(labels)
        return real_loss(q, items, ids, temperature, log_q, labels, *args, **kwargs)

    monkeypatch.setattr(losses, "rank_offset_labels", spy_labels)
    monkeypatch.setattr(losses, "in_batch_softmax_loss", spy_loss)
    dm = make_dm(split, tokenizer, cache_dir, uniform_negatives=4)
    for kwargs in ({}, {"cache_chunk_size": 3}):  # the plain step and the GradCache step
        calls.clear(), used.clear()
        make_trainer(max_steps=2, limit_val_batches=0).fit(make_module(corpus, split, **kwargs), datamodule=dm)
        assert len(calls) == len(used) == 2
        for (args, kw, labels), passed in zip(calls, used):
            # one rank: rank 0, B = 8 positives of 8 + 4 item rows
            assert args[:2] == (DM_ARGS["batch_size"], 0) and kw["columns_per_rank"] == DM_ARGS["batch_size"] + 4
            assert passed is labels and labels.tolist() == list(range(DM_ARGS["batch_size"]))


@pytest.mark.parametrize("rank", [0, 1])
def test_ddp_labels_point_past_the_other_ranks_uniform_negatives(split, monkeypatch, rank):
    """2 ranks x (B = 3 positives + U = 2 uniform negatives), the all-gather faked in-process: the module's
    loss is the loss over the gathered rows with hand-computed labels."""
    B, U, D = 3, 2, 16
    module = RetrievalModule(torch.nn.Identity(), optimizer=lambda params: None, temperature=0.1,
                             item_counts=split.item_counts())
    from types import SimpleNamespace

    module.trainer = SimpleNamespace(world_size=2, global_rank=rank)
    g = torch.Generator().manual_seed(rank)
    norm = torch.nn.functional.normalize
    q = norm(torch.randn(B, D, generator=g), dim=-1)
    items = norm(torch.randn(B + U, D, generator=g), dim=-1)  # this rank's B positives + U negatives
    other_items = norm(torch.randn(B + U, D, generator=g), dim=-1)  # the other rank's
    ids, other_ids = torch.tensor([1, 2, 3, 4, 5]), torch.tensor([6, 7, 8, 9, 10])
    uniform = -math.log(split.num_items)
    log_q_of = lambda i: torch.cat([module.log_q[i[:B]], torch.full((U,), uniform)])
    other = {"items": other_items, "ids": other_ids, "log_q": log_q_of(other_ids)}

    def fake_gather(x):  # rank order: [rank 0's B + U rows, rank 1's B + U rows]
        key = "items" if x.ndim == 2 else "log_q" if x.is_floating_point() else "ids"
        return torch.cat([x, other[key]] if rank == 0 else [other[key], x])

    monkeypatch.setattr(losses, "gather_with_grad", fake_gather)
    loss = module._loss(q, items, ids, B)

    labels = torch.tensor([[0, 1, 2], [5, 6, 7]][rank])  # rank 1: columns 5..7, after rank 0's 3 + 2 rows
    order = (lambda mine, theirs: torch.cat([mine, theirs] if rank == 0 else [theirs, mine]))
    args = (order(items, other_items), order(ids, other_ids), module.temperature, order(log_q_of(ids), other["log_q"]))
    torch.testing.assert_close(loss, losses.in_batch_softmax_loss(q, *args, labels))
    if rank == 1:  # rank * B (the labels without the negatives) would point at rank 0's negatives
        assert not torch.isclose(loss, losses.in_batch_softmax_loss(q, *args, torch.tensor([3, 4, 5])))
