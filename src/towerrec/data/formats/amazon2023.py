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
from towerrec.data.schema import CATALOG_COLUMNS, BadRows, DataError, Dataset


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
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value == int(value) else None
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


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
            bad(path, line, f"item {item_id!r} has an empty title")
        elif item_id in seen:
            bad(path, line, f"duplicate item id {item_id!r}")
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
    columns = list(CATALOG_COLUMNS) + ["features", *PROVENANCE]
    return pd.DataFrame.from_records(records, columns=columns)


def _amazon_reviews(path: Path, known: set[str], bad: BadRows) -> pd.DataFrame:
    users, items, times, ratings = [], [], [], []
    for line, obj in read_jsonl(path, bad):
        user, item = _scalar_id(obj.get("user_id")), _scalar_id(obj.get("parent_asin"))
        ts = _scalar_int(obj.get("timestamp"))
        rating = obj.get("rating")
        if not user:
            bad(path, line, "missing user id")
        elif not item:
            bad(path, line, "missing item id (parent_asin)")
        elif item not in known:
            bad(path, line, f"unknown item {item!r} (not in the meta file)")
        elif ts is None:
            bad(path, line, f"timestamp {obj.get('timestamp')!r} is not an integer (milliseconds)")
        elif rating is not None and (isinstance(rating, bool) or not isinstance(rating, (int, float))):
            bad(path, line, f"rating {rating!r} is not a number")
        else:
            users.append(user)
            items.append(item)
            times.append(ts)
            ratings.append(math.nan if rating is None else float(rating))
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
) -> Dataset:
    """Amazon Reviews 2023 JSONL (plain or gzip): reviews (user_id, parent_asin, rating, timestamp in
    ms) and item meta (parent_asin, title, features, description, categories, store, price).

    A review of an item missing from the meta file is a bad row (file:line).
    """
    bad = check_options(on_bad_rows, max_text_chars)
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
