"""Pieces the benchmark scripts share: the project's Hydra config and the JSON results file."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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
