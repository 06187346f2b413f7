"""Who the batch job reads (towerrec.batch.sources): histories files (JSONL and CSV, gzip too) with every bad
row an error naming the file and line, checked in full before any work; fixed chunks; known users streamed."""

from __future__ import annotations

import gzip
import json

import pandas as pd
import pytest

from towerrec.batch import BatchOptions, recommend_all
from towerrec.batch.sources import HistoryFile, KnownUsers, chunked
from towerrec.data.schema import DataError


def write(path, text: str | bytes):
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_jsonl_and_csv_give_the_same_users(tmp_path):
    rows = [("u1", ["P1", "P2"]), ("u2", []), ("u 3", ["P3"])]
    jsonl = write(tmp_path / "h.jsonl", "".join(json.dumps({"user_id": u, "history": h}) + "\n" for u, h in rows)
                  + "\n")  # a blank line is skipped
    csv = write(tmp_path / "h.csv", "user_id,history\n" + "".join(f"{u},{' '.join(h)}\n" for u, h in rows))
    with gzip.open(tmp_path / "h.jsonl.gz", "wt") as f:
        f.write(jsonl.read_text())
    for path in (jsonl, csv, tmp_path / "h.jsonl.gz"):
        source = HistoryFile(path)
        assert list(source.users()) == rows and source.check() == 3, path
    assert HistoryFile(jsonl).identity()["sha256"] != HistoryFile(csv).identity()["sha256"]


JSONL_BAD = {
    "invalid JSON": ('{"user_id": "u", "history": [}', "invalid JSON"),
    "not an object": ('["u", ["P1"]]', "expected a JSON object, found list"),
    "unknown key": ('{"user_id": "u", "history": [], "histroy": []}', r"unknown key\(s\) \['histroy'\]"),
    "missing key": ('{"user_id": "u"}', r"missing key\(s\) \['history'\]"),
    "history a string": ('{"user_id": "u", "history": "P1 P2"}', "history must be a list of item ids, got str"),
    "item id a number": ('{"user_id": "u", "history": ["P1", 7]}', r"history\[1\] must be a non-empty string"),
    "empty user id": ('{"user_id": " ", "history": []}', "user_id must be a non-empty string"),
    "user id a number": ('{"user_id": 12, "history": []}', "user_id must be a non-empty string, got 12"),
}


@pytest.mark.parametrize("case", sorted(JSONL_BAD))
def test_a_bad_jsonl_row_names_the_file_and_line(case, tmp_path):
    line, message = JSONL_BAD[case]
    path = write(tmp_path / "users.jsonl", '{"user_id": "a", "history": ["P1"]}\n\n' + line + "\n")
    with pytest.raises(DataError, match=rf"users\.jsonl:3: {message}") as bad:
        HistoryFile(path).check()
    assert str(path) in str(bad.value)


CSV_BAD = {
    "wrong header": ("user,items\nu1,P1\n", 1, "the header must be user_id,history"),
    "too many fields": ("user_id,history\nu1,P1\nu2,P1,P2\n", 3, r"expected 2 fields \(user_id,history\), found 3"),
    "open quote": ('user_id,history\nu1,P1\n"u2,P1\n', 3, "malformed CSV"),
    "empty user id": ("user_id,history\n,P1\n", 2, "user_id must be a non-empty string"),
    "invalid utf-8": (b"user_id,history\nu1,P1\nu\xff,P2\n", 3, "invalid UTF-8 byte 0xff"),
}


@pytest.mark.parametrize("case", sorted(CSV_BAD))
def test_a_bad_csv_row_names_the_file_and_line(case, tmp_path):
    text, line, message = CSV_BAD[case]
    path = write(tmp_path / "users.csv", text)
    with pytest.raises(DataError, match=rf"users\.csv:{line}: {message}"):
        HistoryFile(path).check()


def test_files_that_are_no_histories_are_refused(tmp_path):
    with pytest.raises(DataError, match=r"h\.parquet: unsupported histories format '\.parquet'"):
        HistoryFile(tmp_path / "h.parquet")
    with pytest.raises(DataError, match="file not found"):
        HistoryFile(tmp_path / "missing.jsonl").check()
    with pytest.raises(DataError, match=r"empty\.csv: no users"):
        HistoryFile(write(tmp_path / "empty.csv", "user_id,history\n")).check()


def test_a_bad_row_at_the_end_stops_the_job_before_any_chunk(tiny_split, tmp_path):
    from helpers.serve import export_tiny_artifact

    art = export_tiny_artifact(tmp_path / "artifact", tiny_split)
    good = "".join(json.dumps({"user_id": f"u{i}", "history": []}) + "\n" for i in range(500))
    path = write(tmp_path / "users.jsonl", good + '{"user_id": "late", "history": [1]}\n')
    with pytest.raises(DataError, match=r"users\.jsonl:501: history\[0\]"):
        recommend_all(art, tmp_path / "recs.parquet", BatchOptions(chunk_size=10), histories=path, progress=False)
    assert not (tmp_path / "recs.parquet.parts").exists() and not (tmp_path / "recs.parquet").exists()


def test_chunked_cuts_fixed_chunks_and_holds_one_at_a_time():
    taken = []

    def users():
        for i in range(23):
            taken.append(i)
            yield f"u{i}", []

    chunks = chunked(users(), 5)
    first = next(chunks)
    assert [u for u, _ in first] == [f"u{i}" for i in range(5)] and len(taken) == 5  # nothing read ahead
    assert [len(c) for c in chunks] == [5, 5, 5, 3]
    with pytest.raises(ValueError, match="chunk size must be positive"):
        next(chunked([], 0))


def test_known_users_are_the_artifact_users_in_file_order(tiny_split, tmp_path):
    from helpers.serve import export_tiny_artifact

    from towerrec.artifact import Artifact
    from towerrec.artifact.format import USERS_FILE

    art = Artifact.load(export_tiny_artifact(tmp_path / "artifact", tiny_split))
    source = KnownUsers(art)
    table = pd.read_parquet(art.path / USERS_FILE)
    assert source.count() == len(table) == 60
    assert list(source.users(read_size=7)) == [(u, list(h)) for u, h in zip(table["user_id"], table["items"])]
