"""Metric dictionaries as people and files see them: slash prefixes, the printed table, metrics.json."""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)


def prefix(metrics: Mapping[str, float], stage: str) -> dict[str, float]:
    """{'recall@10': x} -> {'test/recall@10': x}."""
    stage = stage.strip("/")
    if not stage:
        raise ValueError("stage must be a non-empty name such as 'val' or 'test'")
    return {f"{stage}/{name}": value for name, value in metrics.items()}


def _fmt(value: object, counts_as_int: bool = False) -> str:
    if value is None:
        return "-"
    value = float(value)
    if counts_as_int and math.isfinite(value) and value.is_integer():
        return str(int(value))  # e.g. num_users
    return f"{value:.4f}"


def format_table(metrics: Mapping[str, float]) -> str:
    """Readable summary: one row per metric name, one column per K; other metrics listed below."""
    grid: dict[str, dict[int, float]] = {}
    others: dict[str, float] = {}
    for key, value in metrics.items():
        name, sep, k = key.rpartition("@")
        if sep and k.isdigit():
            grid.setdefault(name, {})[int(k)] = value
        else:
            others[key] = value
    lines = []
    if grid:
        cuts = sorted({k for row in grid.values() for k in row})
        table = [["metric", *(f"@{k}" for k in cuts)]]
        table += [[name, *(_fmt(row[k]) if k in row else "-" for k in cuts)] for name, row in grid.items()]
        widths = [max(len(r[c]) for r in table) for c in range(len(table[0]))]
        for r in table:
            cells = [r[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(r[1:], widths[1:])]
            lines.append("  ".join(cells))
    if others:
        width = max(len(key) for key in others)
        lines += [f"{key.ljust(width)}  {_fmt(value, counts_as_int=True)}" for key, value in others.items()]
    return "\n".join(lines)


def save_metrics(path: str | os.PathLike, metrics: Mapping[str, float]) -> None:
    """Write metrics as flat JSON with sorted keys and float values (atomically; parents created).

    Non-finite values are written as null (with a warning) so the file stays valid JSON.
    """
    flat: dict[str, float | None] = {}
    for key, value in metrics.items():
        if not isinstance(key, str):
            raise TypeError(f"metric names must be strings, got {key!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"metric {key!r} must be a number, got {type(value).__name__}") from None
        if not math.isfinite(number):
            log.warning("metric %s is %s; writing null", key, number)
            flat[key] = None
        else:
            flat[key] = number
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(flat, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
