"""The hand-built test dataset and small shared values (the dataset is described in tests/conftest.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from towerrec.data.schema import Catalog, Interactions

NAN = math.nan
ROOT = Path(__file__).resolve().parents[2]

CATALOG_ROWS = [
    # item_id, title, brand, category, description, price, color, material
    ("sku-a", "Trail running shoe", "Stridex", "Sports > Running > Shoes", "Light trail shoe", 89.5, "blue", "mesh"),
    ("sku-b", "Running socks", "Stridex", "Sports > Running", "", 12.0, None, None),
    ("sku-c", "Espresso machine", "Brewmaster", "Home > Kitchen > Coffee", "15 bar pump", 249.99, "silver", None),
    ("sku-d", "Coffee grinder", "", "Home > Kitchen > Coffee", "", NAN, "black", None),
    ("sku-e", "Paperback novel", "Inkwell", "Books", "", 9.99, None, None),
    ("sku-f", "Reading lamp", "Lumo", "Home > Lighting", "", 34.0, "white", None),
    ("sku-g", "Yoga mat", "Stridex", "Sports > Fitness", "", 25.0, "green", "rubber"),
    ("sku-h", "Water bottle", "", "", "", NAN, None, None),
]

EVENT_ROWS = [
    ("u_dan", "sku-b", 4),
    ("u_ann", "sku-c", 300),
    ("u_bob", "sku-g", 60),
    ("u_ann", "sku-a", 100),
    ("u_cat", "sku-b", 20),
    ("u_dan", "sku-g", 1),
    ("u_bob", "sku-a", 70),
    ("u_ann", "sku-d", 400),
    ("u_dan", "sku-h", 5),
    ("u_bob", "sku-e", 50),
    ("u_dan", "sku-a", 2),
    ("u_cat", "sku-a", 10),
    ("u_ann", "sku-b", 200),
    ("u_bob", "sku-f", 60),
    ("u_dan", "sku-g", 3),
]

# The expected time-ordered sequences of the users kept (sorted by user id), as item indices.
EXPECTED_SEQUENCES = {
    "u_ann": [0, 1, 2, 3],
    "u_bob": [4, 6, 5, 0],
    "u_dan": [6, 0, 6, 1, 7],
}

TINY_BERT = {
    "vocab_size": 300,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 64,
}


def make_catalog(rows=CATALOG_ROWS) -> Catalog:
    columns = ["item_id", "title", "brand", "category", "description", "price", "color", "material"]
    return Catalog(pd.DataFrame(rows, columns=columns))


def make_events(rows) -> Interactions:
    return Interactions(pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]))


def run_paths(tmp_path: Path) -> list[str]:
    """Overrides that keep logs and the token cache inside tmp_path."""
    return [f"paths.log_dir={tmp_path / 'logs'}", f"paths.cache_dir={tmp_path / 'cache'}"]
