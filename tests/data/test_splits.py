"""Leave-last-out splits: exact parts on the hand-built dataset, deterministic tie-break, no leakage."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest
from helpers.data import EVENT_ROWS, EXPECTED_SEQUENCES, make_catalog, make_events

from towerrec.data.schema import DataError, Dataset
from towerrec.data.splits import leave_last_out, tie_break_key


def as_lists(arrays) -> list[list[int]]:
    return [np.asarray(a).tolist() for a in arrays]


def sequences_by_user(split) -> dict[str, list[int]]:
    return dict(zip(split.users.tolist(), as_lists(split.sequences)))


def tie_first(user: str, item_x: str, item_y: str) -> str:
    """Which of two items tied at one timestamp (first occurrence each) the hash puts first."""
    k = tie_break_key(pd.Series([user, user]), pd.Series([item_x, item_y]), pd.Series([0, 0]))
    return item_x if k[0] < k[1] else item_y


# -------------------------------------------------------------------------------- hand-built dataset


def test_sequences_are_time_ordered_and_short_users_dropped(dataset):
    split = leave_last_out(dataset)
    assert split.users.tolist() == ["u_ann", "u_bob", "u_dan"]  # u_cat has 2 events
    assert sequences_by_user(split) == EXPECTED_SEQUENCES
    assert split.num_items == 8
    assert split.fingerprint == dataset.fingerprint()


def test_valid_and_test_examples_exact(dataset):
    split = leave_last_out(dataset)
    valid, test = split.examples("valid"), split.examples("test")
    assert valid.users.tolist() == test.users.tolist() == ["u_ann", "u_bob", "u_dan"]
    assert as_lists(valid.histories) == [[0, 1], [4, 6], [6, 0, 6]]
    assert valid.targets.tolist() == [2, 5, 1]
    assert as_lists(test.histories) == [[0, 1, 2], [4, 6, 5], [6, 0, 6, 1]]
    assert test.targets.tolist() == [3, 0, 7]
    assert len(valid) == 3
    with pytest.raises(ValueError, match="stage must be 'valid' or 'test'"):
        split.examples("train")


def test_train_pairs_exact(dataset):
    split = leave_last_out(dataset)
    pairs = split.train_pairs()
    # train parts: u_ann [0, 1], u_bob [4, 6], u_dan [6, 0, 6]
    assert pairs.users.tolist() == ["u_ann", "u_bob", "u_dan", "u_dan"]
    assert as_lists(pairs.histories) == [[0], [4], [6], [6, 0]]
    assert pairs.targets.tolist() == [1, 6, 0, 6]
    short = split.train_pairs(max_history=1)
    assert as_lists(short.histories) == [[0], [4], [6], [0]]
    assert short.targets.tolist() == pairs.targets.tolist()


def test_item_counts_count_only_training_parts(dataset):
    counts = leave_last_out(dataset).item_counts()
    # a: u_ann; b: u_ann; e: u_bob; g: u_bob + twice u_dan; a again: u_dan. Valid/test targets c, d, f, b, a, h
    # add nothing, and u_cat (dropped) adds nothing either.
    assert counts.tolist() == [2, 1, 0, 0, 1, 0, 3, 0]
    assert counts.dtype == np.int64


def test_min_interactions(dataset):
    split = leave_last_out(dataset, min_interactions=5)
    assert split.users.tolist() == ["u_dan"]
    with pytest.raises(ValueError, match="min_interactions >= 3"):
        leave_last_out(dataset, min_interactions=2)


def test_no_user_with_enough_events_is_a_clear_data_error(catalog):
    rows = [("u1", "sku-a", 1), ("u1", "sku-b", 2), ("u2", "sku-c", 1)]
    with pytest.raises(DataError, match=r"^few: no user has 3 or more interactions, so there is nothing to split"):
        leave_last_out(Dataset("few", catalog, make_events(rows)))


# ------------------------------------------------------------------------------------------ tie-break


def test_tie_break_follows_the_hash_not_the_item_id():
    # u_bob's sku-f and sku-g share timestamp 60: id order says f first, the hash says g first.
    assert tie_first("u_bob", "sku-f", "sku-g") == "sku-g"
    # u_eve's sku-e and sku-f tie as well, and there the hash agrees with id order: so neither the id
    # order nor its reverse explains both cases.
    assert tie_first("u_eve", "sku-e", "sku-f") == "sku-e"
    rows = [("u_bob", "sku-f", 60), ("u_bob", "sku-g", 60), ("u_bob", "sku-a", 70),
            ("u_eve", "sku-f", 5), ("u_eve", "sku-e", 5), ("u_eve", "sku-a", 9)]
    split = leave_last_out(Dataset("ties", make_catalog(), make_events(rows)))
    assert sequences_by_user(split) == {"u_bob": [6, 5, 0], "u_eve": [4, 5, 0]}


def test_tie_break_key_depends_on_user_item_and_occurrence():
    k = tie_break_key(pd.Series(["u1", "u2", "u1", "u1"]), pd.Series(["x", "x", "y", "x"]), pd.Series([0, 0, 0, 1]))
    assert k.dtype == np.uint64
    assert len(set(k.tolist())) == 4
    again = tie_break_key(pd.Series(["u1"]), pd.Series(["x"]), pd.Series([0]))
    assert again[0] == k[0]


def test_split_is_independent_of_event_row_order(dataset):
    expected = sequences_by_user(leave_last_out(dataset))
    rng = np.random.default_rng(0)
    for _ in range(10):
        rows = [EVENT_ROWS[i] for i in rng.permutation(len(EVENT_ROWS))]
        shuffled = Dataset("tiny", dataset.catalog, make_events(rows))
        assert sequences_by_user(leave_last_out(shuffled)) == expected


def test_split_with_repeated_tied_item_is_independent_of_event_row_order():
    # u_eve buys sku-b at 1 and again at 5, and sku-d at 5. The hash puts (sku-d, occ 0) before
    # (sku-b, occ 0) but after (sku-b, occ 1), so which sku-b event counts as occurrence 1 decides the order.
    rows = [("u_eve", "sku-b", 1), ("u_eve", "sku-b", 5), ("u_eve", "sku-d", 5)]
    catalog = make_catalog()
    in_time_order = leave_last_out(Dataset("r", catalog, make_events(rows)))
    swapped = leave_last_out(Dataset("r", catalog, make_events([rows[1], rows[0], rows[2]])))
    assert as_lists(swapped.sequences) == as_lists(in_time_order.sequences)


def test_split_is_independent_of_catalog_row_order(dataset):
    by_user = sequences_by_user(leave_last_out(dataset))
    expected = {u: [dataset.catalog.item_ids[i] for i in s] for u, s in by_user.items()}
    reordered = make_catalog()
    reordered = type(reordered)(reordered.items.iloc[::-1])  # item indices change, item ids do not
    split = leave_last_out(Dataset("tiny", reordered, dataset.interactions))
    got = {u: [reordered.item_ids[i] for i in s] for u, s in sequences_by_user(split).items()}
    assert got == expected


# ------------------------------------------------------------------------------------------- leakage


def random_dataset(seed: int):
    """Random users (1-8 events each, timestamps in 0..5 so ties are common, rows shuffled).
    Even seeds: each user's items are distinct; odd seeds: repeats are allowed."""
    rng = np.random.default_rng(seed)
    num_items = int(rng.integers(8, 16))
    catalog = make_catalog([(f"i{j:02d}", f"item {j}", "", "", "", None, None, None) for j in range(num_items)])
    rows = []
    for u in range(int(rng.integers(2, 9))):
        n = int(rng.integers(1, 9))
        items = rng.choice(num_items, size=n, replace=seed % 2 == 1)
        rows += [(f"user{u}", f"i{j:02d}", int(rng.integers(0, 6))) for j in items]
    rows = [rows[i] for i in rng.permutation(len(rows))]
    if not any(n >= 3 for n in Counter(r[0] for r in rows).values()):
        rows += [("extra", "i00", 0), ("extra", "i01", 0), ("extra", "i02", 1)]
    return Dataset(f"random{seed}", catalog, make_events(rows)), rows


def position_timestamps(seq: list[int], events: list[tuple[int, int]]) -> list[int]:
    """Timestamps of the sequence's positions, asserting that `seq` orders the user's (item, timestamp)
    events by time: cut into runs of the sorted timestamps, each run holds exactly that time's items."""
    times = sorted(t for _, t in events)
    assert len(seq) == len(events)
    start = 0
    for t in sorted(set(times)):
        size = times.count(t)
        assert Counter(seq[start : start + size]) == Counter(i for i, ts in events if ts == t)
        start += size
    return times


@pytest.mark.parametrize("seed", range(20))
def test_no_leakage_on_random_datasets(seed):
    dataset, rows = random_dataset(seed)
    distinct = seed % 2 == 0
    split = leave_last_out(dataset)
    events = {}
    for user, item, ts in rows:
        events.setdefault(user, []).append((int(item[1:]), ts))
    assert split.users.tolist() == sorted(u for u, ev in events.items() if len(ev) >= 3)

    sequences = sequences_by_user(split)
    valid, test = split.examples("valid"), split.examples("test")
    pairs = split.train_pairs()
    pairs_of = {}
    for u, h, t in zip(pairs.users, pairs.histories, pairs.targets):
        pairs_of.setdefault(u, []).append((list(h), int(t)))

    for r, user in enumerate(split.users):
        seq = sequences[user]
        n = len(seq)
        times = position_timestamps(seq, events[user])
        for ex, cut in ((valid, 2), (test, 1)):
            history, target = list(ex.histories[r]), int(ex.targets[r])
            assert (history, target) == (seq[: n - cut], seq[n - cut])
            # every history item comes no later than the target in time (ties: before it in the timeline)
            assert all(times[p] <= times[n - cut] for p in range(len(history)))
            if distinct:
                assert target not in history
        # train pairs are exactly the prefixes before the valid position, so they never reach valid/test
        assert pairs_of.get(user, []) == [(seq[:t], seq[t]) for t in range(1, n - 2)]
        if distinct:
            seen_in_train = {i for h, t in pairs_of.get(user, []) for i in h + [t]}
            assert seq[-2] not in seen_in_train and seq[-1] not in seen_in_train

    train_items = np.concatenate([np.asarray(s[:-2], dtype=np.int64) for s in sequences.values()])
    assert split.item_counts().tolist() == np.bincount(train_items, minlength=split.num_items).tolist()
    assert split.item_counts().sum() == sum(len(s) - 2 for s in sequences.values())
