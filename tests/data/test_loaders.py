"""Dataset loaders: formats, leakage-free splits, pseudonymized users, the `load_dataset` dispatcher (bad input:
test_bad_rows.py; the fixture files: helpers/loader_files.py)."""

from __future__ import annotations

import gzip
import logging
import random
import re
import sys
import types
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.loader_files import (
    EVENTS,
    LENIENT,
    RAW_USERS,
    SECRET,
    TABLE_COLUMNS,
    amazon_files,
    recbole_files,
    scrambled,
    table_files,
    write_jsonl,
    write_tsv,
)

from towerrec.data.formats.amazon2023 import load_amazon2023
from towerrec.data.formats.recbole import load_recbole
from towerrec.data.formats.table import load_table
from towerrec.data.load import load_dataset, load_split
from towerrec.data.privacy import pseudonymize
from towerrec.data.schema import DataError
from towerrec.data.splits import leave_last_out, tie_break_key

# ------------------------------------------------------------------------------------------------
# Loading ITEMS and EVENTS in each format (the files: helpers/loader_files.py)
# ------------------------------------------------------------------------------------------------


def presplit_files(tmp: Path, sequences: dict[str, list[str]], cap: int, name="mini") -> Path:
    """RecBole pre-split files as UniSRec writes them: integer ids, capped histories, prefix rows."""
    items = sorted({i for seq in sequences.values() for i in seq} | {"NEVER"})
    item_index = {item: k for k, item in enumerate(random.Random(1).sample(items, len(items)))}
    user_index = {user: k for k, user in enumerate(sequences)}
    stages = {"train": [], "valid": [], "test": []}
    for user, seq in sequences.items():
        ids = [item_index[i] for i in seq]
        n = len(ids)
        for p in range(1, n):
            stage = "test" if p == n - 1 else "valid" if p == n - 2 else "train"
            history = " ".join(str(i) for i in ids[max(0, p - cap):p])
            stages[stage].append((user_index[user], history, ids[p]))
    header = ["user_id:token", "item_id_list:token_seq", "item_id:token"]
    for stage, rows in stages.items():
        write_tsv(tmp / f"{name}.{stage}.inter", header, scrambled(rows) if stage == "train" else rows)
    (tmp / f"{name}.item2index").write_text("".join(f"{i}\t{k}\n" for i, k in item_index.items()))
    (tmp / f"{name}.user2index").write_text("".join(f"{u}\t{k}\n" for u, k in user_index.items()))
    write_tsv(tmp / f"{name}.text", ["item_id:token", "text:token_seq"],
              [(i, f"Product {i}. Cat {i[:1]}. Brand{i[-1:]}. ") for i in items])
    return tmp


def sequences_from(events) -> dict[str, list[str]]:
    """Time-ordered item sequences (ties kept in input order) for presplit fixtures."""
    out = defaultdict(list)
    for u, i, _ in sorted(events, key=lambda e: (e[0], e[2])):
        out[u].append(i)
    return dict(out)


def load_recbole_fixture(tmp, events=EVENTS, **kw):
    return load_recbole(recbole_files(tmp, events), "shop", user_id_secret=SECRET, **kw)


def load_amazon_fixture(tmp, events=EVENTS, **kw):
    return load_amazon2023(*amazon_files(tmp, events), user_id_secret=SECRET, **kw)


def load_csv_fixture(tmp, events=EVENTS, **kw):
    return load_table(*table_files(tmp, events), TABLE_COLUMNS, user_id_secret=SECRET, **kw)


def load_parquet_fixture(tmp, events=EVENTS, **kw):
    return load_table(*table_files(tmp, events, fmt="parquet"), TABLE_COLUMNS, user_id_secret=SECRET, **kw)


LOADERS = {
    "recbole": load_recbole_fixture,
    "amazon2023": load_amazon_fixture,
    "csv": load_csv_fixture,
    "parquet": load_parquet_fixture,
}


# ------------------------------------------------------------------------------------------------
# Leakage and privacy, for every loader
# ------------------------------------------------------------------------------------------------


def assert_no_leakage(dataset, split, raw_events):
    """Every stage's history is exactly the user's events before its target, in time order."""
    ids = dataset.catalog.item_ids
    raw_by_user = defaultdict(list)
    for user, item, t in raw_events:
        raw_by_user[pseudonymize([user], SECRET)[0]].append((t, item))
    assert sorted(split.users) == sorted(u for u, ev in raw_by_user.items() if len(ev) >= 3)

    # The tie-broken order the split promises, from the loaded events.
    ev = dataset.interactions.events.sort_values(["user_id", "timestamp"], kind="mergesort")
    occurrence = ev.groupby(["user_id", "item_id"]).cumcount()  # repeats numbered in time order
    ev["tie"] = tie_break_key(ev["user_id"], ev["item_id"], occurrence)
    ev = ev.sort_values(["user_id", "timestamp", "tie"], kind="mergesort")

    valid, test, train = split.examples("valid"), split.examples("test"), split.train_pairs()
    train_by_user = defaultdict(list)
    for user, history, target in zip(train.users, train.histories, train.targets):
        train_by_user[user].append((list(ids[history]), ids[target]))
    for k, user in enumerate(split.users):
        seq = list(ids[test.histories[k]]) + [ids[test.targets[k]]]
        assert seq == list(ev.loc[ev["user_id"] == user, "item_id"])
        # Against the raw source times: position j holds an event of the j-th smallest time, so
        # every history item's time is <= its target's time; tied events may come in either order.
        raw = sorted(raw_by_user[user])
        times = [t for t, _ in raw]
        for t in set(times):
            at = [j for j, tj in enumerate(times) if tj == t]
            assert sorted(seq[j] for j in at) == sorted(item for tj, item in raw if tj == t)
        n = len(seq)
        assert list(ids[valid.histories[k]]) == seq[: n - 2] and ids[valid.targets[k]] == seq[n - 2]
        assert all(times[j] <= times[n - 2] for j in range(n - 2))
        # Training pairs use only positions before the validation target.
        assert train_by_user[user] == [(seq[:t], seq[t]) for t in range(1, n - 2)]


@pytest.mark.parametrize("loader", LOADERS.values(), ids=LOADERS.keys())
def test_leave_last_out_has_no_leakage(tmp_path, loader):
    dataset = loader(tmp_path)
    assert len(dataset.interactions) == len(EVENTS)
    assert "I9" in set(dataset.catalog.item_ids)  # catalog items never interacted with are kept
    assert_no_leakage(dataset, leave_last_out(dataset), EVENTS)


@pytest.mark.parametrize("loader", LOADERS.values(), ids=LOADERS.keys())
def test_raw_user_ids_never_leave_the_loader(tmp_path, loader):
    dataset = loader(tmp_path)
    events = dataset.interactions.events
    assert set(events["user_id"]) == set(pseudonymize(RAW_USERS, SECRET))
    for raw in RAW_USERS:
        assert not events.astype(str).apply(lambda col: col.str.contains(raw, regex=False)).any().any()


@pytest.mark.parametrize("loader", LOADERS.values(), ids=LOADERS.keys())
def test_no_user_with_three_interactions_fails_at_split(tmp_path, loader):
    short = [e for e in EVENTS if e[0] in ("carol",)] + [("erin", "I5", 1), ("erin", "I6", 2), ("frank", "I7", 3)]
    dataset = loader(tmp_path, short)  # loading is fine...
    with pytest.raises(DataError, match="no user has 3 or more interactions"):
        leave_last_out(dataset)  # ...but there is nothing to split


# ------------------------------------------------------------------------------------------------
# Format details
# ------------------------------------------------------------------------------------------------


def test_recbole_atomic_fields_and_types(tmp_path):
    dataset = load_recbole_fixture(tmp_path)
    items = dataset.catalog.items.set_index("item_id")
    assert items.loc["I3", "title"] == "Tea pot" and items.loc["I3", "brand"] == "Brewco"
    assert items.loc["I3", "category"] == "Kitchen > Pots" and items.loc["I3", "price"] == 25.0
    assert dataset.catalog.extra_columns == ["sales_type"]
    events = dataset.interactions.events
    assert events["timestamp"].dtype == np.int64 and set(events["rating"]) == {4.0}


def test_recbole_text_file_is_parsed_and_merged_with_item_file(tmp_path):
    write_tsv(tmp_path / "s.text", ["item_id:token", "text:token_seq"], [
        ("A", "Mr. Coffee 12-Cup. Kitchen Coffee Makers. Mr Coffee. "),
        ("B", "Tom &amp; Jerry mug. . Acme. "),
        ("C", "just a title"),
        ("D", "Item D text. Cat D. Brand D. "),
    ])
    write_tsv(tmp_path / "s.item", ["item_id:token", "title:token", "categories:token_seq", "sales_type:token"], [
        ("D", "Item D from item file", "'Office Products', 'Pens & Refills'", "Office"),
    ])
    write_tsv(tmp_path / "s.inter", ["user_id:token", "item_id:token", "timestamp:float"], [("u", "A", 1)])
    items = load_recbole(tmp_path, "s").catalog.items.set_index("item_id")
    assert items.loc["A", ["title", "category", "brand"]].tolist() == [
        "Mr. Coffee 12-Cup", "Kitchen Coffee Makers", "Mr Coffee"]
    assert items.loc["A", "text"] == "Mr. Coffee 12-Cup. Kitchen Coffee Makers. Mr Coffee. "  # original kept
    assert items.loc["B", ["title", "category", "brand"]].tolist() == ["Tom & Jerry mug", "", "Acme"]  # unescaped
    assert items.loc["C", ["title", "category", "brand"]].tolist() == ["just a title", "", ""]
    # .item fields win; a quoted category list becomes a path; .text fills the brand it lacks
    assert items.loc["D", ["title", "category", "brand"]].tolist() == [
        "Item D from item file", "Office Products > Pens & Refills", "Brand D"]
    assert items.loc["D", "sales_type"] == "Office" and pd.isna(items.loc["A", "sales_type"])


def test_recbole_without_timestamp_uses_file_order(tmp_path):
    write_tsv(tmp_path / "s.text", ["item_id:token", "text:token_seq"], [(i, f"T{i}. C. B. ") for i in "abc"])
    write_tsv(tmp_path / "s.inter", ["user_id:token", "item_id:token"], [("u", "c"), ("u", "a"), ("u", "b")])
    split = leave_last_out(load_recbole(tmp_path, "s"))
    assert list(split.catalog.item_ids[split.sequences[0]]) == ["c", "a", "b"]


def test_amazon2023_fields_gzip_detected_by_magic_bytes(tmp_path):
    reviews, meta = amazon_files(tmp_path, compress=True)
    plain_named_gz = tmp_path / "m2.jsonl"  # gzip bytes under a plain name
    plain_named_gz.write_bytes(meta.read_bytes())
    other = tmp_path / "r2.jsonl.gz"  # plain text under a .gz name
    other.write_bytes(gzip.decompress(reviews.read_bytes()))
    dataset = load_amazon2023(other, plain_named_gz, user_id_secret=SECRET)
    items = dataset.catalog.items.set_index("item_id")
    assert items.loc["I6", ["title", "brand", "category", "description"]].tolist() == [
        "Fountain pen", "Inkwell", "Office > Pens", "Fine nib."]
    assert items.loc["I6", "price"] == 30.0 and items.loc["I6", "features"] == "dishwasher safe gift"
    assert dataset.name == "r2"
    ts = dataset.interactions.events.sort_values("timestamp")["timestamp"]
    assert ts.iloc[0] == 5000  # milliseconds kept


def test_amazon2023_prices_and_missing_fields(tmp_path):
    meta = [
        {"parent_asin": "A", "title": "Dollar &amp; cents", "price": "$1,299.99"},
        {"parent_asin": "B", "title": "Number", "price": 5, "categories": [], "main_category": "Tools"},
        {"parent_asin": "C", "title": "Null", "price": None, "description": None, "store": None},
        {"parent_asin": "D", "title": "Word", "price": "None"},
    ]
    write_jsonl(tmp_path / "meta.jsonl", meta)
    write_jsonl(tmp_path / "reviews.jsonl", [{"user_id": "u", "parent_asin": "A", "timestamp": 1, "rating": None}])
    items = load_amazon2023(tmp_path / "reviews.jsonl", tmp_path / "meta.jsonl").catalog.items.set_index("item_id")
    assert items.loc["A", "price"] == 1299.99 and items.loc["B", "price"] == 5.0
    assert np.isnan(items.loc["C", "price"]) and np.isnan(items.loc["D", "price"])
    assert items.loc["A", "title"] == "Dollar & cents" and items.loc["B", "category"] == "Tools"
    assert items.loc["C", "description"] == "" and items.loc["C", "brand"] == ""


def test_table_iso_and_numeric_timestamps_and_mapping(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    csv_ds, pq_ds = load_csv_fixture(tmp_path / "a"), load_parquet_fixture(tmp_path / "b")
    items = csv_ds.catalog.items.set_index("item_id")
    assert items.loc["I8", ["title", "brand", "price", "finish"]].tolist() == ["Desk lamp", "Lumen", 22.0, "matte"]
    # ISO datetimes become epoch milliseconds; integer seconds are kept: same order either way
    csv_ts = csv_ds.interactions.events.set_index(["user_id", "item_id"])["timestamp"].groupby(level=[0, 1]).min()
    pq_ts = pq_ds.interactions.events.set_index(["user_id", "item_id"])["timestamp"].groupby(level=[0, 1]).min()
    assert (csv_ts == pq_ts * 1000).all()


def test_table_parquet_list_categories_and_string_prices(tmp_path):
    pd.DataFrame({"item_id": [1, 2], "title": ["A", "B"], "category": [["X", "Y"], ["Z"]], "price": ["$3.50", None]}
                 ).to_parquet(tmp_path / "c.parquet")
    pd.DataFrame({"user_id": [7, 7], "item_id": [1, 2], "timestamp": pd.to_datetime(["2024-01-01", "2024-01-02"])}
                 ).to_parquet(tmp_path / "e.parquet")
    dataset = load_table(tmp_path / "c.parquet", tmp_path / "e.parquet")
    items = dataset.catalog.items.set_index("item_id")
    assert items.loc["1", "category"] == "X > Y"
    assert items.loc["1", "price"] == 3.5 and np.isnan(items.loc["2", "price"])
    assert dataset.interactions.events["timestamp"].tolist() == [1704067200000, 1704153600000]


def test_table_column_mapping_errors_name_the_field(tmp_path):
    catalog, events = table_files(tmp_path)
    with pytest.raises(DataError, match=r"catalog\.csv: no column 'item_id' for the required field 'item_id'"):
        load_table(catalog, events, {"title": "name"})
    with pytest.raises(DataError, match=r"events\.csv: no column 'when' \(mapped from data.columns.timestamp\)"):
        load_table(catalog, events, {**TABLE_COLUMNS, "timestamp": "when"})
    with pytest.raises(DataError, match="unknown field"):
        load_table(catalog, events, {**TABLE_COLUMNS, "colour": "c"})
    with pytest.raises(DataError, match="unsupported table format '.xlsx'"):
        load_table(tmp_path / "c.xlsx", events, TABLE_COLUMNS)


# ------------------------------------------------------------------------------------------------
# RecBole pre-split: rebuilding full sequences from capped histories
# ------------------------------------------------------------------------------------------------

CAP = 5


def presplit_sequences() -> dict[str, list[str]]:
    rng = random.Random(0)
    items = [f"P{k:02d}" for k in range(30)]
    seqs = {f"user{u}": [rng.choice(items) for _ in range(rng.randint(3, 16))] for u in range(12)}
    seqs["looper"] = ["P01", "P02"] * 8  # periodic: capped windows repeat
    seqs["repeat"] = ["P03"] * 9
    seqs["exact"] = [f"P{k:02d}" for k in range(CAP + 1)]  # test history exactly at the cap
    return seqs


def read_rows(path: Path, index_to_raw: dict[str, str], user_to_raw: dict[str, str]):
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:]]
    return [(user_to_raw[u], tuple(index_to_raw[i] for i in h.split()), index_to_raw[t]) for u, h, t in rows]


def check_presplit_reproduced(directory: Path, name: str, dataset, cap: int):
    """leave_last_out gives back exactly the files' valid and test rows (histories up to the cap),
    and its training pairs are exactly the train rows."""
    def index(file):
        return dict(reversed(line.split("\t")) for line in (directory / file).read_text().splitlines())

    items, users = index(f"{name}.item2index"), index(f"{name}.user2index")
    pseudo = dict(zip(users.values(), pseudonymize(users.values(), SECRET)))
    split = leave_last_out(dataset)
    ids = split.catalog.item_ids

    def as_rows(examples):
        return Counter((u, tuple(ids[h[-cap:]]), ids[t]) for u, h, t in
                       zip(examples.users, examples.histories, examples.targets))

    for stage in ("valid", "test"):
        rows = read_rows(directory / f"{name}.{stage}.inter", items, users)
        expected = Counter((pseudo[u], h, t) for u, h, t in rows)
        assert as_rows(split.examples(stage)) == expected, stage
    expected = Counter((pseudo[u], h, t) for u, h, t in read_rows(directory / f"{name}.train.inter", items, users))
    assert as_rows(split.train_pairs(max_history=cap)) == expected
    return split


def test_presplit_rebuilds_full_sequences(tmp_path):
    seqs = presplit_sequences()
    directory = presplit_files(tmp_path, seqs, CAP)
    dataset = load_recbole(directory, "mini", user_id_secret=SECRET)
    assert len(dataset.interactions) == sum(len(s) for s in seqs.values())
    assert "NEVER" in set(dataset.catalog.item_ids)  # catalog items without interactions are kept
    split = check_presplit_reproduced(directory, "mini", dataset, CAP)
    pseudo = dict(zip(pseudonymize(seqs, SECRET), seqs))
    for user, seq in zip(split.users, split.sequences):
        assert list(split.catalog.item_ids[seq]) == seqs[pseudo[user]]  # including items before the cap
    # timestamps are sequence positions; catalog rows follow item2index
    events = dataset.interactions.events
    assert (events.groupby("user_id")["timestamp"].apply(lambda t: list(t) == list(range(len(t))))).all()
    item2index = dict(line.split("\t") for line in (directory / "mini.item2index").read_text().splitlines())
    assert [int(item2index[i]) for i in dataset.catalog.item_ids] == list(range(len(dataset.catalog)))
    # the .text "title. categories. brand. " is split
    assert dataset.catalog.items.set_index("item_id").loc["P07", ["title", "category", "brand"]].tolist() == [
        "Product P07", "Cat P", "Brand7"]


def test_presplit_leakage_free(tmp_path):
    seqs = sequences_from(EVENTS)
    dataset = load_recbole(presplit_files(tmp_path, seqs, CAP), "mini", user_id_secret=SECRET)
    raw = [(u, i, pos) for u, seq in seqs.items() for pos, i in enumerate(seq)]
    assert_no_leakage(dataset, leave_last_out(dataset), raw)
    assert not set(RAW_USERS) & set(dataset.interactions.events["user_id"])


def test_presplit_row_that_does_not_fit_is_reported(tmp_path, caplog):
    directory = presplit_files(tmp_path, {"u": list("ABCDEFGH")}, CAP)
    path = directory / "mini.train.inter"
    lines = path.read_text().splitlines()
    k = next(k for k, line in enumerate(lines) if len(line.split()) == 4)  # history of 2: not needed past the cap
    user, history, _ = lines[k].split("\t")
    lines[k] = "\t".join([user, history, history.split()[0]])  # wrong target
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=re.escape(f"{path}:{k + 1}: row does not fit")):
        load_recbole(directory, "mini")
    with caplog.at_level(logging.WARNING):
        dataset = load_recbole(directory, "mini", on_bad_rows="skip", **LENIENT)
    assert len(dataset.interactions) == 8 and "skipped 1 bad rows" in caplog.text
    with pytest.raises(DataError, match=re.escape(f"{path}: 1 of 5 rows (20.0%) are bad")):
        load_recbole(directory, "mini", on_bad_rows="skip")


def test_presplit_unknown_index_and_missing_rows(tmp_path):
    directory = presplit_files(tmp_path, {"u": list("ABCDEFGHIJ")}, CAP)
    test_path = directory / "mini.test.inter"
    header, row = test_path.read_text().splitlines()
    test_path.write_text(header + "\n" + row.replace("\t", "\t999 ", 1) + "\n")
    with pytest.raises(DataError, match=re.escape(f"{test_path}:2: item index '999' is not in the item2index file")):
        load_recbole(directory, "mini")

    # Without the valid row, nothing continues the capped test history backwards.
    directory = presplit_files(tmp_path, {"u": list("ABCDEFGHIJ")}, CAP)
    header = (directory / "mini.valid.inter").read_text().splitlines()[0]
    (directory / "mini.valid.inter").write_text(header + "\n")
    with pytest.raises(DataError, match=re.escape(f"{test_path}:2: cannot recover the items before the 5-item")):
        load_recbole(directory, "mini")

    # Without the train rows at the cap, the earlier train rows no longer fit.
    directory = presplit_files(tmp_path, {"u": list("ABCDEFGHIJ")}, CAP)
    train = directory / "mini.train.inter"
    train.write_text("\n".join(line for line in train.read_text().splitlines() if len(line.split()) != CAP + 2) + "\n")
    with pytest.raises(DataError, match=r"mini\.train\.inter:\d+: row does not fit"):
        load_recbole(directory, "mini")


def test_presplit_requires_all_three_files(tmp_path):
    directory = presplit_files(tmp_path, {"u": list("ABCD")}, CAP)
    (directory / "mini.valid.inter").unlink()
    with pytest.raises(DataError, match=r"incomplete: \['mini.valid.inter'\] missing"):
        load_recbole(directory, "mini")


def shared_scientific() -> Path | None:
    repo = Path(__file__).resolve().parents[2]
    for root in (Path("/work/shared"), repo.parent / "shared"):
        if (root / "data" / "amazon-scientific" / "Scientific.test.inter").exists():
            return root / "data" / "amazon-scientific"
    return None


@pytest.mark.skipif(shared_scientific() is None, reason="the shared Amazon Scientific data is not present")
def test_real_scientific_presplit_round_trip():
    directory = shared_scientific()  # load time: bench/loaders.py
    dataset = load_recbole(directory, "Scientific", user_id_secret=SECRET)
    assert len(dataset.catalog) == 4385 and dataset.interactions.events["user_id"].nunique() == 8442
    assert len(dataset.interactions) == 59427
    check_presplit_reproduced(directory, "Scientific", dataset, cap=50)


# ------------------------------------------------------------------------------------------------
# load_dataset dispatcher
# ------------------------------------------------------------------------------------------------


def test_load_dataset_dispatches_each_kind(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "a").mkdir()
    (tmp_path / "t").mkdir()
    shared = {"on_bad_rows": "skip", "user_id_secret": SECRET, "max_text_chars": 100}
    recbole = load_dataset({"kind": "recbole", "path": str(recbole_files(tmp_path / "r")), "name": "shop", **shared})
    reviews, meta = amazon_files(tmp_path / "a")
    amazon = load_dataset({"kind": "amazon2023", "reviews_path": str(reviews), "meta_path": str(meta), **shared})
    catalog, events = table_files(tmp_path / "t")
    table = load_dataset({"kind": "table", "catalog_path": catalog, "interactions_path": events,
                          "columns": TABLE_COLUMNS, "name": "mine", **shared})
    expected_users = set(pseudonymize(RAW_USERS, SECRET))
    for dataset in (recbole, amazon, table):
        assert set(dataset.interactions.events["user_id"]) == expected_users
    assert (recbole.name, table.name) == ("shop", "mine")


def test_load_split_takes_min_interactions(tmp_path):
    catalog, events = table_files(tmp_path)
    cfg = {"kind": "table", "catalog_path": catalog, "interactions_path": events, "columns": TABLE_COLUMNS,
           "user_id_secret": SECRET}
    assert len(load_split(cfg).users) == 3  # default 3: carol (2 events) is left out
    split = load_split({**cfg, "min_interactions": 5})
    assert list(split.users) == pseudonymize(["alice@example.com"], SECRET)
    assert "min_interactions" not in cfg


def test_load_dataset_accepts_hydra_config(tmp_path):
    omegaconf = pytest.importorskip("omegaconf")
    catalog, events = table_files(tmp_path)
    cfg = omegaconf.OmegaConf.create({"kind": "table", "catalog_path": str(catalog), "interactions_path": str(events),
                                      "columns": TABLE_COLUMNS, "user_id_secret": SECRET, "on_bad_rows": "error"})
    dataset = load_dataset(cfg)
    assert len(dataset.interactions) == len(EVENTS) and dataset.name == "events"


def test_load_dataset_synthetic_passes_params(monkeypatch):
    calls = []
    fake = types.ModuleType("towerrec.data.synthetic")
    fake.generate = lambda **kw: calls.append(kw) or "dataset"
    monkeypatch.setitem(sys.modules, "towerrec.data.synthetic", fake)
    out = load_dataset({"kind": "synthetic", "num_items": 50, "num_users": 20, "seed": 3, "user_id_secret": "k",
                        "on_bad_rows": "error", "max_text_chars": 10})
    assert out == "dataset"
    assert calls == [{"num_items": 50, "num_users": 20, "seed": 3, "user_id_secret": "k"}]


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"kind": "recbole", "path": "x", "name": "y", "max_history": 50}, r"unknown key\(s\) \['max_history'\]"),
        ({"kind": "table", "catalog_path": "c.csv", "interactions_path": "e.csv", "reviews_path": "r"},
         r"unknown key\(s\) \['reviews_path'\]"),
        ({"kind": "parquet"}, "data.kind must be one of"),
        ({"path": "x"}, "data.kind must be one of"),
        ({"kind": "amazon2023", "reviews_path": "r.jsonl"}, r"missing required key\(s\) \['meta_path'\]"),
    ],
)
def test_load_dataset_rejects_bad_configs(cfg, message):
    with pytest.raises(DataError, match=message):
        load_dataset(cfg)
