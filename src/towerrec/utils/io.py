"""Plain values and files: config -> dict, JSON-safe copies, redaction, sha256, timestamps, atomic numpy cache
files. No towerrec imports."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

SECRET_WORDS = ("secret", "password", "token", "api_key", "apikey", "credential")


def to_plain(cfg) -> dict:
    """A plain dict from a mapping or an OmegaConf DictConfig (interpolations resolved); None -> {}."""
    if cfg is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return dict(OmegaConf.to_container(cfg, resolve=True))
    except ImportError:  # pragma: no cover - omegaconf comes with hydra-core
        pass
    return dict(cfg)


def jsonable(obj):
    """JSON-safe copy: tuples -> lists, numpy scalars -> Python, non-finite floats -> None, others -> str."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


def redact(obj):
    """Drop the values of secret-looking keys (e.g. data.user_id_secret) from a config."""
    if isinstance(obj, dict):
        return {k: ("<redacted>" if any(w in k.lower() for w in SECRET_WORDS) and v is not None else redact(v))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def save_arrays(path: Path, arrays: np.ndarray | Mapping[str, np.ndarray]) -> None:
    """Write one array (`.npy`) or named arrays (`.npz`) to `path` atomically: through a temporary file of
    this process (DDP ranks may write the same cache file at once), then renamed over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp{path.suffix}")
    if isinstance(arrays, Mapping):
        np.savez(tmp, **arrays)
    else:
        np.save(tmp, arrays)
    tmp.replace(path)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def unknown_fields(cls, d: Mapping) -> set[str]:
    """Keys of `d` that are not fields of the dataclass `cls`."""
    return set(d) - {f.name for f in dataclasses.fields(cls)}


def check_fields(cls, d: Mapping, section: str) -> None:
    """Refuse keys that are not fields of the dataclass `cls`: a typo in a config group is an error."""
    unknown = unknown_fields(cls, d)
    if unknown:
        raise ValueError(f"unknown {section} option(s) {sorted(unknown)}")


def check_positive(cfg, names: Iterable[str], section: str) -> None:
    """Refuse settings of `cfg` among `names` that are below 1."""
    for name in names:
        if getattr(cfg, name) < 1:
            raise ValueError(f"{section}.{name} must be positive, got {getattr(cfg, name)}")
