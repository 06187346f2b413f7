"""Pieces the benchmark scripts share: the project's Hydra config, the artifact to measure, timestamped progress
lines and the JSON results file."""

from __future__ import annotations

import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
T0 = time.perf_counter()


def say(msg: str) -> None:
    """A progress line stamped with the seconds since the script started."""
    print(f"[{time.perf_counter() - T0:8.1f}s] {msg}", flush=True)


def latest_artifact(data_name: str = "scientific") -> Path:
    """The newest artifact under logs/train/runs whose manifest names `data_name` (case-insensitive)."""
    found = []
    for manifest in (REPO / "logs" / "train" / "runs").glob("*/artifact/manifest.json"):
        name = (json.loads(manifest.read_text()).get("data") or {}).get("name", "")
        if str(name).lower() == data_name.lower():
            found.append(manifest)
    if not found:
        raise SystemExit(f"no exported {data_name} artifact under {REPO / 'logs/train/runs'}: train one "
                         f"(e.g. `python train.py experiment=scientific`) or pass --artifact DIR")
    return max(found, key=lambda m: m.stat().st_mtime).parent


def compose_config(data: str, data_path: str | None = None, overrides: list[str] = ()):
    """conf/train.yaml composed for `data` (its text group too, when one has that name) plus `overrides`."""
    from hydra import compose, initialize_config_dir

    args = [f"data={data}", f"paths.root_dir={REPO}"]
    if (REPO / "conf" / "text" / f"{data}.yaml").is_file():
        args.append(f"text={data}")
    if data_path:
        args.append(f"data.path={data_path}")
    args += list(overrides)
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=args)


def write_results(path: Path | None, result: dict) -> None:
    """Write `result` as indented JSON to `path` (folders created); nothing when path is None."""
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")
