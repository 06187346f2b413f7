"""Recommendation filters over an artifact's catalog, shared by the service and the batch job.

`Filters` is what a caller asks for (a category path prefix, a price range, whether seen items are left out;
the service's request model has the same fields). `CatalogFilters` turns them into one (N,) boolean mask over
the artifact's table positions: the category through `Retriever.category_mask`, asked only for category paths
that exist (`category_prefixes`), so arbitrary strings cannot grow its cache; the price range with unknown
prices left out when a bound is given. `popular` is the cold-start answer under the same mask: the most
popular products (training counts), seen ones left out.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from towerrec.data.schema import CATEGORY_SEP
from towerrec.retrieval.retriever import Retriever, category_key


@dataclasses.dataclass(frozen=True)
class Filters:
    category: str | None = None  # keep products under this category path ('A > B' matches 'A > B > C')
    price_min: float | None = None  # keep products priced at least this (unknown prices then left out)
    price_max: float | None = None
    exclude_seen: bool = True  # leave out products already in the history


def category_prefixes(categories: Sequence[str | None]) -> frozenset[str]:
    """Every category path prefix present in a catalog ('A > B > C' gives 'A', 'A > B', 'A > B > C')."""
    out: set[str] = set()
    for c in set(categories):
        if not c:
            continue
        parts = category_key(c).split(CATEGORY_SEP)
        out.update(CATEGORY_SEP.join(parts[: i + 1]) for i in range(len(parts)))
    return frozenset(out)


class CatalogFilters:
    """Filter masks and the filtered popularity fallback of one Retriever's artifact."""

    def __init__(self, retriever: Retriever):
        self.retriever = retriever
        self.table = retriever.table
        self.num_items = len(self.table)
        self.categories = category_prefixes([p["category"] for p in self.table.products])  # filters that match
        self.popularity = np.asarray(retriever.artifact.popularity, dtype=np.int64)  # (N,)
        self.popularity_order = np.argsort(-self.popularity, kind="stable")  # positions, most popular first

    def mask(self, filters, notes: list[str] | None = None) -> np.ndarray | None:
        """(N,) bool mask of the products passing `filters` (a `Filters` or anything with its fields); None when
        no filter is set. Why nothing can match goes to `notes`."""
        category = filters.category if filters.category and filters.category.strip() else None
        priced = filters.price_min is not None or filters.price_max is not None
        if priced and filters.price_min is not None and filters.price_max is not None \
                and filters.price_min > filters.price_max:
            if notes is not None:
                notes.append(f"filters.price_min ({filters.price_min:g}) is above filters.price_max "
                             f"({filters.price_max:g}): no product can match")
            return np.zeros(self.num_items, dtype=bool)
        mask = None
        if category is not None:
            if category_key(category) not in self.categories:
                return np.zeros(self.num_items, dtype=bool)  # no product has this category
            mask = self.retriever.category_mask(category)  # cached: not to be modified
        if priced:
            lo = -math.inf if filters.price_min is None else filters.price_min
            hi = math.inf if filters.price_max is None else filters.price_max
            with np.errstate(invalid="ignore"):
                price_ok = (self.table.prices >= lo) & (self.table.prices <= hi)  # NaN (unknown) compares False
            mask = price_ok if mask is None else mask & price_ok
        return mask

    def popular(self, k: int, exclude_positions: np.ndarray, mask: np.ndarray | None) -> list[tuple[int, float]]:
        """The k most popular (table position, training count) passing `mask`, `exclude_positions` left out."""
        order = self.popularity_order
        keep = np.ones(self.num_items, dtype=bool) if mask is None else mask.copy()
        keep[exclude_positions] = False
        top = order[keep[order]][:k]
        return [(int(p), float(self.popularity[p])) for p in top]
