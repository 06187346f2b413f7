"""Filters over an artifact's catalog (towerrec.retrieval.filters), the ones the service and the batch job share:
category prefixes at path-segment boundaries, price ranges with unknown prices left out, the popularity
fallback under a mask."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.serve import export_tiny_artifact

from towerrec.retrieval import Retriever
from towerrec.retrieval.filters import CatalogFilters, Filters, category_prefixes


@pytest.fixture(scope="module")
def filters(tiny_split, tmp_path_factory) -> CatalogFilters:
    return CatalogFilters(Retriever(export_tiny_artifact(tmp_path_factory.mktemp("filters") / "a", tiny_split)))


def test_category_prefixes():
    assert category_prefixes(["Home > Kitchen > Coffee", "Books", None, ""]) == {
        "Home", "Home > Kitchen", "Home > Kitchen > Coffee", "Books"}
    assert category_prefixes(["A>B "]) == {"A", "A > B"}


def test_masks(filters):
    items = filters.retriever.items
    assert filters.mask(Filters()) is None and filters.mask(Filters(category="  ")) is None
    top = items["category"].iloc[0].split(" > ")[0]
    cats = items["category"]
    expected = ((cats == top) | cats.str.startswith(top + " > ")).to_numpy()
    assert np.array_equal(filters.mask(Filters(category=top)), expected) and 0 < expected.sum() < len(items)
    assert not filters.mask(Filters(category=top[:-1])).any()  # a prefix inside a segment matches nothing
    prices = items["price"].to_numpy()
    lo, hi = np.nanpercentile(prices, [25, 75])
    priced = filters.mask(Filters(price_min=lo, price_max=hi))
    assert np.array_equal(priced, (prices >= lo) & (prices <= hi))  # NaN prices are out
    both = filters.mask(Filters(category=top, price_max=hi))
    assert np.array_equal(both, expected & (prices <= hi))
    notes = []
    assert not filters.mask(Filters(price_min=5, price_max=1), notes).any() and "above" in notes[0]


def test_popular_under_a_mask_leaves_out_the_excluded(filters):
    counts = filters.popularity
    mask = np.zeros(filters.num_items, dtype=bool)
    mask[::2] = True
    exclude = np.flatnonzero(mask)[np.argsort(-counts[mask], kind="stable")][:1]  # the most popular allowed one
    hits = filters.popular(4, exclude, mask)
    assert len(hits) == 4 and all(mask[p] and p not in exclude for p, _ in hits)
    scores = [s for _, s in hits]
    assert scores == sorted(scores, reverse=True) and scores == [float(counts[p]) for p, _ in hits]
    assert filters.popular(5, np.zeros(0, dtype=np.int64), None)[0][0] == int(np.argmax(counts))
