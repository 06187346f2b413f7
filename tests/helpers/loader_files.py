"""The loader tests' fixture files: ITEMS and EVENTS written as RecBole atomic files, Amazon 2023 JSONL and
CSV/Parquet tables, and the unterminated-quote catalog (30 products and 100 events as CSV, one quote at line 7
that never closes: before the fix it swallowed 25 products into one field and, in skip mode, dropped 84 of the
100 events as unknown items without a word). Shared by tests/data and the command-line tests."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pandas as pd

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


def write_text_file(path: Path, items=ITEMS) -> Path:
    """ITEMS as a RecBole .text file: "title. categories. brand. "."""
    return write_tsv(path, ["item_id:token", "text:token_seq"], [(i, f"{t}. {c}. {b}. ") for i, t, b, c, *_ in items])


QUOTED_PRODUCT = 'P05,"Gadget 5,Brand1,Home > Things,A thing.,5.5'  # for line 7; the quote never closes


def quote_files(tmp: Path, lines: dict[int, str] | None = None, newline: str = "\n") -> tuple[Path, Path]:
    """items.csv: 30 products P00..P29 on lines 2-31, `lines` replacing some (line number -> text); events.csv:
    10 users x 10 events on lines 2-101, 3 of them of P05 (lines 7, 14 and 100)."""
    rows = ["item_id,title,brand,category,description,price"]
    rows += [f"P{i:02d},Gadget {i},Brand{i % 4},Home > Things,A thing.,{i}.5" for i in range(30)]
    for line, text in (lines or {}).items():
        rows[line - 1] = text
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "items.csv").write_bytes((newline.join(rows) + newline).encode())
    events = ["user_id,item_id,timestamp"]
    events += [f"user{u},P{(3 * u + t) % 30:02d},{1000 * u + t}" for u in range(10) for t in range(10)]
    (tmp / "events.csv").write_text("\n".join(events) + "\n")
    return tmp / "items.csv", tmp / "events.csv"
