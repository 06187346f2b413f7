"""Read a Hydra multirun (grid or Optuna) into one table: a row per job, its overrides and its metrics.

A multirun writes `SWEEP_DIR/<job>/.hydra/overrides.yaml` (the job's command-line overrides, e.g.
`loss.temperature=0.05`) and, for a job that finished, `SWEEP_DIR/<job>/metrics.json` (`towerrec.tasks.train`);
a job that raised leaves `error.log` instead (train.py). The Optuna sweeper adds
`SWEEP_DIR/optimization_results.yaml` (best parameters and value). Overrides are parsed with Hydra's own
override grammar, so `0.05` is a float, `choice` values are typed and `+key=value` / `++key=value` count as
`key`. Any directory holding jobs may be given: one sweep, or a `multiruns/` root holding several.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

__all__ = ["load_sweep", "swept_params"]

STATUS_OK, STATUS_FAILED, STATUS_INCOMPLETE = "ok", "failed", "incomplete"


def _parse_overrides(path: Path) -> dict[str, object]:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    lines = OmegaConf.to_container(OmegaConf.load(path))
    if not isinstance(lines, list):
        raise ValueError(f"{path}: expected a list of overrides, got {type(lines).__name__}")
    parser = OverridesParser.create()
    params: dict[str, object] = {}
    for i, line in enumerate(lines, start=1):
        try:
            (override,) = parser.parse_overrides([str(line)])
        except Exception as err:
            raise ValueError(f"{path}, line {i}: cannot parse the override {line!r}: {err}") from None
        if override.is_delete():
            continue
        value = override.value()
        if not isinstance(value, (str, int, float, bool, type(None))):
            value = str(override.get_value_element_as_str())  # lists, dicts: compared as text
        params[override.key_or_group] = value
    return params


def _read_metrics(path: Path) -> dict[str, float]:
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object of metrics")
    return {k: (math.nan if v is None else float(v)) for k, v in raw.items()}


def _job_sort_key(rel: Path) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in rel.parts)


def load_sweep(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per job under `sweep_dir`: `job` (its path relative to sweep_dir), `status` (ok, failed,
    incomplete), one column per override key and one per metric (`val/ndcg@10`, ...).

    `df.attrs["params"]` lists the override columns; `df.attrs["optuna"]` holds the parsed
    optimization_results.yaml (best_params, best_value) when the sweep was an Optuna search."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"sweep directory {root} does not exist")
    jobs = sorted((p.parent.parent for p in root.rglob(".hydra/overrides.yaml")),
                  key=lambda p: _job_sort_key(p.relative_to(root)))
    if not jobs:
        raise FileNotFoundError(f"no Hydra job under {root}: no */.hydra/overrides.yaml (run `python train.py -m ...`)")
    rows, param_names = [], []
    for job in jobs:
        params = _parse_overrides(job / ".hydra" / "overrides.yaml")
        param_names += [k for k in params if k not in param_names]
        metrics_file = job / "metrics.json"
        if metrics_file.is_file():
            status, metrics = STATUS_OK, _read_metrics(metrics_file)
        else:
            status, metrics = (STATUS_FAILED if (job / "error.log").is_file() else STATUS_INCOMPLETE), {}
        rel = job.relative_to(root).as_posix()
        rows.append({"job": "." if rel == "." else rel, "status": status, **params, **metrics})
    df = pd.DataFrame(rows)
    df.attrs["params"] = param_names
    results = [p for p in root.rglob("optimization_results.yaml")]
    if len(results) == 1:
        from omegaconf import OmegaConf

        df.attrs["optuna"] = OmegaConf.to_container(OmegaConf.load(results[0]))
    return df


def swept_params(df: pd.DataFrame) -> list[str]:
    """The override columns that take more than one value across the jobs (what the sweep varied)."""
    names = df.attrs.get("params") or []
    return [n for n in names if n in df.columns and df[n].astype(str).nunique(dropna=False) > 1]
