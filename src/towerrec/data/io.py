"""Low-level reading and cleaning shared by every format: files to string frames, column parsers,
row validation and the final `Dataset`.

Files are read in binary and decoded line by line, so an invalid UTF-8 byte is reported with its
line; gzip is detected by its magic bytes. Lines are 1-based; a TSV/CSV header is line 1, the first
JSON line is line 1; Parquet rows are reported as "file row N". A missing file or an empty catalog
is a one-sentence `DataError`, never a raw OSError or pandas traceback.
"""

from __future__ import annotations

import ast
import csv
import gzip
import html
import json
import logging
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from towerrec.data.privacy import pseudonymize
from towerrec.data.schema import CATEGORY_SEP, BadRows, Catalog, DataError, Dataset, Interactions

log = logging.getLogger(__name__)

_GZIP_MAGIC = b"\x1f\x8b"
_PRICE_NUMBER = re.compile(r"\d+(?:\.\d+)?")
EVENT_OPTIONAL = ("rating", "event")
PROVENANCE = ("_file", "_line")  # bookkeeping columns: where each row came from

# ----------------------------------------------------------------------------------------------
# Reading files
# ----------------------------------------------------------------------------------------------


def require_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: is not a regular file")


def read_lines(path: Path, bad: BadRows, keep_ends: bool = False) -> Iterator[tuple[int, str]]:
    """(1-based line number, decoded text) of a plain or gzip file; invalid UTF-8 lines go to `bad`."""
    require_file(path)
    with open(path, "rb") as probe:
        compressed = probe.read(2) == _GZIP_MAGIC
    try:
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as f:
            for number, raw in enumerate(f, start=1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    bad(path, number, f"invalid UTF-8 byte {raw[e.start]:#04x} at column {e.start + 1}")
                    continue
                if number == 1:
                    text = text.removeprefix("\ufeff")
                yield number, (text if keep_ends else text.rstrip("\r\n"))
    except (OSError, EOFError) as e:  # truncated or corrupt gzip, unreadable file
        raise DataError(f"{path}: cannot read the file ({e})") from None


def _flag(bad: BadRows, file: str, line: int, reason: str) -> None:
    """Report a bad row; Parquet has no lines, so its rows are named 'file row N'."""
    if file.endswith((".parquet", ".pq")):
        bad(f"{file} row {line}", None, reason)
    else:
        bad(file, int(line), reason)


def frame(rows: list[list[str]], columns: list[str], path: Path, lines: list[int]) -> pd.DataFrame:
    """String rows as a DataFrame with provenance columns (`path`, the line of each row)."""
    df = pd.DataFrame(rows, columns=columns, dtype=object) if rows else pd.DataFrame(columns=columns, dtype=object)
    df["_file"] = str(path)
    df["_line"] = np.asarray(lines, dtype=np.int64)
    return df


def _read_csv(path: Path, bad: BadRows, delimiter: str) -> pd.DataFrame:
    """CSV/TSV with a header line; each record's line is the line it starts on."""
    # A long description must be truncated later, not rejected by the csv module's 128 KiB default.
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))
    started: list[int] = []

    def text_lines() -> Iterator[str]:
        for number, text in read_lines(path, bad, keep_ends=True):
            started.append(number)
            yield text

    reader = csv.reader(text_lines(), delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: the file is empty (expected a header line)")
        header = [h.strip() for h in header]
        if len(set(header)) != len(header) or "" in header:
            raise DataError(f"{path}:1: the header has empty or duplicate column names: {header}")
        rows, numbers = [], []
        while True:
            started.clear()
            try:
                record = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                bad(path, started[0] if started else None, f"malformed CSV ({e})")
                continue
            if not record or (len(record) == 1 and not record[0].strip()):
                continue  # blank line
            if len(record) != len(header):
                bad(path, started[0], f"expected {len(header)} fields, found {len(record)}")
                continue
            rows.append(record)
            numbers.append(started[0])
    except csv.Error as e:
        raise DataError(f"{path}: malformed CSV ({e})") from None
    return frame(rows, header, path, numbers)


def _read_parquet(path: Path) -> pd.DataFrame:
    require_file(path)
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types; all mean "not a readable Parquet file"
        raise DataError(f"{path}: cannot read the Parquet file ({type(e).__name__}: {e})") from None
    df = df.reset_index(drop=True)
    df["_file"] = str(path)
    df["_line"] = np.arange(1, len(df) + 1, dtype=np.int64)
    return df


def read_table(path: Path, bad: BadRows) -> pd.DataFrame:
    """A CSV, TSV (either optionally gzip) or Parquet file, chosen by extension."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    if ext in (".parquet", ".pq"):
        return _read_parquet(path)
    if ext == ".csv":
        return _read_csv(path, bad, ",")
    if ext == ".tsv":
        return _read_csv(path, bad, "\t")
    raise DataError(f"{path}: unsupported table format {ext or '(no extension)'!r}; use .csv, .tsv or .parquet")


def read_jsonl(path: Path, bad: BadRows) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; bad JSON and non-objects go to `bad`."""
    for number, text in read_lines(path, bad):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            bad(path, number, f"invalid JSON ({e.msg} at column {e.colno})")
            continue
        if not isinstance(obj, dict):
            bad(path, number, f"expected a JSON object, found {type(obj).__name__}")
            continue
        yield number, obj


def dataset_name(path: Path) -> str:
    """The default dataset name: the file name without its data extensions."""
    base = path.name
    for ext in (".gz", ".jsonl", ".json", ".csv", ".tsv", ".parquet", ".pq"):
        base = base.removesuffix(ext)
    return base or path.name


# ----------------------------------------------------------------------------------------------
# Cleaning helpers (vectorised over columns)
# ----------------------------------------------------------------------------------------------


def _drop_bad_rows(df: pd.DataFrame, checks: list[tuple[pd.Series, str | Callable]], bad: BadRows) -> pd.DataFrame:
    """Report rows failing any check, in file order, and drop them.

    checks: (mask, reason) pairs; reason is a string or a function of the failing rows returning
    one reason per row. A row is reported once, with the first check it fails.
    """
    reason = pd.Series(None, index=df.index, dtype=object)
    for mask, why in checks:
        mask = mask.fillna(True).astype(bool) & reason.isna()
        if mask.any():
            reason[mask] = list(why(df[mask])) if callable(why) else why
    failing = reason.notna().to_numpy()
    if not failing.any():
        return df
    for file, line, why in zip(df["_file"][failing], df["_line"][failing], reason[failing]):
        _flag(bad, file, line, why)
    return df[~failing]


def blank(series: pd.Series) -> pd.Series:
    """True where a value is missing or only whitespace."""
    return series.isna() | (series.astype(str).str.strip() == "")


def as_id(series: pd.Series) -> pd.Series:
    """Ids as strings; integral floats (Parquet ints with nulls) lose their '.0'."""
    if pd.api.types.is_float_dtype(series):
        out = series.astype(object)
        ok = series.notna() & (series == np.floor(series))
        out[ok] = series[ok].astype(np.int64).astype(str)
        return out.where(series.notna(), None)
    return series.where(series.isna(), series.astype(str).str.strip())


def unescape(series: pd.Series) -> pd.Series:
    """HTML entities ('&amp;', '&#39;') to characters, stripped; missing values become ''."""
    s = series.fillna("").astype(str)
    return s.map(lambda x: html.unescape(x).strip() if "&" in x else x.strip()).astype(object)


def parse_price(value: object) -> float:
    """12.99, '12.99', '$1,299.00', '$10 - $20' (first number), None/'None'/'' -> NaN."""
    if value is None or isinstance(value, bool):
        return math.nan
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    if isinstance(value, str):
        m = _PRICE_NUMBER.search(value.replace(",", ""))
        return float(m.group()) if m else math.nan
    return math.nan


def price_column(series: pd.Series) -> pd.Series:
    """`parse_price` over a column, with a fast path for values that are already numbers."""
    numeric = pd.to_numeric(series, errors="coerce")
    rest = numeric.isna() & series.notna()
    if rest.any():
        numeric[rest] = [parse_price(v) for v in series[rest]]
    return numeric.astype(float)


def category_path(value: object) -> str:
    """A category path 'A > B': lists are joined; a quoted list "'A', 'B'" (RecBole) is parsed."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (list, tuple, np.ndarray)):
        return CATEGORY_SEP.join(str(v).strip() for v in value if str(v).strip())
    text = str(value).strip()
    if text[:1] in ("'", '"'):
        try:
            parts = ast.literal_eval(f"[{text}]")
        except (ValueError, SyntaxError):
            return text
        flat = [p for p in parts if isinstance(p, str)]
        if len(flat) == len(parts):
            return CATEGORY_SEP.join(p.strip() for p in flat if p.strip())
    return text


def _timestamps(series: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(int64-valued timestamps, invalid mask) from numbers or ISO-8601 datetimes.

    A column of mostly numbers is numeric: integers are kept as is, fractional numbers become
    milliseconds (x1000, rounded) so no order is lost. Otherwise values are ISO datetimes,
    converted to epoch milliseconds (UTC; naive times are taken as UTC). Values of the other kind,
    and missing ones, are marked invalid.
    """
    if pd.api.types.is_datetime64_any_dtype(series):
        dt = pd.to_datetime(series, utc=True)
        return _epoch_ms(dt), dt.isna()
    missing = blank(series)
    numeric = pd.to_numeric(series.where(~missing, None), errors="coerce")
    if 2 * numeric.notna().sum() >= (~missing).sum():  # mostly numbers: the rest are bad rows
        finite = numeric.notna()
        if (numeric[finite] == np.floor(numeric[finite])).all():
            return numeric, ~finite
        log.info("fractional timestamps: converted to milliseconds to keep their order")
        return (numeric * 1000).round(), ~finite
    dt = pd.to_datetime(series.where(~missing, None), errors="coerce", utc=True, format="ISO8601")
    return _epoch_ms(dt), dt.isna()


def _epoch_ms(dt: pd.Series) -> pd.Series:
    ms = (dt - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)
    return ms.astype("Float64").astype(float)


def _truncate_text(items: pd.DataFrame, max_chars: int, source: str) -> pd.DataFrame:
    """Cut every text column (not item_id) to `max_chars`, logging one count per column."""
    items = items.copy()
    for col in items.columns:
        s = items[col]
        if col == "item_id" or not (pd.api.types.is_object_dtype(s) or pd.api.types.is_string_dtype(s)):
            continue
        lengths = s.map(lambda v: len(v) if isinstance(v, str) else 0)
        long = lengths > max_chars
        if long.any():
            items.loc[long, col] = s[long].str.slice(0, max_chars)
            log.warning(
                "%s: truncated %d %s value(s) longer than %d characters (data.max_text_chars)",
                source, int(long.sum()), col, max_chars,
            )
    return items


# ----------------------------------------------------------------------------------------------
# Validation and the final Dataset
# ----------------------------------------------------------------------------------------------


def check_options(on_bad_rows: str, max_text_chars: int) -> BadRows:
    """Validate the shared loader options; returns the `BadRows` collector for `on_bad_rows`."""
    if isinstance(max_text_chars, bool) or not isinstance(max_text_chars, (int, np.integer)) or max_text_chars < 1:
        raise DataError(f"data.max_text_chars must be a positive integer, got {max_text_chars!r}")
    return BadRows(on_bad_rows)


def validate_items(items: pd.DataFrame, bad: BadRows, titles: bool = True) -> pd.DataFrame:
    """Drop (reporting file:line) items without an id, repeating an earlier id, or with an empty title."""
    checks = [
        (blank(items["item_id"]), "missing item id"),
        (items["item_id"].duplicated(), lambda d: [f"duplicate item id {i!r}" for i in d["item_id"]]),
    ]
    if titles:
        checks.append((blank(items["title"]), lambda d: [f"item {i!r} has an empty title" for i in d["item_id"]]))
    return _drop_bad_rows(items, checks, bad)


def validate_events(events: pd.DataFrame, known_items: pd.Index, bad: BadRows) -> pd.DataFrame:
    """Drop (reporting file:line) events without a user or item, with an unknown item or a bad time."""
    checks = [
        (blank(events["user_id"]), "missing user id"),
        (blank(events["item_id"]), "missing item id"),
        (
            ~events["item_id"].isin(known_items),
            lambda d: [f"unknown item {i!r} (not in the catalog)" for i in d["item_id"]],
        ),
    ]
    raw = events

    def quoting(col: str, message: str) -> Callable:  # reasons quote the values as read
        return lambda d: [f"{col} {v!r} {message}" for v in raw.loc[d.index, col]]

    ts, ts_bad = _timestamps(raw["timestamp"])
    checks.append((ts_bad, quoting("timestamp", "is not a number or an ISO datetime")))
    events = events.assign(timestamp=ts)
    if "rating" in events.columns:
        rating = pd.to_numeric(raw["rating"].where(~blank(raw["rating"]), None), errors="coerce")
        checks.append((rating.isna() & ~blank(raw["rating"]), quoting("rating", "is not a number")))
        events = events.assign(rating=rating)
    return _drop_bad_rows(events, checks, bad)


def finish(
    name: str,
    items: pd.DataFrame,
    events: pd.DataFrame,
    *,
    bad: BadRows,
    secret: str | None,
    max_text_chars: int,
    catalog_source: str,
    events_source: str,
) -> Dataset:
    """Truncate texts, pseudonymize users, build and validate the Dataset, report skipped rows."""
    items = items.drop(columns=[c for c in PROVENANCE if c in items.columns])
    events = events.drop(columns=[c for c in PROVENANCE if c in events.columns])
    bad.report()
    if len(items) == 0:
        raise DataError(f"{catalog_source}: the catalog is empty (no product with an id and a title)")
    if len(events) == 0:
        raise DataError(f"{events_source}: no interactions (the file has no valid rows)")
    items = _truncate_text(items, max_text_chars, catalog_source)
    events = events.assign(
        user_id=pseudonymize(events["user_id"], secret), timestamp=events["timestamp"].astype(np.int64)
    )
    dataset = Dataset(name, Catalog(items), Interactions(events.reset_index(drop=True)))
    log.info(
        "loaded %s: %d items, %d users, %d interactions",
        name, len(dataset.catalog), dataset.interactions.events["user_id"].nunique(), len(dataset.interactions),
    )
    return dataset
