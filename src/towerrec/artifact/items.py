"""ItemTable: the one map between item ids, table positions and row ids, and the product fields shown to users;
ItemFilter: the product filters a search applies (category path, price range).

Positions are rows of items.parquet (and of the stored embeddings); row ids are the FAISS ids, stable across
add/remove (never reused). Everything that turns a search hit into a product goes through this table.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from towerrec.data.schema import category_key

SHOWN_FIELDS = ("item_id", "title", "brand", "category", "price")


def item_frame(catalog_items: pd.DataFrame, ids: np.ndarray, texts: Sequence[str],
               history_texts: Sequence[str]) -> pd.DataFrame:
    """items.parquet rows for catalog rows: row_id, shown fields, text (product tower input), history_text."""
    return pd.DataFrame({
        "row_id": np.asarray(ids, dtype=np.int64),
        "item_id": catalog_items["item_id"].astype(str).to_numpy(),
        "title": catalog_items["title"].astype(str).to_numpy(),
        "brand": catalog_items["brand"].astype(str).to_numpy(),
        "category": catalog_items["category"].astype(str).to_numpy(),
        "price": pd.to_numeric(catalog_items["price"], errors="coerce").astype(float).to_numpy(),
        "text": list(texts),
        "history_text": list(history_texts),
    })


def shown(value) -> str | None:
    """A catalog text field as the API shows it: missing / NaN / empty -> None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value)
    return text if text else None


class ItemTable:
    """items.parquet as lookups: item id -> position, row id -> position, position -> shown product dict."""

    def __init__(self, items: pd.DataFrame):
        self.frame = items
        self.row_ids = items["row_id"].to_numpy(dtype=np.int64)  # (N,) position -> row id
        self.item_ids = pd.Index(items["item_id"].astype(str))  # position -> item id (get_indexer for arrays)
        # plain dict / array lookups: pandas get_indexer costs ~1 ms a call, a served request makes several
        self.position_of_id = {item_id: i for i, item_id in enumerate(self.item_ids)}
        self.position_of_row = np.full(int(self.row_ids.max()) + 1 if len(self.row_ids) else 0, -1, dtype=np.int64)
        self.position_of_row[self.row_ids] = np.arange(len(self.row_ids))  # row id -> position
        self.prices = items["price"].to_numpy(dtype=np.float64)  # (N,), NaN = unknown
        self.products = [  # position -> the fields a response shows
            {"item_id": i, "title": str(t), "brand": shown(b), "category": shown(c),
             "price": None if math.isnan(p) else float(p)}
            for i, t, b, c, p in zip(self.item_ids, items["title"], items["brand"], items["category"],
                                     self.prices.tolist())]

    def __len__(self) -> int:
        return len(self.row_ids)

    def positions_of_items(self, item_ids: Iterable[str]) -> np.ndarray:
        """Positions of item ids (-1 for unknown ids)."""
        get = self.position_of_id.get
        return np.fromiter((get(str(i), -1) for i in item_ids), dtype=np.int64)

    def positions_of_rows(self, row_ids: Sequence[int]) -> np.ndarray:
        """Positions of row ids (-1 for unknown ids)."""
        rows = np.asarray(row_ids, dtype=np.int64)
        inside = (rows >= 0) & (rows < len(self.position_of_row))
        out = np.full(rows.shape, -1, dtype=np.int64)
        out[inside] = self.position_of_row[rows[inside]]
        return out

    def product(self, position: int, score: float | None = None) -> dict:
        """The shown fields of one product (a fresh dict), with its row id and, if given, a score."""
        out = dict(self.products[int(position)])
        out["row_id"] = int(self.row_ids[int(position)])
        if score is not None:
            out["score"] = float(score)
        return out


@dataclasses.dataclass(frozen=True)
class ItemFilter:
    """Products a search keeps: under `category` (a path prefix, whole segments: "Home > Kitchen" keeps
    "Home > Kitchen > Coffee", not "Home > Kitchenware"), with a known price within [price_min, price_max]
    when either bound is given. One object, two forms: a mask over table positions (`Retriever.filter_mask`,
    the FAISS path) and a Milvus expression (`towerrec.artifact.milvus.filter_expression`)."""

    category: str | None = None
    price_min: float | None = None
    price_max: float | None = None

    def __post_init__(self):
        category = category_key(self.category) if self.category is not None and self.category.strip() else None
        object.__setattr__(self, "category", category)  # normalised ('A>B ' -> 'A > B'); blank: none
        for name in ("price_min", "price_max"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(float(value)):
                raise ValueError(f"filters.{name} must be a finite number, got {value!r}")

    @property
    def priced(self) -> bool:
        return self.price_min is not None or self.price_max is not None

    @property
    def empty(self) -> bool:
        """No condition at all: every product passes."""
        return self.category is None and not self.priced
