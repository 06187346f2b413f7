"""Amazon Reviews 2023 JSONL: `load_amazon2023`, reviews joined to the item meta file."""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np
import pandas as pd

from towerrec.data.io import (
    PROVENANCE,
    category_path,
    check_options,
    dataset_name,
    finish,
    parse_price,
    read_jsonl,
    require_file,
)
from towerrec.data.schema import CATALOG_COLUMNS, MAX_BAD_ROW_SHARE, BadRows, DataError, Dataset, quoted


def _join_text(value: object, sep: str) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return sep.join(str(v).strip() for v in value if v is not None and str(v).strip())
    return str(value).strip()


def _scalar_id(value: object) -> str:
    if value is None or isinstance(value, (bool, dict, list)):
        return ""
    return str(value).strip()


def _scalar_int(value: object) -> int | None:
    """An integer an int64 can hold, from an int, an integral float or a string of digits; else None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float):
        value = int(value) if math.isfinite(value) and value == int(value) else None
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value.strip())
    return value if isinstance(value, int) and -(2**63) <= value < 2**63 else None


def _scalar_float(value: object) -> float | None:
    """A finite float from an int or a float (not a bool); else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        return None
    return number if math.isfinite(number) else None


def _amazon_meta(path: Path, bad: BadRows) -> pd.DataFrame:
    records: list[tuple] = []
    seen: set[str] = set()
    for line, obj in read_jsonl(path, bad):
        item_id = _scalar_id(obj.get("parent_asin"))
        title = obj.get("title")
        title = html.unescape(str(title)).strip() if isinstance(title, (str, int, float)) and title is not None else ""
        if not item_id:
            bad(path, line, "missing item id (parent_asin)")
        elif not title:
            bad(path, line, f"item {quoted(item_id)} has an empty title")
        elif item_id in seen:
            bad(path, line, f"duplicate item id {quoted(item_id)}")
        else:
            seen.add(item_id)
            categories = obj.get("categories")
            category = category_path(categories) if isinstance(categories, list) and categories else ""
            records.append((
                item_id,
                title,
                html.unescape(_scalar_id(obj.get("store"))),
                category or _scalar_id(obj.get("main_category")),
                html.unescape(_join_text(obj.get("description"), " ")),
                parse_price(obj.get("price")),
                html.unescape(_join_text(obj.get("features"), " ")),
                str(path),
                line,
            ))
    bad.rows_read(path, len(records))
    columns = list(CATALOG_COLUMNS) + ["features", *PROVENANCE]
    return pd.DataFrame.from_records(records, columns=columns)


def _amazon_reviews(path: Path, known: set[str], bad: BadRows) -> pd.DataFrame:
    users, items, times, ratings = [], [], [], []
    for line, obj in read_jsonl(path, bad):
        user, item = _scalar_id(obj.get("user_id")), _scalar_id(obj.get("parent_asin"))
        ts = _scalar_int(obj.get("timestamp"))
        rating, score = obj.get("rating"), _scalar_float(obj.get("rating"))
        if not user:
            bad(path, line, "missing user id")
        elif not item:
            bad(path, line, "missing item id (parent_asin)")
        elif item not in known:
            bad(path, line, f"unknown item {quoted(item)} (not in the meta file)")
        elif ts is None:
            bad(path, line, f"timestamp {quoted(obj.get('timestamp'))} is not a 64-bit integer (milliseconds)")
        elif rating is not None and score is None:
            bad(path, line, f"rating {quoted(rating)} is not a finite number")
        else:
            users.append(user)
            items.append(item)
            times.append(ts)
            ratings.append(math.nan if score is None else score)
    bad.rows_read(path, len(users))
    return pd.DataFrame(
        {
            "user_id": pd.Series(users, dtype=object),
            "item_id": pd.Series(items, dtype=object),
            "timestamp": np.asarray(times, dtype=np.int64),
            "rating": np.asarray(ratings, dtype=float),
        }
    )


def load_amazon2023(
    reviews_path: str | Path,
    meta_path: str | Path,
    *,
    name: str | None = None,
    on_bad_rows: str = "error",
    user_id_secret: str | None = None,
    max_text_chars: int = 2000,
    max_bad_row_share: float = MAX_BAD_ROW_SHARE,
) -> Dataset:
    """Amazon Reviews 2023 JSONL (plain or gzip): reviews (user_id, parent_asin, rating, timestamp in
    ms) and item meta (parent_asin, title, features, description, categories, store, price).

    A review of an item missing from the meta file is a bad row (file:line).
    """
    bad = check_options(on_bad_rows, max_text_chars, max_bad_row_share)
    reviews_path, meta_path = Path(reviews_path).expanduser(), Path(meta_path).expanduser()
    require_file(reviews_path)
    items = _amazon_meta(meta_path, bad)
    if len(items) == 0:
        raise DataError(f"{meta_path}: the catalog is empty (no product with a parent_asin and a title)")
    events = _amazon_reviews(reviews_path, set(items["item_id"]), bad)
    return finish(
        name or dataset_name(reviews_path), items, events, bad=bad, secret=user_id_secret,
        max_text_chars=max_text_chars, catalog_source=str(meta_path), events_source=str(reviews_path),
    )
