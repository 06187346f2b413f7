"""Dataset loaders: RecBole atomic files, Amazon Reviews 2023 JSONL, and CSV/Parquet tables.

Every loader returns a validated `Dataset` and shares three options:
- `on_bad_rows`: 'error' raises a `DataError` naming file:line at the first bad row; 'skip' drops
  bad rows, counts them in a `BadRows` and logs a summary. Lines are 1-based; a TSV/CSV header is
  line 1, the first JSON line is line 1; Parquet rows are reported as "file row N".
- `user_id_secret`: key for `pseudonymize`; raw user ids never leave this module.
- `max_text_chars`: longer catalog texts (titles, descriptions, ...) are cut, with one counted warning.

Files are read in binary and decoded line by line, so an invalid UTF-8 byte is reported with its
line; gzip is detected by its magic bytes. A missing file or an empty catalog is a one-sentence
`DataError`, never a raw OSError or pandas traceback.
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
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from towerrec.data.privacy import pseudonymize
from towerrec.data.schema import (
    CATALOG_COLUMNS,
    CATEGORY_SEP,
    BadRows,
    Catalog,
    DataError,
    Dataset,
    Interactions,
    where,
)

log = logging.getLogger(__name__)

_GZIP_MAGIC = b"\x1f\x8b"
_PRICE_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_EVENT_OPTIONAL = ("rating", "event")
_PROVENANCE = ("_file", "_line")  # bookkeeping columns: where each row came from

# ----------------------------------------------------------------------------------------------
# Reading files
# ----------------------------------------------------------------------------------------------


def _require_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: is not a regular file")


def _read_lines(path: Path, bad: BadRows, keep_ends: bool = False) -> Iterator[tuple[int, str]]:
    """(1-based line number, decoded text) of a plain or gzip file; invalid UTF-8 lines go to `bad`."""
    _require_file(path)
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


def _frame(rows: list[list[str]], columns: list[str], path: Path, lines: list[int]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=columns, dtype=object) if rows else pd.DataFrame(columns=columns, dtype=object)
    df["_file"] = str(path)
    df["_line"] = np.asarray(lines, dtype=np.int64)
    return df


def _read_atomic(path: Path, bad: BadRows) -> tuple[pd.DataFrame, dict[str, str]]:
    """A RecBole atomic file: tab-separated, header of `name:type` fields, no quoting.

    Returns the rows as strings (plus provenance columns) and {column: type}.
    """
    lines = _read_lines(path, bad)
    header = next(lines, None)
    if header is None:
        raise DataError(f"{path}: the file is empty (expected a header line like 'item_id:token')")
    types: dict[str, str] = {}
    for field in header[1].split("\t"):
        col, _, kind = field.strip().partition(":")
        if not col or col in types:
            raise DataError(f"{where(path, header[0])}: bad header field {field!r} (expected unique 'name:type')")
        types[col] = kind or "token"
    width = len(types)
    rows, numbers = [], []
    for number, text in lines:
        if not text.strip():
            continue
        fields = text.split("\t")
        if len(fields) != width:
            bad(path, number, f"expected {width} tab-separated fields, found {len(fields)}")
            continue
        rows.append(fields)
        numbers.append(number)
    return _frame(rows, list(types), path, numbers), types


def _read_csv(path: Path, bad: BadRows, delimiter: str) -> pd.DataFrame:
    """CSV/TSV with a header line; each record's line is the line it starts on."""
    # A long description must be truncated later, not rejected by the csv module's 128 KiB default.
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))
    started: list[int] = []

    def text_lines() -> Iterator[str]:
        for number, text in _read_lines(path, bad, keep_ends=True):
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
    return _frame(rows, header, path, numbers)


def _read_parquet(path: Path) -> pd.DataFrame:
    _require_file(path)
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types; all mean "not a readable Parquet file"
        raise DataError(f"{path}: cannot read the Parquet file ({type(e).__name__}: {e})") from None
    df = df.reset_index(drop=True)
    df["_file"] = str(path)
    df["_line"] = np.arange(1, len(df) + 1, dtype=np.int64)
    return df


def _read_table(path: Path, bad: BadRows) -> pd.DataFrame:
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


def _read_jsonl(path: Path, bad: BadRows) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; bad JSON and non-objects go to `bad`."""
    for number, text in _read_lines(path, bad):
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


def _blank(series: pd.Series) -> pd.Series:
    """True where a value is missing or only whitespace."""
    return series.isna() | (series.astype(str).str.strip() == "")


def _as_id(series: pd.Series) -> pd.Series:
    """Ids as strings; integral floats (Parquet ints with nulls) lose their '.0'."""
    if pd.api.types.is_float_dtype(series):
        out = series.astype(object)
        ok = series.notna() & (series == np.floor(series))
        out[ok] = series[ok].astype(np.int64).astype(str)
        return out.where(series.notna(), None)
    return series.where(series.isna(), series.astype(str).str.strip())


def _unescape(series: pd.Series) -> pd.Series:
    """HTML entities ('&amp;', '&#39;') to characters, stripped; missing values become ''."""
    s = series.fillna("").astype(str)
    return s.map(lambda x: html.unescape(x).strip() if "&" in x else x.strip()).astype(object)


def _parse_price(value: object) -> float:
    """12.99, '12.99', '$1,299.00', '$10 - $20' (first number), None/'None'/'' -> NaN."""
    if value is None or isinstance(value, bool):
        return math.nan
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    if isinstance(value, str):
        m = _PRICE_NUMBER.search(value.replace(",", ""))
        return float(m.group()) if m else math.nan
    return math.nan


def _price_column(series: pd.Series) -> pd.Series:
    numeric = pd.to_numeric(series, errors="coerce")
    rest = numeric.isna() & series.notna()
    if rest.any():
        numeric[rest] = [_parse_price(v) for v in series[rest]]
    return numeric.astype(float)


def _category_path(value: object) -> str:
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
    missing = _blank(series)
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


def _check_options(on_bad_rows: str, max_text_chars: int) -> BadRows:
    if isinstance(max_text_chars, bool) or not isinstance(max_text_chars, (int, np.integer)) or max_text_chars < 1:
        raise DataError(f"data.max_text_chars must be a positive integer, got {max_text_chars!r}")
    return BadRows(on_bad_rows)


def _validate_items(items: pd.DataFrame, bad: BadRows, titles: bool = True) -> pd.DataFrame:
    """Drop (reporting file:line) items without an id, repeating an earlier id, or with an empty title."""
    checks = [
        (_blank(items["item_id"]), "missing item id"),
        (items["item_id"].duplicated(), lambda d: [f"duplicate item id {i!r}" for i in d["item_id"]]),
    ]
    if titles:
        checks.append((_blank(items["title"]), lambda d: [f"item {i!r} has an empty title" for i in d["item_id"]]))
    return _drop_bad_rows(items, checks, bad)


def _validate_events(events: pd.DataFrame, known_items: pd.Index, bad: BadRows) -> pd.DataFrame:
    """Drop (reporting file:line) events without a user or item, with an unknown item or a bad time."""
    checks = [
        (_blank(events["user_id"]), "missing user id"),
        (_blank(events["item_id"]), "missing item id"),
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
        rating = pd.to_numeric(raw["rating"].where(~_blank(raw["rating"]), None), errors="coerce")
        checks.append((rating.isna() & ~_blank(raw["rating"]), quoting("rating", "is not a number")))
        events = events.assign(rating=rating)
    return _drop_bad_rows(events, checks, bad)


def _finish(
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
    items = items.drop(columns=[c for c in _PROVENANCE if c in items.columns])
    events = events.drop(columns=[c for c in _PROVENANCE if c in events.columns])
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


# ----------------------------------------------------------------------------------------------
# RecBole atomic files
# ----------------------------------------------------------------------------------------------


def _split_recbole_text(text: pd.Series) -> pd.DataFrame:
    """'title. categories. brand. ' -> title, category, brand (rsplit on '. ', so a title may hold '. ').

    A brand or category that itself contains '. ' cannot be told apart from the separator; the
    full text is kept in the `text` column. Text not in this shape becomes the title.
    """
    body = text.fillna("").astype(str).str.rstrip().str.removesuffix(".")
    parts = body.str.rsplit(". ", n=2, expand=True).reindex(columns=[0, 1, 2])
    three = parts[2].notna()
    return pd.DataFrame(
        {
            "title": parts[0].where(three, body),
            "category": parts[1].where(three, ""),
            "brand": parts[2].where(three, ""),
        },
        index=text.index,
    )


def _recbole_item_file(path: Path, bad: BadRows) -> pd.DataFrame:
    df, types = _read_atomic(path, bad)
    if "item_id" not in df.columns:
        raise DataError(f"{path}:1: the header has no item_id column (found {list(types)})")
    if "category" not in df.columns and "categories" in df.columns:
        df = df.rename(columns={"categories": "category"})
    for col, kind in types.items():
        if kind == "float" and col in df.columns and col not in ("item_id", "price"):
            df[col] = pd.to_numeric(df[col], errors="coerce")
    if "category" in df.columns:
        df["category"] = [_category_path(v) for v in df["category"]]
    return df


def _recbole_text_file(path: Path, bad: BadRows) -> pd.DataFrame:
    df, types = _read_atomic(path, bad)
    missing = [c for c in ("item_id", "text") if c not in df.columns]
    if missing:
        raise DataError(f"{path}:1: the header lacks column(s) {missing} (found {list(types)})")
    return pd.concat([df[["item_id", "text"]], _split_recbole_text(df["text"]), df[list(_PROVENANCE)]], axis=1)


def _recbole_catalog(directory: Path, name: str, bad: BadRows) -> pd.DataFrame:
    """Items from NAME.item and/or NAME.text; .item fields win, .text fills the gaps and adds `text`."""
    item_path, text_path = directory / f"{name}.item", directory / f"{name}.text"
    if not item_path.exists() and not text_path.exists():
        raise DataError(f"{directory}: neither {item_path.name} nor {text_path.name} exists, so there is no catalog")
    texts = None
    if text_path.exists():
        texts = _recbole_text_file(text_path, bad)
        texts = _validate_items(texts.assign(item_id=_as_id(texts["item_id"])), bad, titles=False)
    if not item_path.exists():
        items = texts
    else:
        items = _recbole_item_file(item_path, bad)
        items = _validate_items(items.assign(item_id=_as_id(items["item_id"])), bad, titles=False)
        if texts is not None:
            by_id = texts.set_index("item_id")
            for col in ("title", "category", "brand", "text"):
                fill = items["item_id"].map(by_id[col])
                items[col] = fill if col not in items.columns else items[col].where(~_blank(items[col]), fill)
            extra = texts[~texts["item_id"].isin(items["item_id"])]
            items = pd.concat([items, extra], ignore_index=True)
        if "title" not in items.columns:
            raise DataError(f"{item_path}:1: the header has no title column and there is no {text_path.name}")
    items = items.copy()
    for col in ("title", "brand", "category", "description"):
        if col in items.columns:
            items[col] = _unescape(items[col])
    if "price" in items.columns:
        items["price"] = _price_column(items["price"])
    return _validate_items(items, bad)


def _read_index(path: Path, bad: BadRows) -> dict[str, str]:
    """NAME.item2index / NAME.user2index: 'raw<TAB>index' lines, no header -> {index token: raw id}."""
    by_index: dict[str, str] = {}
    seen_raw: set[str] = set()
    for number, text in _read_lines(path, bad):
        if not text.strip():
            continue
        fields = text.split("\t")
        if len(fields) != 2:
            bad(path, number, f"expected 'raw id<TAB>index', found {len(fields)} field(s)")
            continue
        raw, index = fields[0].strip(), fields[1].strip()
        if not raw or not index:
            bad(path, number, "missing id or index")
        elif index in by_index or raw in seen_raw:
            bad(path, number, f"duplicate id {raw!r} or index {index!r}")
        else:
            by_index[index] = raw
            seen_raw.add(raw)
    return by_index


class _SplitRow(NamedTuple):
    stage: str
    file: str
    line: int
    history: tuple[int, ...]  # catalog positions, oldest first
    target: int


def _read_split_rows(
    path: Path, stage: str, item_pos: dict[str, int], item_index: dict[str, str] | None, bad: BadRows
) -> dict[str, list[_SplitRow]]:
    """Rows of NAME.<stage>.inter grouped by user token, item tokens mapped to catalog positions."""
    df, types = _read_atomic(path, bad)
    missing = [c for c in ("user_id", "item_id_list", "item_id") if c not in types]
    if missing:
        raise DataError(f"{path}:1: the header lacks column(s) {missing} (found {list(types)})")
    rows: dict[str, list[_SplitRow]] = defaultdict(list)
    file = str(path)
    for user, history, target, line in zip(df["user_id"], df["item_id_list"], df["item_id"], df["_line"]):
        user = user.strip()
        tokens = history.split()
        tokens.append(target.strip())
        positions = [item_pos.get(t, -1) for t in tokens]
        if not user:
            bad(path, line, "missing user id")
        elif not tokens[-1]:
            bad(path, line, "missing item id (target)")
        elif -1 in positions:
            token = tokens[positions.index(-1)]
            if item_index is not None and token not in item_index:
                bad(path, line, f"item index {token!r} is not in the item2index file")
            else:
                raw = item_index[token] if item_index is not None else token
                bad(path, line, f"unknown item {raw!r} (not in the catalog)")
        else:
            rows[user].append(_SplitRow(stage, file, int(line), tuple(positions[:-1]), positions[-1]))
    return rows


def _rebuild_sequence(rows: list[_SplitRow], cap: int, bad: BadRows) -> list[int] | None:
    """One user's full item sequence from their pre-split rows (None if it cannot be rebuilt).

    The test row gives the last min(n-1, cap) items and the last one. Each position p >= 1 is the
    target of exactly one row, so the sequence has (number of rows + 1) items; when the test history
    is capped, earlier items are recovered backwards: the row whose capped history minus its first
    item, plus its target, equals the first `cap` known items, reveals the item just before them.
    Every other row must then be a window of the rebuilt sequence (valid: position n-2; train:
    positions 1..n-3); rows that are not are reported.
    """
    tests = [r for r in rows if r.stage == "test"]
    if not tests:
        first = min(rows, key=lambda r: (r.file, r.line))
        bad(first.file, first.line, "this user has no row in the test file, so their sequence cannot be rebuilt")
        return None
    base = tests[0]
    for extra in tests[1:]:
        bad(extra.file, extra.line, f"second test row for the user (first at line {base.line})")
    others = [r for r in rows if r.stage != "test"]
    seq = list(base.history) + [base.target]
    missing = len(others) + 2 - len(seq)
    if len(base.history) >= cap > 0 and missing > 0:
        continuations: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for r in others:
            if len(r.history) == cap:
                continuations[r.history[1:] + (r.target,)].append(r.history[0])
        window, earlier = seq[:cap], []
        for _ in range(missing):
            firsts = continuations.get(tuple(window))
            if not firsts:
                bad(base.file, base.line, f"cannot recover the items before the {cap}-item history cap: "
                    "no training row continues the sequence")
                break
            earlier.append(firsts.pop())
            window = [earlier[-1]] + window[:-1]
        seq = earlier[::-1] + seq
    n = len(seq)
    train = Counter((tuple(seq[max(0, p - cap):p]), seq[p]) for p in range(1, n - 2))
    valid = (tuple(seq[max(0, n - 2 - cap):n - 2]), seq[n - 2]) if n >= 3 else None
    for r in sorted(others, key=lambda r: (r.file, r.line)):
        key = (r.history, r.target)
        if r.stage == "valid" and key == valid:
            valid = None  # a second identical valid row is reported
        elif r.stage == "train" and train[key] > 0:
            train[key] -= 1
        else:
            bad(r.file, r.line, f"row does not fit the user's sequence rebuilt from {base.file}:{base.line}")
    return seq


def _recbole_presplit(
    directory: Path, name: str, items: pd.DataFrame, item_index: dict[str, str] | None, bad: BadRows
) -> pd.DataFrame:
    """Events (raw user, item id, position) rebuilt from NAME.{train,valid,test}.inter."""
    user_index_path = directory / f"{name}.user2index"
    user_index = _read_index(user_index_path, bad) if user_index_path.exists() else None
    position = {item_id: pos for pos, item_id in enumerate(items["item_id"])}
    if item_index is None:
        item_pos = position
    else:
        item_pos = {token: position[raw] for token, raw in item_index.items() if raw in position}

    rows: dict[str, list[_SplitRow]] = defaultdict(list)
    for stage in ("test", "valid", "train"):  # users in test-file order
        stage_rows = _read_split_rows(directory / f"{name}.{stage}.inter", stage, item_pos, item_index, bad)
        for user, user_rows in stage_rows.items():
            rows[user].extend(user_rows)
    cap = max((len(r.history) for user_rows in rows.values() for r in user_rows), default=0)

    users, sequences = [], []
    for token, user_rows in rows.items():
        if user_index is not None and token not in user_index:
            first = min(user_rows, key=lambda r: (r.file, r.line))
            bad(first.file, first.line, f"user index {token!r} is not in {user_index_path.name}")
            continue
        seq = _rebuild_sequence(user_rows, cap, bad)
        if seq is not None:
            users.append(user_index[token] if user_index is not None else token)
            sequences.append(np.asarray(seq, dtype=np.int64))
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    flat = np.concatenate(sequences) if sequences else np.zeros(0, dtype=np.int64)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return pd.DataFrame(
        {
            "user_id": np.repeat(np.asarray(users, dtype=object), lengths),
            "item_id": items["item_id"].to_numpy()[flat],
            "timestamp": np.arange(len(flat), dtype=np.int64) - starts,  # position in the user's sequence
        }
    )


def _order_by_index(items: pd.DataFrame, item_index: dict[str, str] | None) -> pd.DataFrame:
    """Catalog rows in item2index order (so row position = the file's item index where it can)."""
    if not item_index:
        return items
    rank = {raw: int(i) if i.isdigit() else math.inf for i, raw in item_index.items()}
    key = items["item_id"].map(lambda i: rank.get(i, math.inf)).to_numpy(dtype=float)
    return items.iloc[np.argsort(key, kind="stable")].reset_index(drop=True)


def load_recbole(
    path: str | Path,
    name: str,
    *,
    on_bad_rows: str = "error",
    user_id_secret: str | None = None,
    max_text_chars: int = 2000,
) -> Dataset:
    """RecBole atomic files `path/NAME.*`.

    Either NAME.inter (user_id, item_id, [timestamp], [rating]) or the pre-split
    NAME.{train,valid,test}.inter (user_id, item_id_list, item_id; ids may be indices mapped by
    NAME.item2index / NAME.user2index). The catalog comes from NAME.item and/or NAME.text
    ("title. categories. brand. "). For pre-split data each user's full sequence is rebuilt and
    timestamps are sequence positions, so `leave_last_out` reproduces the file's valid/test rows.
    """
    bad = _check_options(on_bad_rows, max_text_chars)
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise DataError(f"{directory}: no such directory (expected RecBole files {name}.inter, {name}.text, ...)")
    inter_path = directory / f"{name}.inter"
    split_paths = [directory / f"{name}.{stage}.inter" for stage in ("train", "valid", "test")]
    if not inter_path.exists() and not any(p.exists() for p in split_paths):
        raise DataError(f"{directory}: found neither {inter_path.name} nor {name}.train/valid/test.inter")
    if not inter_path.exists():
        absent = [p.name for p in split_paths if not p.exists()]
        if absent:
            raise DataError(f"{directory}: the pre-split files are incomplete: {absent} missing")

    items = _recbole_catalog(directory, name, bad)
    if len(items) == 0:
        raise DataError(
            f"{directory}: the catalog is empty ({name}.item / {name}.text hold no product with an id and a title)"
        )
    if inter_path.exists():
        events, types = _read_atomic(inter_path, bad)
        missing = [c for c in ("user_id", "item_id") if c not in types]
        if missing:
            raise DataError(f"{inter_path}:1: the header lacks column(s) {missing} (found {list(types)})")
        if "timestamp" not in types:
            log.info("%s has no timestamp column: using file order as time", inter_path)
            events["timestamp"] = events["_line"]
        keep = ["user_id", "item_id", "timestamp"] + [c for c in _EVENT_OPTIONAL if c in types] + list(_PROVENANCE)
        events = events[keep].assign(item_id=_as_id(events["item_id"]), user_id=_as_id(events["user_id"]))
        events = _validate_events(events, pd.Index(items["item_id"]), bad)
        events_source = str(inter_path)
    else:
        item_index_path = directory / f"{name}.item2index"
        item_index = _read_index(item_index_path, bad) if item_index_path.exists() else None
        items = _order_by_index(items, item_index)
        events = _recbole_presplit(directory, name, items, item_index, bad)
        events_source = str(split_paths[-1])
    return _finish(
        name, items, events, bad=bad, secret=user_id_secret, max_text_chars=max_text_chars,
        catalog_source=str(directory / name) + ".{item,text}", events_source=events_source,
    )


# ----------------------------------------------------------------------------------------------
# Amazon Reviews 2023 (JSONL)
# ----------------------------------------------------------------------------------------------


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
    for line, obj in _read_jsonl(path, bad):
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
            category = _category_path(categories) if isinstance(categories, list) and categories else ""
            records.append((
                item_id,
                title,
                html.unescape(_scalar_id(obj.get("store"))),
                category or _scalar_id(obj.get("main_category")),
                html.unescape(_join_text(obj.get("description"), " ")),
                _parse_price(obj.get("price")),
                html.unescape(_join_text(obj.get("features"), " ")),
                str(path),
                line,
            ))
    columns = list(CATALOG_COLUMNS) + ["features", *_PROVENANCE]
    return pd.DataFrame.from_records(records, columns=columns)


def _amazon_reviews(path: Path, known: set[str], bad: BadRows) -> pd.DataFrame:
    users, items, times, ratings = [], [], [], []
    for line, obj in _read_jsonl(path, bad):
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


def _dataset_name(path: Path) -> str:
    base = path.name
    for ext in (".gz", ".jsonl", ".json", ".csv", ".tsv", ".parquet", ".pq"):
        base = base.removesuffix(ext)
    return base or path.name


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
    bad = _check_options(on_bad_rows, max_text_chars)
    reviews_path, meta_path = Path(reviews_path).expanduser(), Path(meta_path).expanduser()
    _require_file(reviews_path)
    items = _amazon_meta(meta_path, bad)
    if len(items) == 0:
        raise DataError(f"{meta_path}: the catalog is empty (no product with a parent_asin and a title)")
    events = _amazon_reviews(reviews_path, set(items["item_id"]), bad)
    return _finish(
        name or _dataset_name(reviews_path), items, events, bad=bad, secret=user_id_secret,
        max_text_chars=max_text_chars, catalog_source=str(meta_path), events_source=str(reviews_path),
    )


# ----------------------------------------------------------------------------------------------
# CSV / Parquet tables
# ----------------------------------------------------------------------------------------------

_TABLE_ITEM_FIELDS = CATALOG_COLUMNS
_TABLE_EVENT_FIELDS = ("user_id", "item_id", "timestamp", *_EVENT_OPTIONAL)
TABLE_FIELDS = tuple(dict.fromkeys(_TABLE_ITEM_FIELDS + _TABLE_EVENT_FIELDS))


def _pick_columns(
    df: pd.DataFrame, path: Path, columns: Mapping[str, str], fields: tuple[str, ...], required: tuple[str, ...]
) -> tuple[pd.DataFrame, list[str]]:
    """Rename source columns to our field names (mapped name first, else the field's own name)."""
    present = [c for c in df.columns if c not in _PROVENANCE]
    chosen: dict[str, str] = {}
    for field in fields:
        source = columns.get(field, field)
        if source in present:
            chosen[field] = source
        elif field in present and field not in columns.values():
            chosen[field] = field
        elif field in required:
            hint = f"column {source!r}" + (f" (mapped from data.columns.{field})" if field in columns else "")
            raise DataError(
                f"{path}: no {hint} for the required field {field!r}; the file has columns {present} "
                f"(set data.columns.{field} to the right column name)"
            )
    out = pd.DataFrame({field: df[source] for field, source in chosen.items()}, index=df.index)
    extras = [c for c in present if c not in chosen.values() and c not in chosen]
    for col in list(_PROVENANCE):
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
) -> Dataset:
    """A catalog table and an interactions table, CSV/TSV (optionally gzip) or Parquet by extension.

    `columns` maps our field names to the files' column names, e.g. {"item_id": "sku", "title":
    "name", "user_id": "customer", "timestamp": "ts"}; unmapped fields use their own name. Other
    catalog columns are kept as extra attributes; interactions keep only user_id, item_id,
    timestamp, rating and event. Timestamps are integers (kept), fractional numbers or ISO-8601
    datetimes (both become epoch milliseconds).
    """
    bad = _check_options(on_bad_rows, max_text_chars)
    columns = dict(columns or {})
    unknown = sorted(set(columns) - set(TABLE_FIELDS))
    if unknown:
        raise DataError(f"data.columns: unknown field(s) {unknown}; the fields are {list(TABLE_FIELDS)}")
    not_names = [k for k, v in columns.items() if not isinstance(v, str) or not v]
    if not_names:
        raise DataError(f"data.columns: field(s) {not_names} must map to a column name (a non-empty string)")
    catalog_path, interactions_path = Path(catalog_path).expanduser(), Path(interactions_path).expanduser()
    _require_file(interactions_path)

    raw_items = _read_table(catalog_path, bad)
    items, extras = _pick_columns(raw_items, catalog_path, columns, _TABLE_ITEM_FIELDS, ("item_id", "title"))
    for col in extras:
        items[col] = raw_items[col]
    items["item_id"] = _as_id(items["item_id"])
    for col in ("title", "brand", "description"):
        if col in items.columns:
            items[col] = _unescape(items[col])
    if "category" in items.columns:
        items["category"] = _unescape(pd.Series([_category_path(v) for v in items["category"]], index=items.index))
    if "price" in items.columns:
        items["price"] = _price_column(items["price"])
    items = _validate_items(items, bad)
    if len(items) == 0:
        raise DataError(f"{catalog_path}: the catalog is empty (no product with an id and a title)")

    raw_events = _read_table(interactions_path, bad)
    required = ("user_id", "item_id", "timestamp")
    events, _ = _pick_columns(raw_events, interactions_path, columns, _TABLE_EVENT_FIELDS, required)
    events = events.assign(user_id=_as_id(events["user_id"]), item_id=_as_id(events["item_id"]))
    events = _validate_events(events, pd.Index(items["item_id"]), bad)
    return _finish(
        name or _dataset_name(interactions_path), items, events, bad=bad, secret=user_id_secret,
        max_text_chars=max_text_chars, catalog_source=str(catalog_path), events_source=str(interactions_path),
    )


# ----------------------------------------------------------------------------------------------
# Config dispatcher
# ----------------------------------------------------------------------------------------------

_SHARED_KEYS = ("on_bad_rows", "user_id_secret", "max_text_chars")
_KIND_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {  # kind -> (required, optional)
    "recbole": (("path", "name"), ()),
    "amazon2023": (("reviews_path", "meta_path"), ("name",)),
    "table": (("catalog_path", "interactions_path"), ("columns", "name")),
    "synthetic": ((), ("num_items", "num_users", "seed", "language", "min_len", "max_len")),
}


def load_dataset(cfg: Mapping) -> Dataset:
    """Load the dataset a config describes: `kind` in {recbole, amazon2023, table, synthetic} plus
    that kind's keys and the shared on_bad_rows / user_id_secret / max_text_chars."""
    cfg = dict(cfg)
    kind = cfg.pop("kind", None)
    if kind not in _KIND_KEYS:
        raise DataError(f"data.kind must be one of {sorted(_KIND_KEYS)}, got {kind!r}")
    required, optional = _KIND_KEYS[kind]
    unknown = sorted(set(cfg) - set(required) - set(optional) - set(_SHARED_KEYS))
    if unknown:
        allowed = sorted({"kind", *required, *optional, *_SHARED_KEYS})
        raise DataError(f"data config (kind={kind!r}): unknown key(s) {unknown}; allowed keys are {allowed}")
    absent = [k for k in required if cfg.get(k) in (None, "")]
    if absent:
        raise DataError(f"data config (kind={kind!r}): missing required key(s) {absent}")
    shared = {k: v for k in _SHARED_KEYS if (v := cfg.pop(k, None)) is not None}
    if kind == "recbole":
        return load_recbole(cfg["path"], cfg["name"], **shared)
    if kind == "amazon2023":
        return load_amazon2023(cfg["reviews_path"], cfg["meta_path"], name=cfg.get("name"), **shared)
    if kind == "table":
        columns = cfg.get("columns")
        return load_table(
            cfg["catalog_path"], cfg["interactions_path"], dict(columns) if columns else None,
            name=cfg.get("name"), **shared,
        )
    from towerrec.data.synthetic import generate  # another module; imported only when used

    return generate(**cfg, user_id_secret=shared.get("user_id_secret"))
