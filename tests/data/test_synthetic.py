import re

import numpy as np
import pandas as pd
import pytest

from towerrec.data.privacy import pseudonymize
from towerrec.data.schema import CATEGORY_SEP, DataError
from towerrec.data.splits import leave_last_out
from towerrec.data.synthetic import complements, generate

SMALL = dict(num_items=300, num_users=400)
CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture(scope="module")
def small():
    return generate(**SMALL, seed=7)


@pytest.fixture(scope="module")
def medium():
    return generate(num_items=600, num_users=1500, seed=1)


def _category_sequences(ds, categories):
    """Per user, indices into `categories` in time order (the log is sorted by time, ties in purchase order)."""
    category_of = ds.catalog.items.set_index("item_id")["category"].map(categories.index)
    ev = ds.interactions.events.assign(category=lambda e: category_of.reindex(e["item_id"]).to_numpy())
    return [g["category"].to_numpy() for _, g in ev.groupby("user_id", sort=True)]


def test_same_seed_same_tables_other_seed_differs(small):
    again = generate(**SMALL, seed=7)
    pd.testing.assert_frame_equal(small.catalog.items, again.catalog.items)
    pd.testing.assert_frame_equal(small.interactions.events, again.interactions.events)
    assert small.fingerprint() == again.fingerprint()
    other = generate(**SMALL, seed=8)
    assert not small.catalog.items["title"].equals(other.catalog.items["title"])
    assert small.fingerprint() != other.fingerprint()


def test_catalog_is_valid(small):
    items = small.catalog.items
    assert small.name == "synthetic"
    assert len(items) == SMALL["num_items"]
    assert items["item_id"].is_unique
    assert (items["title"].str.strip() != "").all()
    assert (items["description"].str.len() > 20).all()
    assert (items["brand"] != "").all()
    assert np.isfinite(items["price"]).all() and (items["price"] > 0).all()
    levels = items["category"].str.split(CATEGORY_SEP)
    assert (levels.str.len() == 3).all()
    assert len(set(small.catalog.top_category())) == 8
    assert items["category"].nunique() >= 40
    assert {"color", "size", "material"} <= set(small.catalog.extra_columns)
    # the text names the brand and the attributes it has
    for row in items.head(50).itertuples():
        text = f"{row.title} {row.description}".lower()
        assert row.brand.lower() in text
        for attr in (row.color, row.size, row.material):
            assert attr.lower() in text


def test_interactions_are_valid(small):
    ev = small.interactions.events
    assert (small.catalog.index_of(ev["item_id"]) >= 0).all()
    assert ev["timestamp"].dtype == np.int64
    assert ev["timestamp"].is_monotonic_increasing  # a log, oldest first
    per_user = ev.groupby("user_id").size()
    assert len(per_user) == SMALL["num_users"]
    assert per_user.between(4, 20).all()
    # some consecutive events of one user share a timestamp (one order), to exercise tie-breaking
    ties = ev.duplicated(["user_id", "timestamp"], keep=False)
    assert 0 < ties.mean() < 0.3


@pytest.mark.parametrize("min_len,max_len", [(3, 3), (5, 9)])
def test_sequence_lengths_within_bounds(min_len, max_len):
    ds = generate(num_items=100, num_users=200, min_len=min_len, max_len=max_len)
    sizes = ds.interactions.events.groupby("user_id").size()
    assert sizes.min() >= min_len and sizes.max() <= max_len
    if min_len < max_len:
        assert sizes.nunique() > 1


def test_user_ids_are_pseudonymized(small):
    users = small.interactions.events["user_id"]
    assert not users.str.contains("user_").any()
    assert users.str.match(r"^u_[0-9a-f]{16}$").all()
    expected = set(pseudonymize([f"user_{u:05d}" for u in range(SMALL["num_users"])]))
    assert set(users) == expected
    keyed = generate(**SMALL, seed=7, user_id_secret="another-key")
    assert set(keyed.interactions.events["user_id"]).isdisjoint(expected)
    assert keyed.interactions.events["item_id"].equals(small.interactions.events["item_id"])


def test_next_purchase_follows_complement_chains(medium):
    nexts = complements("en")
    assert all(nexts.values()) and all(set(v) <= set(nexts) for v in nexts.values())
    cats = sorted(nexts)
    related = np.eye(len(cats), dtype=bool)  # (C, C): same category or a complement
    for i, c in enumerate(cats):
        related[i, [cats.index(n) for n in nexts[c]]] = True
    seqs = _category_sequences(medium, cats)
    prev = np.concatenate([s[:-1] for s in seqs])
    nxt = np.concatenate([s[1:] for s in seqs])
    marginal = np.bincount(np.concatenate(seqs), minlength=len(cats)) / sum(len(s) for s in seqs)  # (C,)
    observed = related[prev, nxt].mean()
    expected = (related[prev] @ marginal).mean()  # next category drawn independently of the previous
    assert observed > 0.45
    assert observed > 3 * expected


def test_price_tier_shows_in_text(medium):
    items = medium.catalog.items
    rel = items["price"] / items.groupby("category")["price"].transform("median")
    text = (items["title"] + " " + items["description"]).str.lower()
    premium_words = text.str.contains(r"\b(?:pro|elite|ultra|signature|premium|luxury|high-end|flagship)\b")
    assert premium_words[rel > 1.4].mean() > 3 * premium_words[rel < 0.7].mean()


def test_brands_sell_in_a_few_related_categories(medium):
    items = medium.catalog.items
    leaves_per_brand = items.groupby("brand")["category"].nunique()
    tops_per_brand = items.assign(top=medium.catalog.top_category()).groupby("brand")["top"].nunique()
    assert leaves_per_brand.max() <= 10
    assert leaves_per_brand.median() >= 2
    assert tops_per_brand.median() <= 2


def test_history_beats_popularity(medium):
    """A category-transition heuristic (what a text model can learn) beats popularity by far."""
    split = leave_last_out(medium)
    cats = medium.catalog.items["category"].to_numpy()
    leaf = np.unique(cats, return_inverse=True)[1]
    counts = split.item_counts().astype(float) + 0.1
    moves = np.full((leaf.max() + 1,) * 2, 0.01)
    for seq in split.train_sequences():
        np.add.at(moves, (leaf[seq[:-1]], leaf[seq[1:]]), 1.0)
    within = counts / np.bincount(leaf, weights=counts)[leaf]
    test = split.examples("test")

    def recall(scores_of):
        hits = [t in np.argsort(-scores_of(h), kind="stable")[:10] for h, t in zip(test.histories, test.targets)]
        return float(np.mean(hits))

    popularity = recall(lambda h: counts)
    transition = recall(lambda h: moves[leaf[h[-1]]][leaf] * within)
    assert popularity < 0.1
    assert transition > 2 * popularity


def test_chinese_world_shares_structure():
    en = generate(**SMALL, seed=3)
    zh = generate(**SMALL, seed=3, language="zh")
    assert zh.name == "synthetic-zh"
    items = zh.catalog.items
    for col in ("title", "description", "brand", "category"):
        assert items[col].map(lambda s: bool(CJK.search(s))).all(), col
    assert (items["category"].str.split(CATEGORY_SEP).str.len() == 3).all()
    assert set(items["category"]) <= set(complements("zh"))
    # same ids, prices and events; only the text differs
    pd.testing.assert_frame_equal(zh.interactions.events, en.interactions.events)
    assert items["item_id"].equals(en.catalog.items["item_id"])
    assert items["price"].equals(en.catalog.items["price"])
    assert not CJK.search(" ".join(en.catalog.items["title"]))


@pytest.mark.parametrize("language", ["en", "zh"])
def test_text_has_no_template_leftovers(language):
    items = generate(**SMALL, seed=5, language=language).catalog.items
    text = items["title"] + "\n" + items["description"]
    assert not text.str.contains(r"[{}]|  | [,.:]|^ | $|\n | \n").any()

def test_leave_last_out_on_synthetic(small):
    split = leave_last_out(small)
    assert len(split.users) == SMALL["num_users"]
    test, valid = split.examples("test"), split.examples("valid")
    for seq, h_test, h_valid, t_test, t_valid in zip(
        split.sequences, test.histories, valid.histories, test.targets, valid.targets
    ):
        assert len(h_test) == len(seq) - 1 and len(h_valid) == len(seq) - 2
        assert t_test == seq[-1] and t_valid == seq[-2]
    assert split.item_counts().sum() == sum(len(s) - 2 for s in split.sequences)
    assert ((test.targets >= 0) & (test.targets < len(small.catalog))).all()


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(language="fr"), "language"),
        (dict(min_len=6, max_len=5), "min_len"),
        (dict(min_len=0), "min_len"),
        (dict(num_items=10), "num_items"),
        (dict(num_users=0), "num_users"),
    ],
)
def test_bad_arguments_name_the_field(kwargs, field):
    with pytest.raises(DataError, match=field):
        generate(**{**SMALL, **kwargs})
