"""Filters over an artifact's catalog (towerrec.retrieval.filters), the ones the service and the batch job share:
category prefixes at path-segment boundaries, price ranges with unknown prices left out, the popularity
fallback under a filter."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.serve import export_tiny_artifact

from towerrec.retrieval import Retriever
from towerrec.retrieval.filters import CatalogFilters, Filters


@pytest.fixture(scope="module")
def filters(tiny_split, tmp_path_factory) -> CatalogFilters:
    return CatalogFilters(Retriever(export_tiny_artifact(tmp_path_factory.mktemp("filters") / "a", tiny_split)))


def mask(filters: CatalogFilters, request: Filters, notes: list[str] | None = None):
    """The (N,) mask the Retriever applies for `request`."""
    return filters.retriever.filter_mask(filters.item_filter(request, notes))


def test_masks(filters):
    items = filters.retriever.items
    assert mask(filters, Filters()) is None and mask(filters, Filters(category="  ")) is None
    top = items["category"].iloc[0].split(" > ")[0]
    cats = items["category"]
    expected = ((cats == top) | cats.str.startswith(top + " > ")).to_numpy()
    assert np.array_equal(mask(filters, Filters(category=top)), expected) and 0 < expected.sum() < len(items)
    assert not mask(filters, Filters(category=top[:-1])).any()  # a prefix inside a segment matches nothing
    prices = items["price"].to_numpy()
    lo, hi = np.nanpercentile(prices, [25, 75])
    priced = mask(filters, Filters(price_min=lo, price_max=hi))
    assert np.array_equal(priced, (prices >= lo) & (prices <= hi))  # NaN prices are out
    both = mask(filters, Filters(category=top, price_max=hi))
    assert np.array_equal(both, expected & (prices <= hi))
    notes = []
    assert not mask(filters, Filters(price_min=5, price_max=1), notes).any() and "above" in notes[0]


def test_item_filter_is_none_without_a_condition(filters):
    assert filters.item_filter(Filters()) is None and filters.item_filter(Filters(category=" ")) is None
    f = filters.item_filter(Filters(category="A>B ", price_max=3.0, exclude_seen=False))
    assert (f.category, f.price_min, f.price_max) == ("A > B", None, 3.0)


def test_popular_under_a_filter_leaves_out_the_excluded(filters):
    counts = filters.popularity
    prices = filters.retriever.items["price"].to_numpy()
    item_filter = filters.item_filter(Filters(price_max=float(np.nanmedian(prices))))
    mask = filters.retriever.filter_mask(item_filter)
    assert 0 < mask.sum() < filters.num_items
    exclude = np.flatnonzero(mask)[np.argsort(-counts[mask], kind="stable")][:1]  # the most popular allowed one
    hits = filters.popular(4, exclude, item_filter)
    assert len(hits) == 4 and all(mask[p] and p not in exclude for p, _ in hits)
    scores = [s for _, s in hits]
    assert scores == sorted(scores, reverse=True) and scores == [float(counts[p]) for p, _ in hits]
    assert filters.popular(5, np.zeros(0, dtype=np.int64), None)[0][0] == int(np.argmax(counts))
