"""Render items and users as text. Pure functions of their inputs, configured by `conf/text/`.

An item becomes e.g. "Mirrorless camera X100 | Brand: Fujix | Category: Electronics > Cameras | color: black | Price: $799.00".
A user becomes their most recent history items, newest first, separated by " ; ", cut to a token budget.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from towerrec.data.schema import Catalog
from towerrec.utils.io import check_fields


@dataclasses.dataclass(frozen=True)
class TextConfig:
    item_fields: tuple[str, ...] = ("title", "brand", "category", "attributes", "price")  # for the product tower
    history_fields: tuple[str, ...] = ("title", "brand", "category")  # per history item, for the user tower
    labels: dict = dataclasses.field(default_factory=lambda: {"brand": "Brand", "category": "Category", "price": "Price"})
    field_sep: str = " | "
    item_sep: str = " ; "
    user_prefix: str = ""
    price_format: str = "${:.2f}"
    max_field_chars: int = 300  # long descriptions are cut before tokenization
    attribute_columns: tuple[str, ...] | None = None  # extra columns shown as attributes (None: all)
    user_max_items: int = 20  # newest N history items
    user_max_tokens: int = 128  # budget for the whole user text (as counted by count_tokens)

    @classmethod
    def from_dict(cls, d) -> "TextConfig":
        d = dict(d)
        for key in ("item_fields", "history_fields", "attribute_columns"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        if "labels" in d:
            d["labels"] = dict(d["labels"])
        check_fields(cls, d, "text")
        return cls(**d)


def _field_text(row: pd.Series, field: str, cfg: TextConfig, extra_columns: Sequence[str]) -> str:
    if field == "attributes":  # every extra column, "name: value"
        columns = cfg.attribute_columns if cfg.attribute_columns is not None else extra_columns
        parts = [f"{c}: {_clean(row[c], cfg)}" for c in columns if c != "text" and _present(row.get(c))]
        return ", ".join(parts)
    value = row.get(field)
    if not _present(value):
        return ""
    if field == "price":
        value = cfg.price_format.format(float(value))
    text = _clean(value, cfg)
    label = cfg.labels.get(field)
    return f"{label}: {text}" if label else text


def _clean(value, cfg: TextConfig) -> str:
    return " ".join(str(value).split())[: cfg.max_field_chars]


def _present(value) -> bool:
    if value is None:
        return False
    if isinstance(value, float) and math.isnan(value):
        return False
    return str(value).strip() != ""


def render_item(row: pd.Series, cfg: TextConfig, fields: Sequence[str] | None = None, extra_columns: Sequence[str] = ()) -> str:
    """One catalog row as text, skipping empty fields."""
    parts = (_field_text(row, f, cfg, extra_columns) for f in (fields or cfg.item_fields))
    return cfg.field_sep.join(p for p in parts if p)


def render_items(catalog: Catalog, cfg: TextConfig, fields: Sequence[str] | None = None) -> list[str]:
    """Text of every catalog item, in catalog order."""
    extra = catalog.extra_columns
    return [render_item(row, cfg, fields, extra) for _, row in catalog.items.iterrows()]


def whitespace_tokens(text: str) -> int:
    return len(text.split())


def render_user(
    history_texts: Sequence[str],
    cfg: TextConfig,
    count_tokens: Callable[[str], int] = whitespace_tokens,
) -> str:
    """A user from the texts of their history items (oldest first, as stored): newest first, within budget.

    Items are added newest first until `user_max_items` or the `user_max_tokens` budget is reached; the
    newest item is always included (cut by the tokenizer later if it alone exceeds the budget).
    """
    chosen: list[str] = []
    used = count_tokens(cfg.user_prefix) if cfg.user_prefix else 0
    sep_cost = count_tokens(cfg.item_sep) if cfg.item_sep.strip() else 0
    for text in reversed(history_texts[-cfg.user_max_items :] if cfg.user_max_items > 0 else []):
        cost = count_tokens(text) + (sep_cost if chosen else 0)
        if chosen and used + cost > cfg.user_max_tokens:
            break
        chosen.append(text)
        used += cost
    return cfg.user_prefix + cfg.item_sep.join(chosen)


class UserText:
    """The user tower's input for histories over one catalog: `render_user` over the items' history texts, with
    each text's token count computed once. Training, evaluation and serving all render users through this."""

    def __init__(self, history_texts: Sequence[str], cfg: TextConfig,
                 count_tokens: Callable[[str], int] = whitespace_tokens):
        self.history_texts, self.cfg, self._count = list(history_texts), cfg, count_tokens
        self._counts: dict[str, int] = {}

    def count_tokens(self, text: str) -> int:
        n = self._counts.get(text)
        if n is None:
            n = self._counts[text] = self._count(text)
        return n

    def __call__(self, positions: Sequence[int], free_text: str | None = None) -> str:
        """User text of a history (catalog positions, oldest first; -1 = unknown, skipped). Free text (a query)
        is the newest "item": rendered first and always kept; the oldest history items are dropped first."""
        recent = np.asarray(positions, dtype=np.int64)
        recent = recent[-self.cfg.user_max_items :] if self.cfg.user_max_items > 0 else recent[:0]
        texts = [self.history_texts[p] for p in recent if p >= 0]
        if free_text is not None and free_text.strip():
            texts.append(" ".join(free_text.split()))
        return render_user(texts, self.cfg, count_tokens=self.count_tokens)
