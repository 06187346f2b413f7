"""Bad input to the loaders: a `DataError` naming file:line in error mode, a counted skip in skip mode, and a
refusal when skip mode would drop more than `data.max_bad_row_share` of a file; unterminated CSV quotes; values
quoted in messages cut to a readable length."""

from __future__ import annotations

import gzip
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.loader_files import (
    EVENTS,
    ITEMS,
    LENIENT,
    QUOTED_PRODUCT,
    SECRET,
    TABLE_COLUMNS,
    amazon_files,
    quote_files,
    recbole_files,
    table_files,
    write_jsonl,
    write_text_file,
    write_tsv,
)

from towerrec.data.formats.amazon2023 import load_amazon2023
from towerrec.data.formats.recbole import load_recbole
from towerrec.data.formats.table import load_table
from towerrec.data.load import load_split
from towerrec.data.schema import DataError


def assert_bad_row(load, path: Path, line: int, reason: str, caplog):
    """'error' raises naming file:line; 'skip' loads, counts one skipped row and logs where it was, or refuses
    (naming the file) when that one row is more than max_bad_row_share of the file."""
    with pytest.raises(DataError, match=re.escape(f"{path}:{line}: ") + reason):
        load(on_bad_rows="error")
    refused = re.escape(f"{path}: 1 of ") + r"\d+ rows \(.*\) are bad, more than data\.max_bad_row_share=0\.01 "
    with pytest.raises(DataError, match=refused):
        load(on_bad_rows="skip")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="towerrec"):
        dataset = load(on_bad_rows="skip", **LENIENT)
    assert "skipped 1 bad rows" in caplog.text and f"{path}:{line}: " in caplog.text
    return dataset


def replace_line(path: Path, line: int, text: bytes):
    lines = path.read_bytes().splitlines(keepends=True)
    lines[line - 1] = text + b"\n"
    path.write_bytes(b"".join(lines))


def append_line(path: Path, text: bytes) -> int:
    data = path.read_bytes()
    path.write_bytes(data + text + b"\n")
    return data.count(b"\n") + 1


def test_bad_json_line(tmp_path, caplog):
    reviews, meta = amazon_files(tmp_path, compress=False)
    replace_line(reviews, 3, b'{"user_id": "x", "parent_asin": ')
    dataset = assert_bad_row(lambda **kw: load_amazon2023(reviews, meta, **kw), reviews, 3, "invalid JSON", caplog)
    assert len(dataset.interactions) == len(EVENTS) - 1
    replace_line(reviews, 3, b'["a list"]')
    with pytest.raises(DataError, match=re.escape(f"{reviews}:3: expected a JSON object")):
        load_amazon2023(reviews, meta)


def test_wrong_column_count_tsv(tmp_path, caplog):
    directory = recbole_files(tmp_path)
    inter = directory / "shop.inter"
    replace_line(inter, 4, b"alice@example.com\tI1\t100.0")
    load = lambda **kw: load_recbole(directory, "shop", **kw)  # noqa: E731
    assert_bad_row(load, inter, 4, "expected 4 tab-separated fields, found 3", caplog)


def test_wrong_column_count_csv(tmp_path, caplog):
    catalog, events = table_files(tmp_path)
    replace_line(events, 5, b"bob-42,I5,2020-01-01T00:00:00,extra")
    load = lambda **kw: load_table(catalog, events, TABLE_COLUMNS, **kw)  # noqa: E731
    assert_bad_row(load, events, 5, "expected 3 fields, found 4", caplog)


def test_csv_multiline_field_keeps_line_numbers(tmp_path):
    catalog, events = table_files(tmp_path)
    replace_line(catalog, 2, b'I1,"Red\nmug",Acme,Kitchen,"two\nlines",9.5,matte')  # one record, 3 lines
    line = append_line(catalog, b",No id,Acme,Kitchen,x,1,matte")
    assert line == 1 + 3 + 8 + 1
    with pytest.raises(DataError, match=re.escape(f"{catalog}:{line}: missing item id")):
        load_table(catalog, events, TABLE_COLUMNS)
    replace_line(catalog, line, b"I10,Tray,Acme,Kitchen,x,1,matte")
    items = load_table(catalog, events, TABLE_COLUMNS).catalog.items.set_index("item_id")
    assert items.loc["I1", "title"] == "Red\nmug" and items.loc["I1", "description"] == "two\nlines"


def test_unterminated_quote_names_the_line_it_opens_on(tmp_path):
    items, events = quote_files(tmp_path, {7: QUOTED_PRODUCT})
    with pytest.raises(DataError, match=re.escape(
            f"{items}:7: unterminated quote: field 2 opens with a quote that never closes, so lines 7-31 (the rest "
            "of the file) would be one field (set data.on_bad_rows=skip")):
        load_table(items, events)


def test_unterminated_quote_in_skip_mode_is_refused_then_loses_one_row(tmp_path, caplog):
    items, events = quote_files(tmp_path, {7: QUOTED_PRODUCT})
    cfg = {"kind": "table", "catalog_path": str(items), "interactions_path": str(events), "on_bad_rows": "skip",
           "user_id_secret": SECRET}
    with pytest.raises(DataError) as info:
        load_split(cfg)
    message = str(info.value)
    assert message.startswith(f"{items}: 1 of 30 rows (3.3%) are bad, more than data.max_bad_row_share=0.01 lets ")
    assert f"(first: {items}:7: unterminated quote" in message and f"also {events}: 3 of 100 rows (3.0%)" in message
    # Allowed a larger share, skip mode drops line 7 alone: the lines after the quote are read again.
    with caplog.at_level(logging.WARNING, logger="towerrec"):
        split = load_split({**cfg, "max_bad_row_share": 0.05})
    assert "skipped 4 bad rows" in caplog.text
    assert sorted(split.catalog.item_ids) == [f"P{i:02d}" for i in range(30) if i != 5]
    assert len(split.users) == 10 and sum(len(s) for s in split.sequences) == 97


@pytest.mark.parametrize(
    "lines, newline, line, last",
    [
        ({7: QUOTED_PRODUCT}, "\r\n", 7, 31),
        ({7: 'P05,Gadget 5,Brand1,Home,A thing.,"5.5'}, "\n", 7, 31),  # the last field
        ({31: 'P29,"Gadget 29,Brand1,Home,A thing.,29.5'}, "\n", 31, 31),  # the last line
        ({7: 'P05,"Gadget\n5",Brand1,Home,"A thing.,5.5'}, "\n", 8, 32),  # a closed quoted field before it
    ],
    ids=["crlf", "last-field", "last-line", "second-quote"],
)
def test_unterminated_quote_line_and_recovery(tmp_path, lines, newline, line, last):
    items, events = quote_files(tmp_path, lines, newline)
    with pytest.raises(DataError, match=re.escape(f"{items}:{line}: unterminated quote: field ") + r"\d "
                       + re.escape(f"opens with a quote that never closes, so lines {line}-{last} ")):
        load_table(items, events)
    dataset = load_table(items, events, on_bad_rows="skip", max_bad_row_share=0.05)
    assert len(dataset.catalog) == 29


def test_quote_that_closes_many_lines_later_is_named(tmp_path):
    items, events = quote_files(tmp_path, {7: QUOTED_PRODUCT, 20: 'P18,Gadget 18,Brand2,"Home, Things",A thing.,1'})
    with pytest.raises(DataError, match=re.escape(
            f"{items}:7: expected 6 fields, found 5 (a quoted field makes lines 7-20 one record: is a quote "
            "unterminated?)")):
        load_table(items, events)


def test_unterminated_quote_in_the_header_is_an_error_in_skip_mode_too(tmp_path):
    items, events = quote_files(tmp_path, {1: 'item_id,"title,brand,category,description,price'})
    with pytest.raises(DataError, match=re.escape(f"{items}:1: unterminated quote: field 2 opens") + ".*header"):
        load_table(items, events, on_bad_rows="skip", max_bad_row_share=1.0)


@pytest.mark.parametrize("share, refused", [(0.021, False), (0.02, False), (0.0199, True)])
def test_max_bad_row_share_bounds_what_skip_mode_drops(tmp_path, share, refused):
    """2 of 100 events name unknown items: a bound at or above 2% loads the other 98, one below refuses."""
    items, events = quote_files(tmp_path)
    lines = events.read_text().splitlines()
    for k in (3, 50):
        lines[k - 1] = f"user9,NOPE{k},{k}"
    events.write_text("\n".join(lines) + "\n")
    load = lambda: load_table(items, events, on_bad_rows="skip", max_bad_row_share=share)  # noqa: E731
    if refused:
        with pytest.raises(DataError, match=re.escape(
                f"{events}: 2 of 100 rows (2.0%) are bad, more than data.max_bad_row_share=0.0199 lets skip mode drop "
                f"(first: {events}:3: unknown item 'NOPE3' (not in the catalog)); fix the data, or raise")):
            load()
    else:
        assert len(load().interactions) == 98


def test_long_values_are_cut_in_messages(tmp_path):
    catalog, events = table_files(tmp_path)
    line = append_line(events, b"zed,I1,2024-01-01" + b"9" * 10_000)
    with pytest.raises(DataError) as info:
        load_table(catalog, events, TABLE_COLUMNS)
    message = str(info.value)
    assert len(message) < 300, message
    assert f"{events}:{line}: timestamp '2024-01-0199" in message and "…' (10,010 characters) is not a" in message
    line = append_line(catalog, b"I" + b"x" * 5000 + b",Title,Acme,Kitchen,x,1,matte")
    append_line(catalog, b"I" + b"x" * 5000 + b",Title,Acme,Kitchen,x,1,matte")
    duplicate = re.escape(f"{catalog}:{line + 1}: duplicate item id 'Ixxx") + r"x*…' \(5,001 characters\) \(set"
    with pytest.raises(DataError, match=duplicate):
        load_table(catalog, events, TABLE_COLUMNS)


@pytest.mark.parametrize("timestamp", ["inf", "1e400", "9" * 40, "9223372036854775808", "-1e19"])
def test_timestamps_an_int64_cannot_hold_are_bad_rows(tmp_path, timestamp):
    items, events = quote_files(tmp_path)
    line = append_line(events, f"user1,P01,{timestamp}".encode())
    with pytest.raises(DataError, match=re.escape(f"{events}:{line}: timestamp {timestamp!r} is out of range")):
        load_table(items, events)


def test_parquet_binary_text_is_decoded_and_float_ids_kept(tmp_path):
    catalog, events = table_files(tmp_path, fmt="parquet")
    df = pd.read_parquet(catalog)
    df["name"] = [n.encode() for n in df["name"]]
    df.loc[3, "name"] = b"\xff\xfe"
    df.to_parquet(catalog)
    with pytest.raises(DataError, match=re.escape(f"{catalog} row 4: column 'name' is not valid UTF-8")):
        load_table(catalog, events, TABLE_COLUMNS)
    df.loc[3, "name"] = ITEMS[3][1].encode()
    df["sku"] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, np.inf]  # I9 is never bought
    df.to_parquet(catalog)
    ev = pd.read_parquet(events)
    ev["sku"] = ev["sku"].str[1:].astype(float)
    ev.to_parquet(events)
    dataset = load_table(catalog, events, TABLE_COLUMNS)
    assert dataset.catalog.items["title"].tolist() == [i[1] for i in ITEMS]
    assert list(dataset.catalog.item_ids) == [str(k) for k in range(1, 9)] + ["inf"]


@pytest.mark.parametrize("fmt", ["recbole_item", "recbole_text", "amazon", "csv"])
def test_missing_item_id_in_catalog(tmp_path, caplog, fmt):
    if fmt.startswith("recbole"):
        directory = recbole_files(tmp_path)
        if fmt == "recbole_text":
            (directory / "shop.item").unlink()
            write_text_file(directory / "shop.text")
            path = directory / "shop.text"
        else:
            path = directory / "shop.item"
        nameless = b"\tNameless\tAcme\tKitchen\tx\t1\tHome" if fmt == "recbole_item" else b"\tNameless. C. B. "
        line = append_line(path, nameless)
        load = lambda **kw: load_recbole(directory, "shop", **kw)  # noqa: E731
    elif fmt == "amazon":
        reviews, path = amazon_files(tmp_path, compress=False)
        line = append_line(path, b'{"title": "Nameless", "parent_asin": null}')
        load = lambda **kw: load_amazon2023(reviews, path, **kw)  # noqa: E731
    else:
        path, events = table_files(tmp_path)
        line = append_line(path, b",Nameless,Acme,Kitchen,x,1,matte")
        load = lambda **kw: load_table(path, events, TABLE_COLUMNS, **kw)  # noqa: E731
    dataset = assert_bad_row(load, path, line, "missing item id", caplog)
    assert len(dataset.catalog) == len(ITEMS)


@pytest.mark.parametrize("fmt", ["recbole", "amazon", "csv"])
def test_missing_item_or_user_in_interaction(tmp_path, caplog, fmt):
    if fmt == "recbole":
        directory = recbole_files(tmp_path)
        path = directory / "shop.inter"
        line = append_line(path, b"zed\t\t5.0\t3")
        load = lambda **kw: load_recbole(directory, "shop", **kw)  # noqa: E731
    elif fmt == "amazon":
        path, meta = amazon_files(tmp_path, compress=False)
        line = append_line(path, b'{"user_id": "zed", "timestamp": 5}')
        load = lambda **kw: load_amazon2023(path, meta, **kw)  # noqa: E731
    else:
        catalog, path = table_files(tmp_path)
        line = append_line(path, b"zed,,2020-01-01")
        load = lambda **kw: load_table(catalog, path, TABLE_COLUMNS, **kw)  # noqa: E731
    assert_bad_row(load, path, line, "missing item id", caplog)
    no_user = {"recbole": b"\tI1\t5.0\t3", "amazon": b'{"parent_asin": "I1", "timestamp": 5}', "csv": b",I1,2020-01-01"}
    replace_line(path, line, no_user[fmt])
    with pytest.raises(DataError, match=re.escape(f"{path}:{line}: missing user id")):
        load()


@pytest.mark.parametrize("fmt", ["recbole", "amazon", "csv", "parquet"])
def test_unknown_item_in_interaction(tmp_path, caplog, fmt):
    if fmt == "recbole":
        directory = recbole_files(tmp_path)
        path = directory / "shop.inter"
        line = append_line(path, b"zed\tNOPE\t5.0\t3")
        load = lambda **kw: load_recbole(directory, "shop", **kw)  # noqa: E731
    elif fmt == "amazon":
        path, meta = amazon_files(tmp_path, compress=False)
        line = append_line(path, b'{"user_id": "zed", "parent_asin": "NOPE", "timestamp": 5}')
        load = lambda **kw: load_amazon2023(path, meta, **kw)  # noqa: E731
    elif fmt == "csv":
        catalog, path = table_files(tmp_path)
        line = append_line(path, b"zed,NOPE,2020-01-01T10:00:00")
        load = lambda **kw: load_table(catalog, path, TABLE_COLUMNS, **kw)  # noqa: E731
    else:
        catalog, path = table_files(tmp_path, fmt="parquet")
        df = pd.read_parquet(path)
        unknown = pd.DataFrame({"customer": ["zed"], "sku": ["NOPE"], "ts": [5]})
        pd.concat([df.iloc[:2], unknown, df.iloc[2:]]).to_parquet(path)
        with pytest.raises(DataError, match=re.escape(f"{path} row 3: unknown item 'NOPE'")):
            load_table(catalog, path, TABLE_COLUMNS)
        return
    dataset = assert_bad_row(load, path, line, "unknown item 'NOPE'", caplog)
    assert len(dataset.interactions) == len(EVENTS)


@pytest.mark.parametrize("fmt", ["recbole_item", "recbole_text", "amazon", "csv"])
def test_empty_title(tmp_path, caplog, fmt):
    if fmt.startswith("recbole"):
        directory = recbole_files(tmp_path)
        if fmt == "recbole_text":
            (directory / "shop.item").unlink()
            write_text_file(directory / "shop.text")
            path = directory / "shop.text"
            line = append_line(path, b"X1\t . Cat. Brand. ")
        else:
            path = directory / "shop.item"
            line = append_line(path, b"X1\t  \tAcme\tKitchen\tx\t1\tHome")
        load = lambda **kw: load_recbole(directory, "shop", **kw)  # noqa: E731
    elif fmt == "amazon":
        reviews, path = amazon_files(tmp_path, compress=False)
        line = append_line(path, b'{"parent_asin": "X1", "title": ""}')
        load = lambda **kw: load_amazon2023(reviews, path, **kw)  # noqa: E731
    else:
        path, events = table_files(tmp_path)
        line = append_line(path, b"X1,,Acme,Kitchen,x,1,matte")
        load = lambda **kw: load_table(path, events, TABLE_COLUMNS, **kw)  # noqa: E731
    dataset = assert_bad_row(load, path, line, "item 'X1' has an empty title", caplog)
    assert "X1" not in set(dataset.catalog.item_ids)


@pytest.mark.parametrize("fmt", ["tsv", "jsonl", "jsonl.gz", "csv"])
def test_invalid_utf8_names_the_line(tmp_path, caplog, fmt):
    if fmt == "tsv":
        directory = recbole_files(tmp_path)
        path, line = directory / "shop.item", 3
        load = lambda **kw: load_recbole(directory, "shop", **kw)  # noqa: E731
    elif fmt.startswith("jsonl"):
        reviews, path = amazon_files(tmp_path, compress=False)
        line = 2
        load = lambda **kw: load_amazon2023(reviews, path, **kw)  # noqa: E731
    else:
        path, events = table_files(tmp_path)
        line = 3
        load = lambda **kw: load_table(path, events, TABLE_COLUMNS, **kw)  # noqa: E731
    lines = path.read_bytes().splitlines(keepends=True)
    lines[line - 1] = lines[line - 1].replace(b"Blue", b"Bl\xff\xfee")  # I2's title, not valid UTF-8
    data = b"".join(lines)
    if fmt == "jsonl.gz":
        path.unlink()
        path = path.with_suffix(".gz")
        path.write_bytes(gzip.compress(data))
        load = lambda **kw: load_amazon2023(reviews, path, **kw)  # noqa: E731
    else:
        path.write_bytes(data)
    with pytest.raises(DataError, match=re.escape(f"{path}:{line}: invalid UTF-8 byte 0xff")):
        load()


def test_invalid_utf8_skip_in_interactions(tmp_path, caplog):
    directory = recbole_files(tmp_path)
    inter = directory / "shop.inter"
    replace_line(inter, 2, b"\xc3\x28\tI1\t1.0\t5")
    dataset = assert_bad_row(lambda **kw: load_recbole(directory, "shop", **kw), inter, 2, "invalid UTF-8", caplog)
    assert len(dataset.interactions) == len(EVENTS) - 1


@pytest.mark.parametrize("fmt", ["recbole", "amazon", "csv"])
def test_one_megabyte_description_is_truncated(tmp_path, caplog, fmt):
    huge = "x" * 1_000_000
    long_items = [(i, t, b, c, huge if i == "I4" else d, p) for i, t, b, c, d, p in ITEMS]
    with caplog.at_level(logging.WARNING, logger="towerrec"):
        if fmt == "recbole":
            dataset = load_recbole(recbole_files(tmp_path, items=long_items), "shop", max_text_chars=500)
        elif fmt == "amazon":
            dataset = load_amazon2023(*amazon_files(tmp_path, items=long_items), max_text_chars=500)
        else:
            dataset = load_table(*table_files(tmp_path, items=long_items), TABLE_COLUMNS, max_text_chars=500)
    descriptions = dataset.catalog.items.set_index("item_id")["description"]
    assert descriptions["I4"] == "x" * 500 and descriptions["I3"] == "Holds 1 l."
    assert re.search(r"truncated 1 description value\(s\) longer than 500 characters", caplog.text)


@pytest.mark.parametrize("fmt", ["recbole", "amazon", "csv", "parquet"])
def test_empty_catalog_is_one_clear_error(tmp_path, fmt):
    if fmt == "recbole":
        directory = recbole_files(tmp_path)
        (directory / "shop.item").unlink()
        path = write_tsv(directory / "shop.text", ["item_id:token", "text:token_seq"], [])
        load = lambda: load_recbole(directory, "shop")  # noqa: E731
    elif fmt == "amazon":
        reviews, path = amazon_files(tmp_path, compress=False)
        path.write_bytes(b"")
        load = lambda: load_amazon2023(reviews, path)  # noqa: E731
    else:
        path, events = table_files(tmp_path, fmt=fmt)
        empty = pd.DataFrame(columns=["sku", "name"])
        empty.to_csv(path, index=False) if fmt == "csv" else empty.to_parquet(path)
        load = lambda: load_table(path, events, TABLE_COLUMNS)  # noqa: E731
    with pytest.raises(DataError, match="the catalog is empty") as info:
        load()
    assert str(path.parent) in str(info.value) and "\n" not in str(info.value)


def test_catalog_emptied_by_skipped_rows(tmp_path):
    write_jsonl(tmp_path / "meta.jsonl", [{"parent_asin": "A", "title": " "}])
    write_jsonl(tmp_path / "reviews.jsonl", [])
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'meta.jsonl'}: the catalog is empty")):
        load_amazon2023(tmp_path / "reviews.jsonl", tmp_path / "meta.jsonl", on_bad_rows="skip")


def test_no_interactions_is_one_clear_error(tmp_path):
    _, meta = amazon_files(tmp_path, compress=False)
    write_jsonl(tmp_path / "none.jsonl", [])
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'none.jsonl'}: no interactions")):
        load_amazon2023(tmp_path / "none.jsonl", meta)


@pytest.mark.parametrize("which", ["recbole_dir", "recbole_name", "amazon_reviews", "amazon_meta", "csv", "parquet"])
def test_missing_file_is_one_clear_error(tmp_path, which):
    missing = tmp_path / "nope"
    if which == "recbole_dir":
        load, expect = lambda: load_recbole(missing, "shop"), f"{missing}: no such directory"
    elif which == "recbole_name":
        recbole_files(tmp_path)
        load = lambda: load_recbole(tmp_path, "other")  # noqa: E731
        expect = "found neither other.inter nor other.train/valid/test.inter"
    elif which.startswith("amazon"):
        reviews, meta = amazon_files(tmp_path)
        args = (missing, meta) if which == "amazon_reviews" else (reviews, missing)
        load, expect = lambda: load_amazon2023(*args), f"{missing}: file not found"
    else:
        catalog, events = table_files(tmp_path, fmt=which)
        gone = catalog.with_name("gone" + catalog.suffix)
        load, expect = lambda: load_table(gone, events, TABLE_COLUMNS), f"{gone}: file not found"
    with pytest.raises(DataError, match=re.escape(expect)) as info:
        load()
    assert "\n" not in str(info.value)


def test_bad_timestamp_and_rating(tmp_path, caplog):
    catalog, events = table_files(tmp_path)
    line = append_line(events, b"zed,I1,yesterday")
    assert_bad_row(lambda **kw: load_table(catalog, events, TABLE_COLUMNS, **kw), events, line,
                   "timestamp 'yesterday' is not a number or an ISO datetime", caplog)
    directory = recbole_files(tmp_path)
    line = append_line(directory / "shop.inter", b"zed\tI1\tsoon\t3")  # among numeric timestamps
    with pytest.raises(DataError, match=re.escape(f"{directory / 'shop.inter'}:{line}: timestamp 'soon' is not")):
        load_recbole(directory, "shop")
    replace_line(directory / "shop.inter", line, b"zed\tI1\t5.0\tgreat")
    with pytest.raises(DataError, match=re.escape(f"{directory / 'shop.inter'}:{line}: rating 'great' is not a fin")):
        load_recbole(directory, "shop")


def test_option_validation(tmp_path):
    directory = recbole_files(tmp_path)
    with pytest.raises(DataError, match="on_bad_rows must be 'error' or 'skip'"):
        load_recbole(directory, "shop", on_bad_rows="ignore")
    with pytest.raises(DataError, match="max_text_chars must be a positive integer"):
        load_recbole(directory, "shop", max_text_chars=0)
    for share in (1.5, -0.1, "0.1", True, float("nan")):
        with pytest.raises(DataError, match="data.max_bad_row_share must be a number from 0 to 1"):
            load_recbole(directory, "shop", max_bad_row_share=share)
