"""Recommendation filters over an artifact's catalog, shared by the service and the batch job.

`Filters` is what a caller asks for (a category path prefix, a price range, whether seen items are left out;
the service's request model has the same fields). `CatalogFilters` turns them into the one `ItemFilter` the
Retriever searches with, on either backend (for FAISS an (N,) mask over table positions, `Retriever.filter_mask`:
category masks cached only for category paths the catalog has, unknown prices failing any price bound; for
Milvus an expression), noting why nothing can match.
`popular` is the cold-start answer under the same filter: the most popular products (training counts), seen
ones left out.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from towerrec.artifact.items import ItemFilter
from towerrec.retrieval.retriever import Retriever


@dataclasses.dataclass(frozen=True)
class Filters:
    category: str | None = None  # keep products under this category path ('A > B' matches 'A > B > C')
    price_min: float | None = None  # keep products priced at least this (unknown prices then left out)
    price_max: float | None = None
    exclude_seen: bool = True  # leave out products already in the history


class CatalogFilters:
    """Filters and the filtered popularity fallback of one Retriever's artifact."""

    def __init__(self, retriever: Retriever):
        self.retriever = retriever
        self.num_items = len(retriever.table)
        self.popularity = np.asarray(retriever.artifact.popularity, dtype=np.int64)  # (N,)
        self.popularity_order = np.argsort(-self.popularity, kind="stable")  # positions, most popular first

    def item_filter(self, filters, notes: list[str] | None = None) -> ItemFilter | None:
        """`filters` (a `Filters` or anything with its fields) as one ItemFilter; None when no filter is set.
        Why nothing can match goes to `notes`."""
        lo, hi = filters.price_min, filters.price_max
        if lo is not None and hi is not None and lo > hi and notes is not None:
            notes.append(f"filters.price_min ({lo:g}) is above filters.price_max ({hi:g}): no product can match")
        item_filter = ItemFilter(filters.category, lo, hi)
        return None if item_filter.empty else item_filter

    def popular(self, k: int, exclude_positions: np.ndarray,
                item_filter: ItemFilter | None) -> list[tuple[int, float]]:
        """The k most popular (table position, training count) passing `item_filter`, `exclude_positions` left
        out."""
        order = self.popularity_order
        mask = self.retriever.filter_mask(item_filter)
        keep = np.ones(self.num_items, dtype=bool) if mask is None else mask.copy()
        keep[exclude_positions] = False
        top = order[keep[order]][:k]
        return [(int(p), float(self.popularity[p])) for p in top]
