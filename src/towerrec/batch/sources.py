"""Who the batch job recommends for: every known user of the artifact, or the users of a histories file.

Both are read as a stream of (user id, item ids oldest first), never as a whole, and cut into fixed chunks
(`chunked`), so chunk i is always the same users: what lets a killed job resume by chunk.

A histories file is JSONL or CSV, optionally gzipped, one user per line:
    JSONL  {"user_id": "u1", "history": ["P1", "P2"]}        (exactly these keys; item ids as strings)
    CSV    a header `user_id,history`, then `u1,P1 P2`       (item ids separated by spaces)
The history is the user's whole history, oldest first: the artifact's stored history of the same id is not
added. Ids unknown to the artifact are ignored as serving ignores them; an empty history gets the popularity
answer. The file is checked in full before any work (`HistoryFile.check`): a bad row stops the job with a
`DataError` naming the file and line, not hours in.
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path

from towerrec.artifact.reader import Artifact
from towerrec.data.io import read_jsonl, read_lines, require_file
from towerrec.data.schema import DataError, quoted, where
from towerrec.utils.io import sha256_file

User = tuple[str, list[str]]  # (user id, item ids oldest first)
FIELDS = ("user_id", "history")


def chunked(users: Iterable[User], size: int) -> Iterator[list[User]]:
    """Consecutive lists of `size` users (the last one shorter); only one list is held at a time."""
    if size < 1:
        raise ValueError(f"chunk size must be positive, got {size}")
    it = iter(users)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


class KnownUsers:
    """The artifact's known users (users.parquet), streamed."""

    def __init__(self, artifact: Artifact):
        self.artifact = artifact

    def count(self) -> int:
        return self.artifact.num_users

    def identity(self) -> dict:
        """What the results depend on: the artifact's users (its manifest hash already covers them)."""
        return {"kind": "known users"}

    def users(self, read_size: int = 1024) -> Iterator[User]:
        return self.artifact.iter_users(read_size)


def _refuse(path, line: int | None, reason: str) -> None:
    raise DataError(f"{where(path, line)}: {reason}")


def _item_ids(value, path: Path, line: int) -> list[str]:
    if not isinstance(value, list):
        _refuse(path, line, f"history must be a list of item ids, got {type(value).__name__} {quoted(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            _refuse(path, line, f"history[{i}] must be a non-empty string item id, got {quoted(item)}")
    return [item.strip() for item in value]


def _user_id(value, path: Path, line: int) -> str:
    if not isinstance(value, str) or not value.strip():
        _refuse(path, line, f"user_id must be a non-empty string, got {quoted(value)}")
    return value.strip()


class HistoryFile:
    """A JSONL or CSV file of user histories (module docstring), read line by line."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        suffixes = [s.lower() for s in self.path.suffixes]
        if suffixes and suffixes[-1] == ".gz":
            suffixes = suffixes[:-1]
        ext = suffixes[-1] if suffixes else ""
        if ext not in (".jsonl", ".csv"):
            raise DataError(f"{self.path}: unsupported histories format {quoted(ext or '(no extension)')}; "
                            "use .jsonl or .csv (optionally .gz)")
        self.format = ext[1:]
        self._count: int | None = None
        self._sha256: str | None = None

    def check(self) -> int:
        """Read the whole file once: a DataError at the first bad row; else the number of users."""
        if self._count is None:
            require_file(self.path)
            self._count = sum(1 for _ in self.users())
            if self._count == 0:
                raise DataError(f"{self.path}: no users (the file holds no rows)")
        return self._count

    def count(self) -> int:
        return self.check()

    def identity(self) -> dict:
        """What the results depend on: the file's content (sha256), not its name."""
        if self._sha256 is None:
            require_file(self.path)
            self._sha256 = sha256_file(self.path)
        return {"kind": "histories file", "sha256": self._sha256, "users": self.check()}

    def users(self, read_size: int = 1024) -> Iterator[User]:
        return self._jsonl() if self.format == "jsonl" else self._csv()

    def _jsonl(self) -> Iterator[User]:
        for line, obj in read_jsonl(self.path, _refuse):
            unknown = sorted(set(obj) - set(FIELDS))
            missing = [f for f in FIELDS if f not in obj]
            if unknown or missing:
                problem = f"unknown key(s) {unknown}" if unknown else f"missing key(s) {missing}"
                _refuse(self.path, line, f"{problem}; a line is {{\"user_id\": ..., \"history\": [item ids]}}")
            yield _user_id(obj["user_id"], self.path, line), _item_ids(obj["history"], self.path, line)

    def _csv(self) -> Iterator[User]:
        header = None
        for line, text in read_lines(self.path, _refuse):
            if not text.strip():
                continue
            try:  # one record per line: a quote left open is an error here, not the start of a long field
                record = next(csv.reader([text], strict=True))
            except csv.Error as e:
                _refuse(self.path, line, f"malformed CSV ({e})")
            if header is None:
                header = [h.strip() for h in record]
                if header != list(FIELDS):
                    _refuse(self.path, line, f"the header must be {','.join(FIELDS)}, got {quoted(text, 120)}")
                continue
            if len(record) != len(FIELDS):
                _refuse(self.path, line, f"expected {len(FIELDS)} fields (user_id,history), found {len(record)}")
            yield _user_id(record[0], self.path, line), record[1].split()
