"""The batch job's work directory: a manifest saying which job it belongs to, one Parquet file per finished
chunk, and the assembly of the final file.

    OUT.parts/manifest.json        {"format": 1, "job": {artifact digest, users, k, chunk size, filters, rerank}}
    OUT.parts/chunk-000001.parquet one per finished chunk, written to a temporary name and renamed, so a chunk
                                   file that exists is complete: a finished chunk is never recomputed

A work directory whose manifest records another job (another artifact, users file or option) is refused with
the differences named: mixing chunks of two jobs would give a file no single run could have written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from towerrec.utils.io import jsonable, write_json

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class BatchError(ValueError):
    """The batch job cannot go on as asked; the message says why and what to do."""


def default_work_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def _replace_atomically(write, final: Path) -> None:
    """`write(tmp_path)` into a temporary file beside `final`, then rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ChunkStore:
    """Chunk files and the manifest of one batch job (module docstring)."""

    def __init__(self, work_dir: Path, job: dict):
        self.dir = Path(work_dir)
        self.job = jsonable(job)
        self.manifest_path = self.dir / MANIFEST

    def open(self) -> None:
        """Create the work directory for this job, or check that an existing one is this job's."""
        if self.manifest_path.is_file():
            try:
                stored = json.loads(self.manifest_path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise BatchError(f"{self.manifest_path}: not a readable batch manifest ({e}); delete {self.dir} "
                                 "to start over") from e
            if not isinstance(stored, dict) or stored.get("format") != FORMAT_VERSION:
                raise BatchError(f"{self.manifest_path}: not a batch manifest of format {FORMAT_VERSION}; delete "
                                 f"{self.dir} to start over")
            differences = _differences(stored.get("job") or {}, self.job)
            if differences:
                raise BatchError(f"{self.manifest_path}: this work directory belongs to another batch job "
                                 f"({'; '.join(differences)}); rerun with that job's artifact, users and options "
                                 f"to finish it, or delete {self.dir} (or pass another work directory) to start "
                                 "over")
            return
        if self.dir.exists() and any(self.dir.iterdir()):
            raise BatchError(f"{self.dir}: exists and holds files but no {MANIFEST}: not a batch work directory; "
                             "delete it or pass another work directory")
        self.dir.mkdir(parents=True, exist_ok=True)
        _replace_atomically(lambda tmp: write_json(tmp, {"format": FORMAT_VERSION, "job": self.job}),
                            self.manifest_path)

    def chunk_path(self, index: int) -> Path:
        return self.dir / f"chunk-{index:06d}.parquet"

    def done(self, index: int) -> bool:
        return self.chunk_path(index).is_file()

    def write(self, index: int, table: pa.Table) -> Path:
        path = self.chunk_path(index)
        _replace_atomically(lambda tmp: pq.write_table(table, tmp), path)
        return path

    def assemble(self, out: Path, n_chunks: int, schema: pa.Schema) -> int:
        """Concatenate chunks 1..n_chunks into `out` (atomically), one chunk in memory at a time; the row count."""
        out.parent.mkdir(parents=True, exist_ok=True)
        rows = 0

        def write(tmp: Path) -> None:
            nonlocal rows
            with pq.ParquetWriter(tmp, schema) as writer:
                for index in range(1, n_chunks + 1):
                    table = pq.read_table(self.chunk_path(index))
                    if not table.schema.equals(schema):
                        raise BatchError(f"{self.chunk_path(index)}: columns {table.schema.names} are not this "
                                         f"job's {schema.names}; delete {self.dir} to start over")
                    writer.write_table(table)
                    rows += table.num_rows

        _replace_atomically(write, out)
        return rows

    def remove(self) -> None:
        shutil.rmtree(self.dir)


def _differences(stored: dict, now: dict) -> list[str]:
    """'key: recorded X, now Y' for each top-level key that differs (values cut for the message)."""
    out = []
    for key in sorted(set(stored) | set(now)):
        if stored.get(key) != now.get(key):
            out.append(f"{key}: recorded {_cut(stored.get(key))}, now {_cut(now.get(key))}")
    return out


def _cut(value, limit: int = 100) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 1] + "…"
