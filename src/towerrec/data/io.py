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
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from towerrec.data.privacy import pseudonymize
from towerrec.data.schema import (
    CATEGORY_SEP,
    MAX_BAD_ROW_SHARE,
    BadRows,
    Catalog,
    DataError,
    Dataset,
    Interactions,
    quoted,
    where,
)

log = logging.getLogger(__name__)

_GZIP_MAGIC = b"\x1f\x8b"
_PRICE_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_INT64_LIMIT = 2.0**63  # timestamps must be smaller in magnitude
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


def frame(rows: list[list[str]], columns: list[str], path: Path, lines: list[int]) -> pd.DataFrame:
    """String rows as a DataFrame with provenance columns (`path`, the line of each row)."""
    df = pd.DataFrame(rows, columns=columns, dtype=object) if rows else pd.DataFrame(columns=columns, dtype=object)
    df["_file"] = str(path)
    df["_line"] = np.asarray(lines, dtype=np.int64)
    return df


def _read_csv(path: Path, bad: BadRows, delimiter: str) -> pd.DataFrame:
    """CSV/TSV with a header line; each record's line is the line it starts on.

    A quote that never closes would make the rest of the file one field: that is a bad row at the line
    where the field opens, and the lines after that one are parsed again, so skip mode loses that row alone.
    """
    # A long description must be truncated later, not rejected by the csv module's 128 KiB default.
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))
    source = read_lines(path, bad, keep_ends=True)
    again: deque[tuple[int, str]] = deque()  # lines after an unterminated quote, to parse again
    taken: list[tuple[int, str]] = []  # (number, text) of the lines of the record being parsed
    at_end = False  # the parser asked for a line past the end of the file

    def text_lines() -> Iterator[str]:
        nonlocal at_end
        while (line := again.popleft() if again else next(source, None)) is not None:
            taken.append(line)
            yield line[1]
        at_end = True

    def records() -> Iterator[list[str]]:
        """The non-blank records, the header first, each with its lines in `taken`; bad ones are reported."""
        nonlocal at_end
        reader = csv.reader(text_lines(), delimiter=delimiter)
        in_header = True
        while True:
            taken.clear()
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                line, problem = (taken[0][0] if taken else None), f"malformed CSV ({e})"
            else:
                if not at_end:
                    if len(record) > 1 or (record and record[0].strip()):
                        in_header = False
                        yield record
                    continue
                # The file ended inside a quoted field (the record's last): it opened on the line from
                # which the field holds as many line breaks as there are lines left.
                last, text = taken[-1]
                line = max(taken[0][0], last - record[-1].count("\n") + text.endswith("\n"))
                problem = (f"unterminated quote: field {len(record)} opens with a quote that never closes, "
                           f"so lines {line}-{last} (the rest of the file) would be one field")
                again.extend(t for t in taken if t[0] > line)
                at_end = False
                reader = csv.reader(text_lines(), delimiter=delimiter)
            if in_header:
                raise DataError(f"{where(path, line)}: {problem} (in the header line)")
            bad(path, line, problem)

    parsed = records()
    header = next(parsed, None)
    if header is None:
        raise DataError(f"{path}: the file is empty (expected a header line)")
    header = [h.strip() for h in header]
    if len(set(header)) != len(header) or "" in header:
        raise DataError(f"{path}:1: the header has empty or duplicate column names: {quoted(header, 200)}")
    rows, numbers = [], []
    for record in parsed:
        first, last = taken[0][0], taken[-1][0]
        if len(record) != len(header):
            held = f" (a quoted field makes lines {first}-{last} one record: is a quote unterminated?)"
            bad(path, first, f"expected {len(header)} fields, found {len(record)}" + (held if last > first else ""))
            continue
        rows.append(record)
        numbers.append(first)
    bad.rows_read(path, len(rows))
    return frame(rows, header, path, numbers)


def _read_parquet(path: Path, bad: BadRows) -> pd.DataFrame:
    require_file(path)
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types; all mean "not a readable Parquet file"
        raise DataError(f"{path}: cannot read the Parquet file ({type(e).__name__}: {e})") from None
    df = df.reset_index(drop=True)
    df["_file"] = str(path)
    df["_line"] = np.arange(1, len(df) + 1, dtype=np.int64)
    undecodable = pd.Series(False, index=df.index)
    for col in df.columns[df.dtypes == object]:  # binary columns: bytes to text, as CSV lines are
        decoded = df[col].map(lambda v: _utf8(v) if isinstance(v, bytes) else v)
        failed = decoded.isna() & df[col].notna()
        for line in df.loc[failed & ~undecodable, "_line"]:  # each row reported once
            bad(path, int(line), f"column {quoted(col)} is not valid UTF-8")
        undecodable |= failed
        df[col] = decoded
    df = df[~undecodable]
    bad.rows_read(path, len(df))
    return df


def _utf8(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def read_table(path: Path, bad: BadRows) -> pd.DataFrame:
    """A CSV, TSV (either optionally gzip) or Parquet file, chosen by extension."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    if ext in (".parquet", ".pq"):
        return _read_parquet(path, bad)
    if ext == ".csv":
        return _read_csv(path, bad, ",")
    if ext == ".tsv":
        return _read_csv(path, bad, "\t")
    raise DataError(f"{path}: unsupported table format {quoted(ext or '(no extension)')}; use .csv, .tsv or .parquet")


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
        bad(file, int(line), why)
    return df[~failing]


def blank(series: pd.Series) -> pd.Series:
    """True where a value is missing or only whitespace."""
    return series.isna() | (series.astype(str).str.strip() == "")


def as_id(series: pd.Series) -> pd.Series:
    """Ids as strings; integral floats (Parquet ints with nulls) lose their '.0'."""
    if pd.api.types.is_float_dtype(series):
        out = series.astype(object)
        ok = (series.abs() < _INT64_LIMIT) & (series == np.floor(series))  # not NaN, inf or past int64
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


def _timestamps(series: pd.Series) -> tuple[pd.Series, pd.Series, pd.Series]:
    """(int64-valued timestamps, invalid mask, out-of-range mask) from numbers or ISO-8601 datetimes.

    A column of mostly numbers is numeric: integers are kept as is, fractional numbers become
    milliseconds (x1000, rounded) so no order is lost; infinite ones, and ones an int64 cannot hold,
    are out of range. Otherwise values are ISO datetimes, converted to epoch milliseconds (UTC; naive
    times are taken as UTC). Values of the other kind, and missing ones, are marked invalid.
    """
    if pd.api.types.is_datetime64_any_dtype(series):
        dt = pd.to_datetime(series, utc=True)
        return _epoch_ms(dt), dt.isna(), pd.Series(False, index=series.index)
    missing = blank(series)
    numeric = pd.to_numeric(series.where(~missing, None), errors="coerce")
    if 2 * numeric.notna().sum() >= (~missing).sum():  # mostly numbers: the rest are bad rows
        fits = numeric.abs() < _INT64_LIMIT  # False for NaN
        if not (numeric[fits] == np.floor(numeric[fits])).all():
            log.info("fractional timestamps: converted to milliseconds to keep their order")
            numeric = (numeric * 1000).round()
            fits &= numeric.abs() < _INT64_LIMIT
        return numeric, numeric.isna(), numeric.notna() & ~fits
    dt = pd.to_datetime(series.where(~missing, None), errors="coerce", utc=True, format="ISO8601")
    return _epoch_ms(dt), dt.isna(), pd.Series(False, index=series.index)


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


def check_options(on_bad_rows: str, max_text_chars: int, max_bad_row_share: float = MAX_BAD_ROW_SHARE) -> BadRows:
    """Validate the shared loader options; returns the `BadRows` collector for `on_bad_rows`."""
    if isinstance(max_text_chars, bool) or not isinstance(max_text_chars, (int, np.integer)) or max_text_chars < 1:
        raise DataError(f"data.max_text_chars must be a positive integer, got {quoted(max_text_chars)}")
    return BadRows(on_bad_rows, max_bad_row_share)


def validate_items(items: pd.DataFrame, bad: BadRows, titles: bool = True) -> pd.DataFrame:
    """Drop (reporting file:line) items without an id, repeating an earlier id, or with an empty title."""
    checks = [
        (blank(items["item_id"]), "missing item id"),
        (items["item_id"].duplicated(), lambda d: [f"duplicate item id {quoted(i)}" for i in d["item_id"]]),
    ]
    if titles:
        checks.append((blank(items["title"]), lambda d: [f"item {quoted(i)} has an empty title" for i in d["item_id"]]))
    return _drop_bad_rows(items, checks, bad)


def validate_events(events: pd.DataFrame, known_items: pd.Index, bad: BadRows) -> pd.DataFrame:
    """Drop (reporting file:line) events without a user or item, with an unknown item or a bad time."""
    checks = [
        (blank(events["user_id"]), "missing user id"),
        (blank(events["item_id"]), "missing item id"),
        (
            ~events["item_id"].isin(known_items),
            lambda d: [f"unknown item {quoted(i)} (not in the catalog)" for i in d["item_id"]],
        ),
    ]
    raw = events

    def quoting(col: str, message: str) -> Callable:  # reasons quote the values as read
        return lambda d: [f"{col} {quoted(v)} {message}" for v in raw.loc[d.index, col]]

    ts, unreadable, out_of_range = _timestamps(raw["timestamp"])
    checks.append((unreadable, quoting("timestamp", "is not a number or an ISO datetime")))
    checks.append((out_of_range, quoting("timestamp", "is out of range (not a finite 64-bit integer)")))
    events = events.assign(timestamp=ts)
    if "rating" in events.columns:
        rating = pd.to_numeric(raw["rating"].where(~blank(raw["rating"]), None), errors="coerce")
        not_finite = ~np.isfinite(rating.astype(float)) & ~blank(raw["rating"])
        checks.append((not_finite, quoting("rating", "is not a finite number")))
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
