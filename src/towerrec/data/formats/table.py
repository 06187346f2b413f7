"""CSV/TSV/Parquet tables: `load_table`, with `data.columns` mapping our field names to the files' columns."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from towerrec.data.io import (
    EVENT_OPTIONAL,
    PROVENANCE,
    as_id,
    category_path,
    check_options,
    dataset_name,
    finish,
    price_column,
    read_table,
    require_file,
    unescape,
    validate_events,
    validate_items,
)
from towerrec.data.schema import CATALOG_COLUMNS, MAX_BAD_ROW_SHARE, DataError, Dataset, quoted

_TABLE_ITEM_FIELDS = CATALOG_COLUMNS
_TABLE_EVENT_FIELDS = ("user_id", "item_id", "timestamp", *EVENT_OPTIONAL)
TABLE_FIELDS = tuple(dict.fromkeys(_TABLE_ITEM_FIELDS + _TABLE_EVENT_FIELDS))


def _pick_columns(
    df: pd.DataFrame, path: Path, columns: Mapping[str, str], fields: tuple[str, ...], required: tuple[str, ...]
) -> tuple[pd.DataFrame, list[str]]:
    """Rename source columns to our field names (mapped name first, else the field's own name)."""
    present = [c for c in df.columns if c not in PROVENANCE]
    chosen: dict[str, str] = {}
    for field in fields:
        source = columns.get(field, field)
        if source in present:
            chosen[field] = source
        elif field in present and field not in columns.values():
            chosen[field] = field
        elif field in required:
            hint = f"column {quoted(source)}" + (f" (mapped from data.columns.{field})" if field in columns else "")
            raise DataError(
                f"{path}: no {hint} for the required field {field!r}; the file has columns {quoted(present, 200)} "
                f"(set data.columns.{field} to the right column name)"
            )
    out = pd.DataFrame({field: df[source] for field, source in chosen.items()}, index=df.index)
    extras = [c for c in present if c not in chosen.values() and c not in chosen]
    for col in list(PROVENANCE):
        out[col] = df[col]
    return out, extras


def load_table(
    catalog_path: str | Path,
    interactions_path: str | Path,
    columns: Mapping[str, str] | None = None,
    *,
    name: str | None = None,
    on_bad_rows: str = "error",
    user_id_secret: str | None = None,
    max_text_chars: int = 2000,
    max_bad_row_share: float = MAX_BAD_ROW_SHARE,
) -> Dataset:
    """A catalog table and an interactions table, CSV/TSV (optionally gzip) or Parquet by extension.

    `columns` maps our field names to the files' column names, e.g. {"item_id": "sku", "title":
    "name", "user_id": "customer", "timestamp": "ts"}; unmapped fields use their own name. Other
    catalog columns are kept as extra attributes; interactions keep only user_id, item_id,
    timestamp, rating and event. Timestamps are integers (kept), fractional numbers or ISO-8601
    datetimes (both become epoch milliseconds).
    """
    bad = check_options(on_bad_rows, max_text_chars, max_bad_row_share)
    columns = dict(columns or {})
    unknown = sorted(set(columns) - set(TABLE_FIELDS))
    if unknown:
        raise DataError(f"data.columns: unknown field(s) {quoted(unknown)}; the fields are {list(TABLE_FIELDS)}")
    not_names = [k for k, v in columns.items() if not isinstance(v, str) or not v]
    if not_names:
        raise DataError(f"data.columns: field(s) {not_names} must map to a column name (a non-empty string)")
    catalog_path, interactions_path = Path(catalog_path).expanduser(), Path(interactions_path).expanduser()
    require_file(interactions_path)

    raw_items = read_table(catalog_path, bad)
    items, extras = _pick_columns(raw_items, catalog_path, columns, _TABLE_ITEM_FIELDS, ("item_id", "title"))
    for col in extras:
        items[col] = raw_items[col]
    items["item_id"] = as_id(items["item_id"])
    for col in ("title", "brand", "description"):
        if col in items.columns:
            items[col] = unescape(items[col])
    if "category" in items.columns:
        items["category"] = unescape(pd.Series([category_path(v) for v in items["category"]], index=items.index))
    if "price" in items.columns:
        items["price"] = price_column(items["price"])
    items = validate_items(items, bad)
    if len(items) == 0:
        raise DataError(f"{catalog_path}: the catalog is empty (no product with an id and a title)")

    raw_events = read_table(interactions_path, bad)
    required = ("user_id", "item_id", "timestamp")
    events, _ = _pick_columns(raw_events, interactions_path, columns, _TABLE_EVENT_FIELDS, required)
    events = events.assign(user_id=as_id(events["user_id"]), item_id=as_id(events["item_id"]))
    events = validate_events(events, pd.Index(items["item_id"]), bad)
    return finish(
        name or dataset_name(interactions_path), items, events, bad=bad, secret=user_id_secret,
        max_text_chars=max_text_chars, catalog_source=str(catalog_path), events_source=str(interactions_path),
    )
