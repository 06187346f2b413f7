"""RetrievalDataModule and its helpers on a tiny synthetic world with a tiny random-init tokenizer:
tokenization and padding, the length-bucketing batch sampler, setup (pairs, user text, token cache),
the batches each loader yields, and that valid/test user text holds nothing from the target's future."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from towerrec.data import datamodule as dm_mod
from towerrec.data import synthetic
from towerrec.data.datamodule import BucketBatchSampler, RetrievalDataModule
from towerrec.data.splits import leave_last_out
from towerrec.data.text import TextConfig, render_items, render_user
from towerrec.data.tokens import pad_batch, tokenize
from towerrec.model.encoders import load_encoder

TINY_BERT = {"vocab_size": 300, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 32, "max_position_embeddings": 128}
# Small budgets so that both the item-count limit and the token budget cut some users' histories.
TEXT = TextConfig(user_max_items=2, user_max_tokens=80)
DM_ARGS = dict(batch_size=8, eval_batch_size=16, item_max_length=32, user_max_length=64, max_history=5)


@pytest.fixture(scope="module")
def split():
    dataset = synthetic.generate(num_items=80, num_users=60, max_len=8, user_id_secret="test-secret")
    return leave_last_out(dataset)


@pytest.fixture(scope="module")
def tokenizer(split):
    _, tok = load_encoder({"random_init": dict(TINY_BERT)}, corpus=render_items(split.catalog, TEXT))
    return tok


@pytest.fixture(scope="module")
def dm(split, tokenizer):
    datamodule = RetrievalDataModule(split, tokenizer, TEXT, **DM_ARGS)
    datamodule.setup("fit")
    return datamodule


def token_count(tokenizer):
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def contains(seq: np.ndarray, sub: np.ndarray) -> bool:
    """Whether `sub` occurs as a contiguous run inside `seq`."""
    seq, sub = np.asarray(seq).tolist(), np.asarray(sub).tolist()
    return any(seq[i : i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))


# ------------------------------------------------------------------------------- tokenize / pad_batch


def test_tokenize_truncates_and_keeps_special_tokens(tokenizer):
    texts = ["yoga mat", "hiking boots " * 40, "batteries"]
    out = tokenize(tokenizer, texts, max_length=12)
    assert [t.dtype for t in out] == [np.int32] * 3
    assert len(out[1]) == 12  # truncated
    for ids in out:
        assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
        assert len(ids) <= 12
    # short texts are not padded or cut: exactly the tokenizer's own ids
    assert out[0].tolist() == tokenizer("yoga mat")["input_ids"]
    # batching inside tokenize does not change the result
    assert [t.tolist() for t in tokenize(tokenizer, texts, 12, batch_size=1)] == [t.tolist() for t in out]


def test_pad_batch_pads_to_the_longest_row_with_the_pad_id():
    rows = [np.array([5, 6, 7], np.int32), np.array([8, 9, 10, 11, 12], np.int32), np.array([13], np.int32)]
    batch = pad_batch(rows, pad_id=99)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (3, 5)  # batch max, not a fixed length
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == torch.long
    assert batch["input_ids"].tolist() == [[5, 6, 7, 99, 99], [8, 9, 10, 11, 12], [13, 99, 99, 99, 99]]
    assert batch["attention_mask"].sum(1).tolist() == [3, 5, 1]
    assert batch["attention_mask"].tolist()[0] == [1, 1, 1, 0, 0]


# -------------------------------------------------------------------------------- BucketBatchSampler

LENGTHS = np.random.default_rng(0).integers(3, 120, size=203)


def batches(sampler) -> list[list[int]]:
    return [list(b) for b in sampler]


def test_sampler_without_drop_last_yields_every_index_once():
    out = batches(BucketBatchSampler(LENGTHS, batch_size=8, pool=5, drop_last=False))
    assert sorted(i for b in out for i in b) == list(range(len(LENGTHS)))
    assert all(1 <= len(b) <= 8 for b in out)


def test_sampler_with_drop_last_yields_only_full_batches_of_distinct_indices():
    out = batches(BucketBatchSampler(LENGTHS, batch_size=8, pool=5, drop_last=True))
    assert all(len(b) == 8 for b in out)
    flat = [i for b in out for i in b]
    assert len(set(flat)) == len(flat)
    assert len(out) == len(LENGTHS) // 8  # pools hold whole batches: only the last remainder is dropped


def test_sampler_batches_are_length_homogeneous():
    def mean_spread(bs):
        return np.mean([np.ptp(LENGTHS[b]) for b in bs])

    bucketed = batches(BucketBatchSampler(LENGTHS, batch_size=8, pool=5))
    order = np.random.default_rng(1).permutation(len(LENGTHS))
    random_batches = [order[i : i + 8] for i in range(0, len(order) - 7, 8)]
    assert mean_spread(bucketed) < 0.5 * mean_spread(random_batches)


def test_sampler_is_seeded_by_seed_and_epoch():
    a = BucketBatchSampler(LENGTHS, batch_size=8, seed=3)
    b = BucketBatchSampler(LENGTHS, batch_size=8, seed=3)
    epoch0 = batches(a)
    assert batches(b) == epoch0  # same (seed, epoch): same batches
    assert batches(a) == epoch0  # iterating again replays the epoch
    a.sampler.set_epoch(1)  # how Lightning reaches it: dataloader.batch_sampler.sampler.set_epoch(epoch)
    epoch1 = batches(a)
    assert epoch1 != epoch0
    assert sorted(map(tuple, epoch1)) != sorted(map(tuple, epoch0))  # new groupings, not just a new order
    a.sampler.set_epoch(0)
    assert batches(a) == epoch0
    assert batches(BucketBatchSampler(LENGTHS, batch_size=8, seed=4)) != epoch0


def test_sampler_shards_disjoint_equal_batches_across_replicas():
    for drop_last in (True, False):
        full = {tuple(b) for b in batches(BucketBatchSampler(LENGTHS, 8, seed=2, drop_last=drop_last))}
        shards = [batches(BucketBatchSampler(LENGTHS, 8, seed=2, drop_last=drop_last, num_replicas=2, rank=r))
                  for r in (0, 1)]
        assert len(shards[0]) == len(shards[1]) >= len(full) // 2
        assert not {i for b in shards[0] for i in b} & {i for b in shards[1] for i in b}
        assert {tuple(b) for s in shards for b in s} <= full  # both ranks cut the same epoch's batches


@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize("num_replicas", [1, 2, 3])
def test_sampler_len_is_the_number_of_batches_yielded(drop_last, num_replicas):
    for rank in range(num_replicas):
        sampler = BucketBatchSampler(LENGTHS, 8, pool=4, drop_last=drop_last, num_replicas=num_replicas, rank=rank)
        assert len(sampler) == len(batches(sampler)) > 0


# ----------------------------------------------------------------------------------------- setup


def test_setup_uses_the_split_train_pairs(dm, split):
    expected = split.train_pairs(DM_ARGS["max_history"])
    assert np.array_equal(dm.train_examples.targets, expected.targets)
    assert [h.tolist() for h in dm.train_examples.histories] == [h.tolist() for h in expected.histories]
    assert len(dm.user_tokens["train"]) == len(expected)
    assert len(dm.item_tokens) == split.num_items
    for stage in ("valid", "test"):
        assert len(dm.user_tokens[stage]) == len(split.users)
        assert np.array_equal(dm.eval_examples[stage].targets, split.examples(stage).targets)


def test_user_text_is_newest_history_first_within_the_token_budget(dm, split, tokenizer):
    history_texts = render_items(split.catalog, TEXT, TEXT.history_fields)
    assert not any(TEXT.item_sep in t for t in history_texts)  # the split below is unambiguous
    count = token_count(tokenizer)
    sep_cost = count(TEXT.item_sep)
    examples = split.examples("valid")
    cut_by_items = cut_by_budget = 0
    for history, text in zip(examples.histories, dm.user_texts(examples)):
        newest_first = [history_texts[i] for i in history[::-1]]
        chosen = text.split(TEXT.item_sep)
        assert chosen == newest_first[: len(chosen)]  # a newest-first prefix of the history
        assert len(chosen) <= TEXT.user_max_items
        used = sum(count(t) for t in chosen) + sep_cost * (len(chosen) - 1)
        assert len(chosen) == 1 or used <= TEXT.user_max_tokens
        if len(chosen) < len(history):  # stopped early: either the item limit or the next item would not fit
            if len(chosen) == TEXT.user_max_items:
                cut_by_items += 1
            else:
                assert used + sep_cost + count(newest_first[len(chosen)]) > TEXT.user_max_tokens
                cut_by_budget += 1
    assert cut_by_items and cut_by_budget  # both limits were exercised
    # the tokens of each user are that text, tokenized and cut to user_max_length
    expected = tokenize(tokenizer, dm.user_texts(examples), DM_ARGS["user_max_length"])
    assert [t.tolist() for t in dm.user_tokens["valid"]] == [t.tolist() for t in expected]


def test_token_cache_round_trips_without_retokenizing(split, tokenizer, tmp_path, monkeypatch):
    first = RetrievalDataModule(split, tokenizer, TEXT, cache_dir=str(tmp_path), **DM_ARGS)
    first.setup("fit")
    files = list(tmp_path.glob("tokens-*.npz"))
    assert [f.name for f in files] == [f"tokens-{first._cache_key()}.npz"]

    def fail(*args, **kwargs):
        raise AssertionError("re-tokenized although a cache exists")

    monkeypatch.setattr(dm_mod, "tokenize", fail)
    monkeypatch.setattr(dm_mod, "count_tokens", fail)
    second = RetrievalDataModule(split, tokenizer, TEXT, cache_dir=str(tmp_path), **DM_ARGS)
    second.setup("fit")
    assert second._cache_key() == first._cache_key()
    assert [t.tolist() for t in second.item_tokens] == [t.tolist() for t in first.item_tokens]
    for stage in ("train", "valid", "test"):
        assert [t.tolist() for t in second.user_tokens[stage]] == [t.tolist() for t in first.user_tokens[stage]]

    def same_batches(a, b):
        for x, y in zip(a, b, strict=True):
            for key in ("user", "item"):
                if key in x:
                    assert x[key].keys() == y[key].keys()
                    assert all(torch.equal(x[key][k], y[key][k]) for k in x[key])
            assert all(torch.equal(x[k], y[k]) for k in x if isinstance(x[k], torch.Tensor))

    same_batches(first.train_dataloader(), second.train_dataloader())
    same_batches(first.val_dataloader(), second.val_dataloader())
    same_batches(first.test_dataloader(), second.test_dataloader())
    assert all(np.array_equal(x, y) for x, y in zip(first.item_tokens, second.item_tokens, strict=True))


def test_cache_key_depends_on_text_and_length_settings(split, tokenizer, dm):
    key = dm._cache_key()
    assert RetrievalDataModule(split, tokenizer, TEXT, **DM_ARGS)._cache_key() == key
    other_text = TextConfig(user_max_items=3, user_max_tokens=80)
    assert RetrievalDataModule(split, tokenizer, other_text, **DM_ARGS)._cache_key() != key
    assert RetrievalDataModule(split, tokenizer, TEXT, **{**DM_ARGS, "user_max_length": 32})._cache_key() != key
    assert RetrievalDataModule(split, tokenizer, TEXT, **{**DM_ARGS, "max_history": 3})._cache_key() != key


# --------------------------------------------------------------------------------------------- batches


def test_train_batches_pair_user_tokens_with_target_items(dm):
    loader = dm.train_dataloader()
    rows_per_batch = batches(loader.batch_sampler)
    assert len(rows_per_batch) == len(loader) == len(dm.train_examples) // DM_ARGS["batch_size"]
    for rows, batch in zip(rows_per_batch, loader, strict=True):
        assert set(batch) == {"user", "item", "num_positives"}
        assert batch["num_positives"] == len(rows) == DM_ARGS["batch_size"]
        assert torch.equal(batch["item"]["item_idx"], torch.from_numpy(dm.train_examples.targets[rows]))
        user = pad_batch([dm.user_tokens["train"][i] for i in rows], dm.pad_id)
        item = pad_batch([dm.item_tokens[i] for i in dm.train_examples.targets[rows]], dm.pad_id)
        for key in ("input_ids", "attention_mask"):
            assert torch.equal(batch["user"][key], user[key])
            assert torch.equal(batch["item"][key], item[key])


def test_train_batches_append_uniform_negatives(split, tokenizer, dm):
    neg = RetrievalDataModule(split, tokenizer, TEXT, uniform_negatives=5, **DM_ARGS)
    neg.setup("fit")
    first = list(neg.train_dataloader())
    drawn = set()
    for rows, batch in zip(batches(neg.train_dataloader().batch_sampler), first, strict=True):
        ids = batch["item"]["item_idx"]
        b = batch["num_positives"]
        assert len(ids) == b + 5 and batch["item"]["input_ids"].shape[0] == b + 5
        assert batch["user"]["input_ids"].shape[0] == b
        assert torch.equal(ids[:b], torch.from_numpy(neg.train_examples.targets[rows]))  # targets first
        assert ((ids[b:] >= 0) & (ids[b:] < split.num_items)).all()
        expected = pad_batch([neg.item_tokens[i] for i in ids.tolist()], neg.pad_id)
        assert torch.equal(batch["item"]["input_ids"], expected["input_ids"])
        targets = neg.train_examples.targets[rows]
        assert torch.equal(ids[b:], torch.from_numpy(dm_mod.draw_uniform_negatives(split.num_items, 5, 0, targets)))
        drawn.update(ids[b:].tolist())
    assert len(drawn) > 10  # spread over the catalog, not one fixed set
    again = list(neg.train_dataloader())
    assert all(torch.equal(x["item"]["item_idx"], y["item"]["item_idx"]) for x, y in zip(first, again))  # seeded


def test_draw_uniform_negatives_is_seeded_by_seed_and_batch():
    targets = np.array([3, 7, 7, 1])
    first = dm_mod.draw_uniform_negatives(10, 200, seed=4, targets=targets)
    assert first.dtype == np.int64 and first.shape == (200,)
    assert first.min() >= 0 and first.max() <= 9 and len(np.unique(first)) == 10  # uniform over the catalog
    assert np.array_equal(first, dm_mod.draw_uniform_negatives(10, 200, seed=4, targets=targets.copy()))
    # the stream every run so far was trained with: PCG64 seeded by (seed, sum of targets, batch size)
    assert np.array_equal(first, np.random.default_rng([4, 18, 4]).integers(0, 10, 200))
    assert not np.array_equal(first, dm_mod.draw_uniform_negatives(10, 200, seed=5, targets=targets))
    assert not np.array_equal(first, dm_mod.draw_uniform_negatives(10, 200, seed=4, targets=targets + 1))
    assert dm_mod.draw_uniform_negatives(10, 0, seed=4, targets=targets).shape == (0,)
    with pytest.raises(ValueError, match="num_items"):
        dm_mod.draw_uniform_negatives(0, 3, seed=0, targets=targets)


@pytest.mark.parametrize("stage", ["valid", "test"])
def test_eval_batches_carry_example_indices(dm, split, stage):
    loader = dm.val_dataloader() if stage == "valid" else dm.test_dataloader()
    seen = []
    for batch in loader:
        assert set(batch) == {"input_ids", "attention_mask", "example_idx"}
        rows = batch["example_idx"].tolist()
        expected = pad_batch([dm.user_tokens[stage][i] for i in rows], dm.pad_id)
        assert all(torch.equal(batch[k], expected[k]) for k in ("input_ids", "attention_mask"))
        assert len(rows) <= DM_ARGS["eval_batch_size"]
        seen += rows
    assert sorted(seen) == list(range(len(split.users)))


# --------------------------------------------------------------------------------------------- leakage


@pytest.mark.parametrize("stage", ["valid", "test"])
def test_eval_user_tokens_hold_only_history_before_the_target(dm, split, tokenizer, stage):
    examples = split.examples(stage)
    history_texts = render_items(split.catalog, TEXT, TEXT.history_fields)
    # reference built straight from the split's histories, without the datamodule
    reference = [render_user([history_texts[i] for i in h], TEXT, token_count(tokenizer)) for h in examples.histories]
    expected = tokenize(tokenizer, reference, DM_ARGS["user_max_length"])
    assert [t.tolist() for t in dm.user_tokens[stage]] == [t.tolist() for t in expected]

    titles = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in split.catalog.items["title"]]
    history_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in history_texts]
    future = {"valid": [-2, -1], "test": [-1]}[stage]
    checked = 0
    for u, (history, tokens) in enumerate(zip(examples.histories, dm.user_tokens[stage])):
        newest = titles[history[-1]][: len(tokens) - 2]
        assert tokens[1 : 1 + len(newest)].tolist() == newest  # the check below can see a title
        for pos in future:
            item = split.sequences[u][pos]
            if any(contains(history_ids[h], titles[item]) for h in history):
                continue  # the title is legitimately there (repeat purchase)
            assert not contains(tokens, titles[item]), f"user {u}: future item {item} leaks into {stage} text"
            checked += 1
    assert checked >= len(examples) // 2  # most users were checked
