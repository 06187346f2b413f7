"""Dataset loaders: formats, strict bad-input handling (file:line), leakage-free splits, pseudonymized users."""

from __future__ import annotations

import gzip
import json
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
from helpers.quote_catalog import QUOTED_PRODUCT, quote_files

from towerrec.data.formats.amazon2023 import load_amazon2023
from towerrec.data.formats.recbole import load_recbole
from towerrec.data.formats.table import load_table
from towerrec.data.load import load_dataset, load_split
from towerrec.data.privacy import pseudonymize
from towerrec.data.schema import DataError
from towerrec.data.splits import leave_last_out, tie_break_key

SECRET = "test-secret"
LENIENT = {"max_bad_row_share": 1.0}  # the fixtures are tiny: one bad row is far past the default share (1%)

# (item_id, title, brand, category path, description, price); I9 is never interacted with.
ITEMS = [
    ("I1", "Red mug", "Acme", "Kitchen > Mugs", "A red mug.", 9.5),
    ("I2", "Blue mug", "Acme", "Kitchen > Mugs", "A blue mug.", 9.0),
    ("I3", "Tea pot", "Brewco", "Kitchen > Pots", "Holds 1 l.", 25.0),
    ("I4", "Kettle", "Brewco", "Kitchen > Appliances", "Boils water.", 40.0),
    ("I5", "Notebook", "Papery", "Office > Paper", "A5, dotted.", 4.5),
    ("I6", "Fountain pen", "Inkwell", "Office > Pens", "Fine nib.", 30.0),
    ("I7", "Ink bottle", "Inkwell", "Office > Ink", "Blue-black.", 8.0),
    ("I8", "Desk lamp", "Lumen", "Office > Lamps", "LED.", 22.0),
    ("I9", "Stapler", "Papery", "Office > Tools", "Never bought.", 12.0),
]

# (raw user id, item id, time in seconds): ties inside and at the end of sequences, a repeated
# item, a user too short to split. Written to files in a scrambled order.
EVENTS = [
    ("alice@example.com", "I1", 100),
    ("alice@example.com", "I2", 200),
    ("alice@example.com", "I3", 200),
    ("alice@example.com", "I4", 300),
    ("alice@example.com", "I2", 400),
    ("bob-42", "I5", 50),
    ("bob-42", "I6", 60),
    ("bob-42", "I7", 70),
    ("bob-42", "I8", 70),
    ("carol", "I1", 10),
    ("carol", "I2", 20),
    ("dave", "I3", 5),
    ("dave", "I3", 6),
    ("dave", "I4", 6),
    ("dave", "I3", 7),
]
RAW_USERS = sorted({u for u, _, _ in EVENTS})


def scrambled(rows):
    return [rows[i] for i in random.Random(7).sample(range(len(rows)), len(rows))]


# ------------------------------------------------------------------------------------------------
# Fixture writers: each writes ITEMS-like and EVENTS-like data in one format and loads it.
# ------------------------------------------------------------------------------------------------


def write_tsv(path: Path, header: list[str], rows: list) -> Path:
    lines = ["\t".join(header)] + ["\t".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_jsonl(path: Path, objects: list, compress: bool = False) -> Path:
    data = "".join(json.dumps(o) + "\n" for o in objects).encode("utf-8")
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def recbole_files(tmp: Path, events=EVENTS, items=ITEMS) -> Path:
    write_tsv(
        tmp / "shop.inter",
        ["user_id:token", "item_id:token", "timestamp:float", "rating:float"],
        [(u, i, f"{t}.0", 4) for u, i, t in scrambled(events)],
    )
    write_tsv(
        tmp / "shop.item",
        ["item_id:token", "title:token", "brand:token", "categories:token_seq", "description:token_seq", "price:float",
         "sales_type:token"],
        [(i, title, brand, cat, desc, price, "Home") for i, title, brand, cat, desc, price in items],
    )
    return tmp


def amazon_files(tmp: Path, events=EVENTS, items=ITEMS, compress=True) -> tuple[Path, Path]:
    reviews = [
        {"user_id": u, "parent_asin": i, "asin": i + "-v", "rating": 5.0, "timestamp": t * 1000, "text": "ok"}
        for u, i, t in scrambled(events)
    ]
    meta = [
        {"parent_asin": i, "title": title, "store": brand, "categories": cat.split(" > "), "description": [desc],
         "features": ["dishwasher safe", "gift"], "price": f"${price:.2f}", "main_category": "Home"}
        for i, title, brand, cat, desc, price in items
    ]
    suffix = ".jsonl.gz" if compress else ".jsonl"
    return write_jsonl(tmp / f"reviews{suffix}", reviews, compress), write_jsonl(tmp / f"meta{suffix}", meta, compress)


TABLE_COLUMNS = {"item_id": "sku", "title": "name", "brand": "maker", "user_id": "customer", "timestamp": "ts"}


def table_files(tmp: Path, events=EVENTS, items=ITEMS, fmt="csv") -> tuple[Path, Path]:
    catalog = pd.DataFrame(
        [(i, t, b, c, d, p, "matte") for i, t, b, c, d, p in items],
        columns=["sku", "name", "maker", "category", "description", "price", "finish"],
    )
    iso = [pd.Timestamp(t, unit="s", tz="UTC").isoformat() for _, _, t in events]
    interactions = pd.DataFrame({"customer": [u for u, _, _ in events], "sku": [i for _, i, _ in events], "ts": iso})
    interactions = interactions.iloc[random.Random(3).sample(range(len(events)), len(events))]
    if fmt == "parquet":  # integer seconds instead of ISO strings
        interactions["ts"] = [int(pd.Timestamp(s).timestamp()) for s in interactions["ts"]]
        catalog.to_parquet(tmp / "catalog.parquet", index=False)
        interactions.to_parquet(tmp / "events.parquet", index=False)
        return tmp / "catalog.parquet", tmp / "events.parquet"
    catalog.to_csv(tmp / "catalog.csv", index=False)
    interactions.to_csv(tmp / "events.csv", index=False)
    return tmp / "catalog.csv", tmp / "events.csv"


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


def write_text_file(path: Path, items=ITEMS) -> Path:
    """ITEMS as a RecBole .text file: "title. categories. brand. "."""
    return write_tsv(path, ["item_id:token", "text:token_seq"], [(i, f"{t}. {c}. {b}. ") for i, t, b, c, *_ in items])


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
# Bad input: DataError naming file:line, or a counted skip
# ------------------------------------------------------------------------------------------------


def assert_bad_row(load, path: Path, line: int, reason: str, caplog):
    """'error' raises naming file:line; 'skip' loads, counts one skipped row and logs where it was, or refuses
    (naming the file) when that one row is more than max_bad_row_share of the file."""
    with pytest.raises(DataError, match=re.escape(f"{path}:{line}: ") + reason):
        load(on_bad_rows="error")
    refused = re.escape(f"{path}: 1 of ") + r"\d+ rows \(.*\) are bad, more than data\.max_bad_row_share=0\.01 "
    with pytest.raises(DataError, match=refused):
        load(on_bad_rows="skip")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="towerrec"):
        dataset = load(on_bad_rows="skip", **LENIENT)
    assert "skipped 1 bad rows" in caplog.text and f"{path}:{line}: " in caplog.text
    return dataset


def replace_line(path: Path, line: int, text: bytes):
    lines = path.read_bytes().splitlines(keepends=True)
    lines[line - 1] = text + b"\n"
    path.write_bytes(b"".join(lines))


def append_line(path: Path, text: bytes) -> int:
    data = path.read_bytes()
    path.write_bytes(data + text + b"\n")
    return data.count(b"\n") + 1


def test_bad_json_line(tmp_path, caplog):
    reviews, meta = amazon_files(tmp_path, compress=False)
    replace_line(reviews, 3, b'{"user_id": "x", "parent_asin": ')
    dataset = assert_bad_row(lambda **kw: load_amazon2023(reviews, meta, **kw), reviews, 3, "invalid JSON", caplog)
    assert len(dataset.interactions) == len(EVENTS) - 1
    replace_line(reviews, 3, b'["a list"]')
    with pytest.raises(DataError, match=re.escape(f"{reviews}:3: expected a JSON object")):
        load_amazon2023(reviews, meta)


def test_wrong_column_count_tsv(tmp_path, caplog):
    directory = recbole_files(tmp_path)
    inter = directory / "shop.inter"
    replace_line(inter, 4, b"alice@example.com\tI1\t100.0")
    load = lambda **kw: load_recbole(directory, "shop", **kw)  # noqa: E731
    assert_bad_row(load, inter, 4, "expected 4 tab-separated fields, found 3", caplog)


def test_wrong_column_count_csv(tmp_path, caplog):
    catalog, events = table_files(tmp_path)
    replace_line(events, 5, b"bob-42,I5,2020-01-01T00:00:00,extra")
    load = lambda **kw: load_table(catalog, events, TABLE_COLUMNS, **kw)  # noqa: E731
    assert_bad_row(load, events, 5, "expected 3 fields, found 4", caplog)


def test_csv_multiline_field_keeps_line_numbers(tmp_path):
    catalog, events = table_files(tmp_path)
    replace_line(catalog, 2, b'I1,"Red\nmug",Acme,Kitchen,"two\nlines",9.5,matte')  # one record, 3 lines
    line = append_line(catalog, b",No id,Acme,Kitchen,x,1,matte")
    assert line == 1 + 3 + 8 + 1
    with pytest.raises(DataError, match=re.escape(f"{catalog}:{line}: missing item id")):
        load_table(catalog, events, TABLE_COLUMNS)
    replace_line(catalog, line, b"I10,Tray,Acme,Kitchen,x,1,matte")
    items = load_table(catalog, events, TABLE_COLUMNS).catalog.items.set_index("item_id")
    assert items.loc["I1", "title"] == "Red\nmug" and items.loc["I1", "description"] == "two\nlines"


def test_unterminated_quote_names_the_line_it_opens_on(tmp_path):
    items, events = quote_files(tmp_path, {7: QUOTED_PRODUCT})
    with pytest.raises(DataError, match=re.escape(
            f"{items}:7: unterminated quote: field 2 opens with a quote that never closes, so lines 7-31 (the rest "
            "of the file) would be one field (set data.on_bad_rows=skip")):
        load_table(items, events)


def test_unterminated_quote_in_skip_mode_is_refused_then_loses_one_row(tmp_path, caplog):
    items, events = quote_files(tmp_path, {7: QUOTED_PRODUCT})
    cfg = {"kind": "table", "catalog_path": str(items), "interactions_path": str(events), "on_bad_rows": "skip",
           "user_id_secret": SECRET}
    with pytest.raises(DataError) as info:
        load_split(cfg)
    message = str(info.value)
    assert message.startswith(f"{items}: 1 of 30 rows (3.3%) are bad, more than data.max_bad_row_share=0.01 lets ")
    assert f"(first: {items}:7: unterminated quote" in message and f"also {events}: 3 of 100 rows (3.0%)" in message
    # Allowed a larger share, skip mode drops line 7 alone: the lines after the quote are read again.
    with caplog.at_level(logging.WARNING, logger="towerrec"):
        split = load_split({**cfg, "max_bad_row_share": 0.05})
    assert "skipped 4 bad rows" in caplog.text
    assert sorted(split.catalog.item_ids) == [f"P{i:02d}" for i in range(30) if i != 5]
    assert len(split.users) == 10 and sum(len(s) for s in split.sequences) == 97


@pytest.mark.parametrize(
    "lines, newline, line, last",
    [
        ({7: QUOTED_PRODUCT}, "\r\n", 7, 31),
        ({7: 'P05,Gadget 5,Brand1,Home,A thing.,"5.5'}, "\n", 7, 31),  # the last field
        ({31: 'P29,"Gadget 29,Brand1,Home,A thing.,29.5'}, "\n", 31, 31),  # the last line
        ({7: 'P05,"Gadget\n5",Brand1,Home,"A thing.,5.5'}, "\n", 8, 32),  # a closed quoted field before it
    ],
    ids=["crlf", "last-field", "last-line", "second-quote"],
)
def test_unterminated_quote_line_and_recovery(tmp_path, lines, newline, line, last):
    items, events = quote_files(tmp_path, lines, newline)
    with pytest.raises(DataError, match=re.escape(f"{items}:{line}: unterminated quote: field ") + r"\d "
                       + re.escape(f"opens with a quote that never closes, so lines {line}-{last} ")):
        load_table(items, events)
    dataset = load_table(items, events, on_bad_rows="skip", max_bad_row_share=0.05)
    assert len(dataset.catalog) == 29


def test_quote_that_closes_many_lines_later_is_named(tmp_path):
    items, events = quote_files(tmp_path, {7: QUOTED_PRODUCT, 20: 'P18,Gadget 18,Brand2,"Home, Things",A thing.,1'})
    with pytest.raises(DataError, match=re.escape(
            f"{items}:7: expected 6 fields, found 5 (a quoted field makes lines 7-20 one record: is a quote "
            "unterminated?)")):
        load_table(items, events)


def test_unterminated_quote_in_the_header_is_an_error_in_skip_mode_too(tmp_path):
    items, events = quote_files(tmp_path, {1: 'item_id,"title,brand,category,description,price'})
    with pytest.raises(DataError, match=re.escape(f"{items}:1: unterminated quote: field 2 opens") + ".*header"):
        load_table(items, events, on_bad_rows="skip", max_bad_row_share=1.0)


@pytest.mark.parametrize("share, refused", [(0.021, False), (0.02, False), (0.0199, True)])
def test_max_bad_row_share_bounds_what_skip_mode_drops(tmp_path, share, refused):
    """2 of 100 events name unknown items: a bound at or above 2% loads the other 98, one below refuses."""
    items, events = quote_files(tmp_path)
    lines = events.read_text().splitlines()
    for k in (3, 50):
        lines[k - 1] = f"user9,NOPE{k},{k}"
    events.write_text("\n".join(lines) + "\n")
    load = lambda: load_table(items, events, on_bad_rows="skip", max_bad_row_share=share)  # noqa: E731
    if refused:
        with pytest.raises(DataError, match=re.escape(
                f"{events}: 2 of 100 rows (2.0%) are bad, more than data.max_bad_row_share=0.0199 lets skip mode drop "
                f"(first: {events}:3: unknown item 'NOPE3' (not in the catalog)); fix the data, or raise")):
            load()
    else:
        assert len(load().interactions) == 98


def test_long_values_are_cut_in_messages(tmp_path):
    catalog, events = table_files(tmp_path)
    line = append_line(events, b"zed,I1,2024-01-01" + b"9" * 10_000)
    with pytest.raises(DataError) as info:
        load_table(catalog, events, TABLE_COLUMNS)
    message = str(info.value)
    assert len(message) < 300, message
    assert f"{events}:{line}: timestamp '2024-01-0199" in message and "…' (10,010 characters) is not a" in message
    line = append_line(catalog, b"I" + b"x" * 5000 + b",Title,Acme,Kitchen,x,1,matte")
    append_line(catalog, b"I" + b"x" * 5000 + b",Title,Acme,Kitchen,x,1,matte")
    duplicate = re.escape(f"{catalog}:{line + 1}: duplicate item id 'Ixxx") + r"x*…' \(5,001 characters\) \(set"
    with pytest.raises(DataError, match=duplicate):
        load_table(catalog, events, TABLE_COLUMNS)


@pytest.mark.parametrize("timestamp", ["inf", "1e400", "9" * 40, "9223372036854775808", "-1e19"])
def test_timestamps_an_int64_cannot_hold_are_bad_rows(tmp_path, timestamp):
    items, events = quote_files(tmp_path)
    line = append_line(events, f"user1,P01,{timestamp}".encode())
    with pytest.raises(DataError, match=re.escape(f"{events}:{line}: timestamp {timestamp!r} is out of range")):
        load_table(items, events)


def test_parquet_binary_text_is_decoded_and_float_ids_kept(tmp_path):
    catalog, events = table_files(tmp_path, fmt="parquet")
    df = pd.read_parquet(catalog)
    df["name"] = [n.encode() for n in df["name"]]
    df.loc[3, "name"] = b"\xff\xfe"
    df.to_parquet(catalog)
    with pytest.raises(DataError, match=re.escape(f"{catalog} row 4: column 'name' is not valid UTF-8")):
        load_table(catalog, events, TABLE_COLUMNS)
    df.loc[3, "name"] = ITEMS[3][1].encode()
    df["sku"] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, np.inf]  # I9 is never bought
    df.to_parquet(catalog)
    ev = pd.read_parquet(events)
    ev["sku"] = ev["sku"].str[1:].astype(float)
    ev.to_parquet(events)
    dataset = load_table(catalog, events, TABLE_COLUMNS)
    assert dataset.catalog.items["title"].tolist() == [i[1] for i in ITEMS]
    assert list(dataset.catalog.item_ids) == [str(k) for k in range(1, 9)] + ["inf"]


@pytest.mark.parametrize("fmt", ["recbole_item", "recbole_text", "amazon", "csv"])
def test_missing_item_id_in_catalog(tmp_path, caplog, fmt):
    if fmt.startswith("recbole"):
        directory = recbole_files(tmp_path)
        if fmt == "recbole_text":
            (directory / "shop.item").unlink()
            write_text_file(directory / "shop.text")
            path = directory / "shop.text"
        else:
            path = directory / "shop.item"
        nameless = b"\tNameless\tAcme\tKitchen\tx\t1\tHome" if fmt == "recbole_item" else b"\tNameless. C. B. "
        line = append_line(path, nameless)
        load = lambda **kw: load_recbole(directory, "shop", **kw)  # noqa: E731
    elif fmt == "amazon":
        reviews, path = amazon_files(tmp_path, compress=False)
        line = append_line(path, b'{"title": "Nameless", "parent_asin": null}')
        load = lambda **kw: load_amazon2023(reviews, path, **kw)  # noqa: E731
    else:
        path, events = table_files(tmp_path)
        line = append_line(path, b",Nameless,Acme,Kitchen,x,1,matte")
        load = lambda **kw: load_table(path, events, TABLE_COLUMNS, **kw)  # noqa: E731
    dataset = assert_bad_row(load, path, line, "missing item id", caplog)
    assert len(dataset.catalog) == len(ITEMS)


@pytest.mark.parametrize("fmt", ["recbole", "amazon", "csv"])
def test_missing_item_or_user_in_interaction(tmp_path, caplog, fmt):
    if fmt == "recbole":
        directory = recbole_files(tmp_path)
        path = directory / "shop.inter"
        line = append_line(path, b"zed\t\t5.0\t3")
        load = lambda **kw: load_recbole(directory, "shop", **kw)  # noqa: E731
    elif fmt == "amazon":
        path, meta = amazon_files(tmp_path, compress=False)
        line = append_line(path, b'{"user_id": "zed", "timestamp": 5}')
        load = lambda **kw: load_amazon2023(path, meta, **kw)  # noqa: E731
    else:
        catalog, path = table_files(tmp_path)
        line = append_line(path, b"zed,,2020-01-01")
        load = lambda **kw: load_table(catalog, path, TABLE_COLUMNS, **kw)  # noqa: E731
    assert_bad_row(load, path, line, "missing item id", caplog)
    no_user = {"recbole": b"\tI1\t5.0\t3", "amazon": b'{"parent_asin": "I1", "timestamp": 5}', "csv": b",I1,2020-01-01"}
    replace_line(path, line, no_user[fmt])
    with pytest.raises(DataError, match=re.escape(f"{path}:{line}: missing user id")):
        load()


@pytest.mark.parametrize("fmt", ["recbole", "amazon", "csv", "parquet"])
def test_unknown_item_in_interaction(tmp_path, caplog, fmt):
    if fmt == "recbole":
        directory = recbole_files(tmp_path)
        path = directory / "shop.inter"
        line = append_line(path, b"zed\tNOPE\t5.0\t3")
        load = lambda **kw: load_recbole(directory, "shop", **kw)  # noqa: E731
    elif fmt == "amazon":
        path, meta = amazon_files(tmp_path, compress=False)
        line = append_line(path, b'{"user_id": "zed", "parent_asin": "NOPE", "timestamp": 5}')
        load = lambda **kw: load_amazon2023(path, meta, **kw)  # noqa: E731
    elif fmt == "csv":
        catalog, path = table_files(tmp_path)
        line = append_line(path, b"zed,NOPE,2020-01-01T10:00:00")
        load = lambda **kw: load_table(catalog, path, TABLE_COLUMNS, **kw)  # noqa: E731
    else:
        catalog, path = table_files(tmp_path, fmt="parquet")
        df = pd.read_parquet(path)
        unknown = pd.DataFrame({"customer": ["zed"], "sku": ["NOPE"], "ts": [5]})
        pd.concat([df.iloc[:2], unknown, df.iloc[2:]]).to_parquet(path)
        with pytest.raises(DataError, match=re.escape(f"{path} row 3: unknown item 'NOPE'")):
            load_table(catalog, path, TABLE_COLUMNS)
        return
    dataset = assert_bad_row(load, path, line, "unknown item 'NOPE'", caplog)
    assert len(dataset.interactions) == len(EVENTS)


@pytest.mark.parametrize("fmt", ["recbole_item", "recbole_text", "amazon", "csv"])
def test_empty_title(tmp_path, caplog, fmt):
    if fmt.startswith("recbole"):
        directory = recbole_files(tmp_path)
        if fmt == "recbole_text":
            (directory / "shop.item").unlink()
            write_text_file(directory / "shop.text")
            path = directory / "shop.text"
            line = append_line(path, b"X1\t . Cat. Brand. ")
        else:
            path = directory / "shop.item"
            line = append_line(path, b"X1\t  \tAcme\tKitchen\tx\t1\tHome")
        load = lambda **kw: load_recbole(directory, "shop", **kw)  # noqa: E731
    elif fmt == "amazon":
        reviews, path = amazon_files(tmp_path, compress=False)
        line = append_line(path, b'{"parent_asin": "X1", "title": ""}')
        load = lambda **kw: load_amazon2023(reviews, path, **kw)  # noqa: E731
    else:
        path, events = table_files(tmp_path)
        line = append_line(path, b"X1,,Acme,Kitchen,x,1,matte")
        load = lambda **kw: load_table(path, events, TABLE_COLUMNS, **kw)  # noqa: E731
    dataset = assert_bad_row(load, path, line, "item 'X1' has an empty title", caplog)
    assert "X1" not in set(dataset.catalog.item_ids)


@pytest.mark.parametrize("fmt", ["tsv", "jsonl", "jsonl.gz", "csv"])
def test_invalid_utf8_names_the_line(tmp_path, caplog, fmt):
    if fmt == "tsv":
        directory = recbole_files(tmp_path)
        path, line = directory / "shop.item", 3
        load = lambda **kw: load_recbole(directory, "shop", **kw)  # noqa: E731
    elif fmt.startswith("jsonl"):
        reviews, path = amazon_files(tmp_path, compress=False)
        line = 2
        load = lambda **kw: load_amazon2023(reviews, path, **kw)  # noqa: E731
    else:
        path, events = table_files(tmp_path)
        line = 3
        load = lambda **kw: load_table(path, events, TABLE_COLUMNS, **kw)  # noqa: E731
    lines = path.read_bytes().splitlines(keepends=True)
    lines[line - 1] = lines[line - 1].replace(b"Blue", b"Bl\xff\xfee")  # I2's title, not valid UTF-8
    data = b"".join(lines)
    if fmt == "jsonl.gz":
        path.unlink()
        path = path.with_suffix(".gz")
        path.write_bytes(gzip.compress(data))
        load = lambda **kw: load_amazon2023(reviews, path, **kw)  # noqa: E731
    else:
        path.write_bytes(data)
    with pytest.raises(DataError, match=re.escape(f"{path}:{line}: invalid UTF-8 byte 0xff")):
        load()


def test_invalid_utf8_skip_in_interactions(tmp_path, caplog):
    directory = recbole_files(tmp_path)
    inter = directory / "shop.inter"
    replace_line(inter, 2, b"\xc3\x28\tI1\t1.0\t5")
    dataset = assert_bad_row(lambda **kw: load_recbole(directory, "shop", **kw), inter, 2, "invalid UTF-8", caplog)
    assert len(dataset.interactions) == len(EVENTS) - 1


@pytest.mark.parametrize("fmt", ["recbole", "amazon", "csv"])
def test_one_megabyte_description_is_truncated(tmp_path, caplog, fmt):
    huge = "x" * 1_000_000
    long_items = [(i, t, b, c, huge if i == "I4" else d, p) for i, t, b, c, d, p in ITEMS]
    with caplog.at_level(logging.WARNING, logger="towerrec"):
        if fmt == "recbole":
            dataset = load_recbole(recbole_files(tmp_path, items=long_items), "shop", max_text_chars=500)
        elif fmt == "amazon":
            dataset = load_amazon2023(*amazon_files(tmp_path, items=long_items), max_text_chars=500)
        else:
            dataset = load_table(*table_files(tmp_path, items=long_items), TABLE_COLUMNS, max_text_chars=500)
    descriptions = dataset.catalog.items.set_index("item_id")["description"]
    assert descriptions["I4"] == "x" * 500 and descriptions["I3"] == "Holds 1 l."
    assert re.search(r"truncated 1 description value\(s\) longer than 500 characters", caplog.text)


@pytest.mark.parametrize("fmt", ["recbole", "amazon", "csv", "parquet"])
def test_empty_catalog_is_one_clear_error(tmp_path, fmt):
    if fmt == "recbole":
        directory = recbole_files(tmp_path)
        (directory / "shop.item").unlink()
        path = write_tsv(directory / "shop.text", ["item_id:token", "text:token_seq"], [])
        load = lambda: load_recbole(directory, "shop")  # noqa: E731
    elif fmt == "amazon":
        reviews, path = amazon_files(tmp_path, compress=False)
        path.write_bytes(b"")
        load = lambda: load_amazon2023(reviews, path)  # noqa: E731
    else:
        path, events = table_files(tmp_path, fmt=fmt)
        empty = pd.DataFrame(columns=["sku", "name"])
        empty.to_csv(path, index=False) if fmt == "csv" else empty.to_parquet(path)
        load = lambda: load_table(path, events, TABLE_COLUMNS)  # noqa: E731
    with pytest.raises(DataError, match="the catalog is empty") as info:
        load()
    assert str(path.parent) in str(info.value) and "\n" not in str(info.value)


def test_catalog_emptied_by_skipped_rows(tmp_path):
    write_jsonl(tmp_path / "meta.jsonl", [{"parent_asin": "A", "title": " "}])
    write_jsonl(tmp_path / "reviews.jsonl", [])
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'meta.jsonl'}: the catalog is empty")):
        load_amazon2023(tmp_path / "reviews.jsonl", tmp_path / "meta.jsonl", on_bad_rows="skip")


def test_no_interactions_is_one_clear_error(tmp_path):
    _, meta = amazon_files(tmp_path, compress=False)
    write_jsonl(tmp_path / "none.jsonl", [])
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'none.jsonl'}: no interactions")):
        load_amazon2023(tmp_path / "none.jsonl", meta)


@pytest.mark.parametrize("which", ["recbole_dir", "recbole_name", "amazon_reviews", "amazon_meta", "csv", "parquet"])
def test_missing_file_is_one_clear_error(tmp_path, which):
    missing = tmp_path / "nope"
    if which == "recbole_dir":
        load, expect = lambda: load_recbole(missing, "shop"), f"{missing}: no such directory"
    elif which == "recbole_name":
        recbole_files(tmp_path)
        load = lambda: load_recbole(tmp_path, "other")  # noqa: E731
        expect = "found neither other.inter nor other.train/valid/test.inter"
    elif which.startswith("amazon"):
        reviews, meta = amazon_files(tmp_path)
        args = (missing, meta) if which == "amazon_reviews" else (reviews, missing)
        load, expect = lambda: load_amazon2023(*args), f"{missing}: file not found"
    else:
        catalog, events = table_files(tmp_path, fmt=which)
        gone = catalog.with_name("gone" + catalog.suffix)
        load, expect = lambda: load_table(gone, events, TABLE_COLUMNS), f"{gone}: file not found"
    with pytest.raises(DataError, match=re.escape(expect)) as info:
        load()
    assert "\n" not in str(info.value)


def test_bad_timestamp_and_rating(tmp_path, caplog):
    catalog, events = table_files(tmp_path)
    line = append_line(events, b"zed,I1,yesterday")
    assert_bad_row(lambda **kw: load_table(catalog, events, TABLE_COLUMNS, **kw), events, line,
                   "timestamp 'yesterday' is not a number or an ISO datetime", caplog)
    directory = recbole_files(tmp_path)
    line = append_line(directory / "shop.inter", b"zed\tI1\tsoon\t3")  # among numeric timestamps
    with pytest.raises(DataError, match=re.escape(f"{directory / 'shop.inter'}:{line}: timestamp 'soon' is not")):
        load_recbole(directory, "shop")
    replace_line(directory / "shop.inter", line, b"zed\tI1\t5.0\tgreat")
    with pytest.raises(DataError, match=re.escape(f"{directory / 'shop.inter'}:{line}: rating 'great' is not a fin")):
        load_recbole(directory, "shop")


def test_option_validation(tmp_path):
    directory = recbole_files(tmp_path)
    with pytest.raises(DataError, match="on_bad_rows must be 'error' or 'skip'"):
        load_recbole(directory, "shop", on_bad_rows="ignore")
    with pytest.raises(DataError, match="max_text_chars must be a positive integer"):
        load_recbole(directory, "shop", max_text_chars=0)
    for share in (1.5, -0.1, "0.1", True, float("nan")):
        with pytest.raises(DataError, match="data.max_bad_row_share must be a number from 0 to 1"):
            load_recbole(directory, "shop", max_bad_row_share=share)


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
