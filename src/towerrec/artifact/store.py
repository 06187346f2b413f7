"""Atomic, crash-safe writes of an artifact directory: an inter-process lock, a temporary directory,
checksums, and two renames (the previous version aside first, deleted last).

A crash at any point leaves a complete artifact: either the new one, or the previous one, which
`Artifact.load` and the next write pick up from its aside name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

from towerrec.artifact.format import MANIFEST
from towerrec.utils.io import sha256_file, write_json

log = logging.getLogger(__name__)

_LOCKS: dict[str, int] = {}
_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def artifact_lock(out_dir: str | os.PathLike):
    """Exclusive inter-process lock on an artifact path (re-entrant within a process) for writers."""
    out_dir = Path(out_dir).absolute()
    key = str(out_dir)
    with _LOCKS_GUARD:
        held = _LOCKS.get(key, 0)
        _LOCKS[key] = held + 1
    if held:
        try:
            yield
        finally:
            with _LOCKS_GUARD:
                _LOCKS[key] -= 1
        return
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out_dir.parent / f".{out_dir.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - not POSIX: no inter-process lock
            pass
        yield
    finally:
        os.close(fd)  # releases the flock
        with _LOCKS_GUARD:
            _LOCKS.pop(key, None)


def aside_path(out_dir: Path) -> Path:
    return out_dir.parent / f".{out_dir.name}.old"


def write_artifact(out_dir: str | os.PathLike, write: Callable[[Path], dict],
                   known_checksums: Mapping[str, dict] | None = None) -> Path:
    """Run `write(tmp)` (files -> tmp, returns the manifest without checksums), checksum, then swap in.

    `known_checksums`: entries of files hard-linked unchanged from the previous version (not re-hashed).
    """
    out_dir = Path(out_dir).absolute()
    with artifact_lock(out_dir):
        recover(out_dir)
        for stale in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):  # left by a killed writer
            shutil.rmtree(stale, ignore_errors=True)
        tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:12]}"
        tmp.mkdir()
        try:
            manifest = write(tmp)
            files = {}
            for f in sorted(p for p in tmp.rglob("*") if p.is_file()):
                rel = f.relative_to(tmp).as_posix()
                if rel == MANIFEST:
                    continue
                os.chmod(f, 0o644)  # safetensors writes 0600; an artifact is meant to be shared read-only
                known = (known_checksums or {}).get(rel)
                files[rel] = dict(known) if known else {"sha256": sha256_file(f), "bytes": f.stat().st_size}
            manifest = {**manifest, "files": files}
            write_json(tmp / MANIFEST, manifest)
            _fsync_tree(tmp)
            _swap_in(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out_dir


def _swap_in(tmp: Path, out_dir: Path) -> None:
    """Rename tmp to out_dir; a previous version is renamed aside first and deleted last."""
    aside = aside_path(out_dir)
    if out_dir.exists():
        if aside.exists():
            shutil.rmtree(aside)  # a half-deleted leftover: out_dir is the complete version
        os.rename(out_dir, aside)
        _fsync_dir(out_dir.parent)
    os.rename(tmp, out_dir)
    _fsync_dir(out_dir.parent)
    if aside.exists():
        shutil.rmtree(aside)


def recover(out_dir: Path) -> None:
    """Undo a write interrupted between its two renames: put the previous version back."""
    aside = aside_path(out_dir)
    if not out_dir.exists() and aside.exists():
        log.warning("restoring %s from %s (an earlier write was interrupted)", out_dir, aside)
        os.rename(aside, out_dir)


def _fsync_tree(root: Path) -> None:
    for p in sorted(root.rglob("*"), reverse=True):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        else:
            _fsync_dir(p)
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)

