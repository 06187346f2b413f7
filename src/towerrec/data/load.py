"""Dataset registry and entry points: `load_dataset` (a data config -> `Dataset`) and `load_split`
(a data config -> the leave-last-out `Split`).

Every file format shares three options:
- `on_bad_rows`: 'error' raises a `DataError` naming file:line at the first bad row; 'skip' drops
  bad rows, counts them in a `BadRows` and logs a summary.
- `user_id_secret`: key for `pseudonymize`; raw user ids never leave the loaders.
- `max_text_chars`: longer catalog texts (titles, descriptions, ...) are cut, with one counted warning.
- `max_bad_row_share` (default 0.01): in skip mode, a file whose skipped rows (unknown items, bad
  timestamps, unreadable lines, ...) pass this share of its rows stops the load with a `DataError`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from towerrec.data.formats.amazon2023 import load_amazon2023
from towerrec.data.formats.recbole import load_recbole
from towerrec.data.formats.table import load_table
from towerrec.data.schema import DataError, Dataset, quoted
from towerrec.data.splits import Split, leave_last_out

log = logging.getLogger(__name__)

_SHARED_KEYS = ("on_bad_rows", "user_id_secret", "max_text_chars", "max_bad_row_share")
_KIND_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {  # kind -> (required, optional)
    "recbole": (("path", "name"), ()),
    "amazon2023": (("reviews_path", "meta_path"), ("name",)),
    "table": (("catalog_path", "interactions_path"), ("columns", "name")),
    "synthetic": ((), ("num_items", "num_users", "seed", "language", "min_len", "max_len")),
}


def load_dataset(cfg: Mapping) -> Dataset:
    """Load the dataset a config describes: `kind` in {recbole, amazon2023, table, synthetic} plus
    that kind's keys and the shared on_bad_rows / user_id_secret / max_text_chars / max_bad_row_share."""
    cfg = dict(cfg)
    kind = cfg.pop("kind", None)
    if kind not in _KIND_KEYS:
        raise DataError(f"data.kind must be one of {sorted(_KIND_KEYS)}, got {quoted(kind)}")
    required, optional = _KIND_KEYS[kind]
    unknown = sorted(set(cfg) - set(required) - set(optional) - set(_SHARED_KEYS))
    if unknown:
        allowed = sorted({"kind", *required, *optional, *_SHARED_KEYS})
        raise DataError(f"data config (kind={kind!r}): unknown key(s) {quoted(unknown)}; allowed keys are {allowed}")
    absent = [k for k in required if cfg.get(k) in (None, "")]
    if absent:
        raise DataError(f"data config (kind={kind!r}): missing required key(s) {absent}")
    shared = {k: v for k in _SHARED_KEYS if (v := cfg.pop(k, None)) is not None}
    if kind == "recbole":
        return load_recbole(cfg["path"], cfg["name"], **shared)
    if kind == "amazon2023":
        return load_amazon2023(cfg["reviews_path"], cfg["meta_path"], name=cfg.get("name"), **shared)
    if kind == "table":
        columns = cfg.get("columns")
        return load_table(
            cfg["catalog_path"], cfg["interactions_path"], dict(columns) if columns else None,
            name=cfg.get("name"), **shared,
        )
    from towerrec.data.synthetic import generate  # another module; imported only when used

    return generate(**cfg, user_id_secret=shared.get("user_id_secret"))


def load_split(params: Mapping) -> Split:
    """The leave-last-out split of the dataset `params` describes: the `load_dataset` keys plus
    `min_interactions` (default 3). `params` is a plain mapping (a Hydra config converted by the caller)."""
    params = dict(params)
    min_interactions = int(params.pop("min_interactions", 3))
    split = leave_last_out(load_dataset(params), min_interactions)
    lengths = np.array([len(s) for s in split.sequences])
    log.info("%s: %d items, %d users, %d interactions (mean %.1f per user), fingerprint %s", split.name,
             split.num_items, len(split.users), lengths.sum(), lengths.mean(), split.fingerprint)
    return split
