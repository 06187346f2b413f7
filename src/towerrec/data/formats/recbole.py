"""RecBole atomic files: `load_recbole`, with the catalog from NAME.item / NAME.text and the events
from NAME.inter or rebuilt from the pre-split NAME.{train,valid,test}.inter."""

from __future__ import annotations

import logging
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from towerrec.data.io import (
    EVENT_OPTIONAL,
    PROVENANCE,
    as_id,
    blank,
    category_path,
    check_options,
    finish,
    frame,
    price_column,
    read_lines,
    unescape,
    validate_events,
    validate_items,
)
from towerrec.data.schema import MAX_BAD_ROW_SHARE, BadRows, DataError, Dataset, quoted, where

log = logging.getLogger(__name__)


def _read_atomic(path: Path, bad: BadRows) -> tuple[pd.DataFrame, dict[str, str]]:
    """A RecBole atomic file: tab-separated, header of `name:type` fields, no quoting.

    Returns the rows as strings (plus provenance columns) and {column: type}.
    """
    lines = read_lines(path, bad)
    header = next(lines, None)
    if header is None:
        raise DataError(f"{path}: the file is empty (expected a header line like 'item_id:token')")
    types: dict[str, str] = {}
    for field in header[1].split("\t"):
        col, _, kind = field.strip().partition(":")
        if not col or col in types:
            raise DataError(f"{where(path, header[0])}: bad header field {quoted(field)} (expected unique 'name:type')")
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
    bad.rows_read(path, len(rows))
    return frame(rows, list(types), path, numbers), types


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
        df["category"] = [category_path(v) for v in df["category"]]
    return df


def _recbole_text_file(path: Path, bad: BadRows) -> pd.DataFrame:
    df, types = _read_atomic(path, bad)
    missing = [c for c in ("item_id", "text") if c not in df.columns]
    if missing:
        raise DataError(f"{path}:1: the header lacks column(s) {missing} (found {list(types)})")
    return pd.concat([df[["item_id", "text"]], _split_recbole_text(df["text"]), df[list(PROVENANCE)]], axis=1)


def _recbole_catalog(directory: Path, name: str, bad: BadRows) -> pd.DataFrame:
    """Items from NAME.item and/or NAME.text; .item fields win, .text fills the gaps and adds `text`."""
    item_path, text_path = directory / f"{name}.item", directory / f"{name}.text"
    if not item_path.exists() and not text_path.exists():
        raise DataError(f"{directory}: neither {item_path.name} nor {text_path.name} exists, so there is no catalog")
    texts = None
    if text_path.exists():
        texts = _recbole_text_file(text_path, bad)
        texts = validate_items(texts.assign(item_id=as_id(texts["item_id"])), bad, titles=False)
    if not item_path.exists():
        items = texts
    else:
        items = _recbole_item_file(item_path, bad)
        items = validate_items(items.assign(item_id=as_id(items["item_id"])), bad, titles=False)
        if texts is not None:
            by_id = texts.set_index("item_id")
            for col in ("title", "category", "brand", "text"):
                fill = items["item_id"].map(by_id[col])
                items[col] = fill if col not in items.columns else items[col].where(~blank(items[col]), fill)
            extra = texts[~texts["item_id"].isin(items["item_id"])]
            items = pd.concat([items, extra], ignore_index=True)
        if "title" not in items.columns:
            raise DataError(f"{item_path}:1: the header has no title column and there is no {text_path.name}")
    items = items.copy()
    for col in ("title", "brand", "category", "description"):
        if col in items.columns:
            items[col] = unescape(items[col])
    if "price" in items.columns:
        items["price"] = price_column(items["price"])
    return validate_items(items, bad)


def _read_index(path: Path, bad: BadRows) -> dict[str, str]:
    """NAME.item2index / NAME.user2index: 'raw<TAB>index' lines, no header -> {index token: raw id}."""
    by_index: dict[str, str] = {}
    seen_raw: set[str] = set()
    for number, text in read_lines(path, bad):
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
            bad(path, number, f"duplicate id {quoted(raw)} or index {quoted(index)}")
        else:
            by_index[index] = raw
            seen_raw.add(raw)
    bad.rows_read(path, len(by_index))
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
                bad(path, line, f"item index {quoted(token)} is not in the item2index file")
            else:
                raw = item_index[token] if item_index is not None else token
                bad(path, line, f"unknown item {quoted(raw)} (not in the catalog)")
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
            bad(first.file, first.line, f"user index {quoted(token)} is not in {user_index_path.name}")
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
    max_bad_row_share: float = MAX_BAD_ROW_SHARE,
) -> Dataset:
    """RecBole atomic files `path/NAME.*`.

    Either NAME.inter (user_id, item_id, [timestamp], [rating]) or the pre-split
    NAME.{train,valid,test}.inter (user_id, item_id_list, item_id; ids may be indices mapped by
    NAME.item2index / NAME.user2index). The catalog comes from NAME.item and/or NAME.text
    ("title. categories. brand. "). For pre-split data each user's full sequence is rebuilt and
    timestamps are sequence positions, so `leave_last_out` reproduces the file's valid/test rows.
    """
    bad = check_options(on_bad_rows, max_text_chars, max_bad_row_share)
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
        keep = ["user_id", "item_id", "timestamp"] + [c for c in EVENT_OPTIONAL if c in types] + list(PROVENANCE)
        events = events[keep].assign(item_id=as_id(events["item_id"]), user_id=as_id(events["user_id"]))
        events = validate_events(events, pd.Index(items["item_id"]), bad)
        events_source = str(inter_path)
    else:
        item_index_path = directory / f"{name}.item2index"
        item_index = _read_index(item_index_path, bad) if item_index_path.exists() else None
        items = _order_by_index(items, item_index)
        events = _recbole_presplit(directory, name, items, item_index, bad)
        events_source = str(split_paths[-1])
    return finish(
        name, items, events, bad=bad, secret=user_id_secret, max_text_chars=max_text_chars,
        catalog_source=str(directory / name) + ".{item,text}", events_source=events_source,
    )
