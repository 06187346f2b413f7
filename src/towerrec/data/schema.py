"""Validated tables: the catalog (one row per product) and the interactions (one row per event).

Every loader ends by building these two objects, so everything downstream can rely on:
- `Catalog.items`: columns item_id (str, unique), title (str, non-empty), brand, category
  (a path "A > B > C"), description (str, may be empty), price (float, NaN if unknown), plus any
  extra attribute columns. Row position is the item's integer index used by every model.
- `Interactions.events`: columns user_id (str, already pseudonymized), item_id (str, in the catalog),
  timestamp (int64; a sequence position where the source has no clock), and optional rating/event.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Iterable

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

CATALOG_COLUMNS = ("item_id", "title", "brand", "category", "description", "price")
EVENT_COLUMNS = ("user_id", "item_id", "timestamp")
CATEGORY_SEP = " > "
QUOTE_CHARS = 80  # values quoted in error messages are cut to about this length
MAX_BAD_ROW_SHARE = 0.01  # skip mode refuses when a file loses a larger share of its rows


def category_key(category: str) -> str:
    """A category path normalised for matching ('A>B ' -> 'A > B')."""
    return CATEGORY_SEP.join(part.strip() for part in category.split(CATEGORY_SEP.strip()))


def category_path_prefixes(category: str | None) -> list[str]:
    """Every prefix of one normalised category path, shortest first ('A > B > C' -> 'A', 'A > B', 'A > B > C');
    [] for a missing or empty category."""
    if not category:
        return []
    parts = category_key(category).split(CATEGORY_SEP)
    return [CATEGORY_SEP.join(parts[: i + 1]) for i in range(len(parts))]


def category_prefixes(categories: Iterable[str | None]) -> frozenset[str]:
    """Every category path prefix present in a catalog ('A > B > C' gives 'A', 'A > B', 'A > B > C')."""
    return frozenset(p for c in set(categories) for p in category_path_prefixes(c))


class DataError(ValueError):
    """Bad input data. The message names the file and line (or the field) and says what is wrong."""


def where(path: object, line: int | None = None) -> str:
    """'file:line' prefix for error messages (lines are 1-based, as editors show them); Parquet has no
    lines, so its rows are 'file row N'."""
    if line is None:
        return f"{path}"
    return f"{path} row {line}" if str(path).endswith((".parquet", ".pq")) else f"{path}:{line}"


def quoted(value: object, limit: int = QUOTE_CHARS) -> str:
    """`repr(value)` for an error message, cut to about `limit` characters: a 10,000-character timestamp
    is shown as '2024-01-01xxx…' (10,000 characters), not in full."""
    text = repr(value)
    if len(text) <= limit:
        return text
    if isinstance(value, str):
        return f"{text[:limit - 2]}…{text[0]} ({len(value):,} characters)"
    return text[:limit - 1] + "…"


class BadRows:
    """Collects malformed rows: raises at once (policy 'error') or counts and reports them ('skip').

    In skip mode, `report` refuses (a `DataError`) when a file's skipped share passes `max_share`: one bad
    row must not turn into a silent loss of most of the data. A file's rows are those its reader kept plus
    those skipped while reading it (`rows_read`); rows dropped later (unknown items, bad timestamps) are
    among the kept ones, so they count against the same file.
    """

    def __init__(self, policy: str = "error", max_share: float = MAX_BAD_ROW_SHARE, max_examples: int = 5):
        if policy not in ("error", "skip"):
            raise DataError(f"data.on_bad_rows must be 'error' or 'skip', got {quoted(policy)}")
        if isinstance(max_share, bool) or not isinstance(max_share, (int, float)) or not 0 <= max_share <= 1:
            raise DataError(f"data.max_bad_row_share must be a number from 0 to 1, got {quoted(max_share)}")
        self.policy = policy
        self.max_share = float(max_share)
        self.max_examples = max_examples
        self.count = 0
        self.examples: list[str] = []
        self.skipped: Counter[str] = Counter()  # per file
        self.rows: dict[str, int] = {}  # per file: rows read, bad ones included
        self.first: dict[str, str] = {}  # per file: the first bad row's message

    def __call__(self, path: object, line: int | None, reason: str) -> None:
        message = f"{where(path, line)}: {reason}"
        if self.policy == "error":
            raise DataError(message + " (set data.on_bad_rows=skip to skip such rows)")
        self.count += 1
        self.skipped[str(path)] += 1
        self.first.setdefault(str(path), message)
        if len(self.examples) < self.max_examples:
            self.examples.append(message)

    def rows_read(self, path: object, kept: int) -> None:
        """A reader is done with `path` and kept `kept` rows; the rows it skipped were read too."""
        self.rows[str(path)] = kept + self.skipped[str(path)]

    def report(self) -> None:
        """Log the skipped rows, or raise if a file lost more than `max_share` of its rows."""
        over = []
        for file, n in self.skipped.items():
            rows = max(self.rows.get(file, 0), n)  # a file with no `rows_read`: its bad rows alone
            if n > self.max_share * rows:
                over.append((file, n, rows))
        if over:
            file, n, rows = over[0]
            also = "".join(f"; also {f}: {k:,} of {r:,} rows ({k / r:.1%})" for f, k, r in over[1:])
            raise DataError(
                f"{file}: {n:,} of {rows:,} rows ({n / rows:.1%}) are bad, more than data.max_bad_row_share="
                f"{self.max_share:g} lets skip mode drop (first: {self.first[file]}){also}; fix the data, or raise "
                "data.max_bad_row_share to accept the loss"
            )
        if self.count:
            log.warning("skipped %d bad rows, e.g.:\n  %s", self.count, "\n  ".join(self.examples))


@dataclasses.dataclass(frozen=True)
class Catalog:
    items: pd.DataFrame

    def __post_init__(self):
        df = self.items
        if len(df) == 0:
            raise DataError("the catalog is empty: no product has an id and a title")
        missing = [c for c in ("item_id", "title") if c not in df.columns]
        if missing:
            raise DataError(f"the catalog lacks required column(s) {missing}")
        df = df.reset_index(drop=True)
        for col in ("brand", "category", "description"):
            df[col] = df[col].fillna("").astype(str) if col in df.columns else ""
        df["price"] = pd.to_numeric(df["price"], errors="coerce") if "price" in df.columns else np.nan
        df["item_id"] = df["item_id"].astype(str)
        df["title"] = df["title"].fillna("").astype(str)
        dup = df["item_id"].duplicated()
        if dup.any():
            raise DataError(f"the catalog has duplicate item ids, e.g. {quoted(df.loc[dup, 'item_id'].iloc[0])}")
        empty = df["title"].str.strip() == ""
        if empty.any():
            example = quoted(df.loc[empty, "item_id"].iloc[0])
            raise DataError(f"the catalog has items with an empty title, e.g. {example}")
        ordered = list(CATALOG_COLUMNS) + [c for c in df.columns if c not in CATALOG_COLUMNS]
        object.__setattr__(self, "items", df[ordered])
        object.__setattr__(self, "_index", pd.Index(df["item_id"]))

    def __len__(self) -> int:
        return len(self.items)

    @property
    def item_ids(self) -> np.ndarray:
        return self.items["item_id"].to_numpy()

    @property
    def extra_columns(self) -> list[str]:
        return [c for c in self.items.columns if c not in CATALOG_COLUMNS]

    def index_of(self, item_ids: Iterable[str]) -> np.ndarray:
        """Integer indices of item ids; -1 for ids not in the catalog."""
        return self._index.get_indexer(list(item_ids))

    def top_category(self) -> np.ndarray:
        """First level of each item's category path ('' when unknown), for diversity metrics."""
        return self.items["category"].str.split(CATEGORY_SEP, n=1).str[0].to_numpy()


@dataclasses.dataclass(frozen=True)
class Interactions:
    events: pd.DataFrame

    def __post_init__(self):
        df = self.events
        missing = [c for c in EVENT_COLUMNS if c not in df.columns]
        if missing:
            raise DataError(f"the interactions lack required column(s) {missing}")
        df = df.reset_index(drop=True).copy()
        df["user_id"] = df["user_id"].astype(str)
        df["item_id"] = df["item_id"].astype(str)
        df["timestamp"] = pd.to_numeric(df["timestamp"], errors="raise").astype("int64")
        object.__setattr__(self, "events", df)

    def __len__(self) -> int:
        return len(self.events)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A catalog and its interactions; every interaction's item is in the catalog."""

    name: str
    catalog: Catalog
    interactions: Interactions

    def __post_init__(self):
        idx = self.catalog.index_of(self.interactions.events["item_id"])
        if (idx < 0).any():
            bad = self.interactions.events["item_id"][idx < 0].iloc[0]
            raise DataError(f"{self.name}: interaction with item {quoted(bad)}, which is not in the catalog")

    def fingerprint(self) -> str:
        """Short content hash of catalog ids/titles and events, recorded with every run and export."""
        import hashlib

        h = hashlib.blake2b(digest_size=8)
        h.update(pd.util.hash_pandas_object(self.catalog.items[["item_id", "title"]], index=False).to_numpy().tobytes())
        h.update(pd.util.hash_pandas_object(self.interactions.events[list(EVENT_COLUMNS)], index=False).to_numpy().tobytes())
        return h.hexdigest()
