"""The built-in dataset: a seeded, synthetic e-commerce world (English or Chinese product text).

The world is small but structured like a real shop, so that reading product text pays off:

- Catalog: 60 leaf categories under 8 top categories ("Electronics > Cameras > Mirrorless Cameras"),
  brands that each sell in a few related categories at a price positioning (budget / mid / premium),
  attributes (color, size, material) and templated, varied titles and descriptions that mention the
  category, the brand, the attributes and the price level.
- Users: 1-3 preferred top categories, favourite brands, a brand loyalty and a price level.
- Sequences: leaf categories are linked into "next purchase" chains (camera -> memory card -> tripod,
  laptop -> laptop bag -> mouse, ...). Each next purchase is mostly a complement of (or in the same
  category as) a recent purchase, at the user's price level, often from a brand already bought or a
  favourite one; trending bestsellers and random browsing are the minority.
- Popularity is long-tailed (Zipf within each category), so many specific items are rare: item-to-item
  co-occurrence is sparse, while categories, brands and price levels generalise.

Everything is drawn from one `numpy.random.Generator(seed)`: the same arguments give identical tables,
and the English and Chinese worlds of one seed share ids, prices, attributes and events (only the text
differs). Raw user ids ("user_00042") are pseudonymized before the interactions are built.

Modules, each importing only those before it: `tables` (taxonomy, vocabularies, knobs), `world` (items
and brands), `simulate` (shoppers' sequences), `render` (product text: one renderer, a spec per language).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from towerrec.data.privacy import pseudonymize
from towerrec.data.schema import Catalog, DataError, Dataset, Interactions
from towerrec.data.synthetic.render import SPECS, render_catalog
from towerrec.data.synthetic.simulate import simulate
from towerrec.data.synthetic.tables import LEAF_TEXT, LEAVES
from towerrec.data.synthetic.world import build_world

__all__ = ["generate", "complements", "LANGUAGES"]

LANGUAGES = tuple(SPECS)


def complements(language: str = "en") -> dict[str, tuple[str, ...]]:
    """Each leaf category path -> its complementary "next purchase" category paths, strongest first."""
    _check_language(language)
    path = {leaf.key: text.path for leaf, text in zip(LEAVES, LEAF_TEXT[language])}
    return {path[leaf.key]: tuple(path[k] for k in leaf.next) for leaf in LEAVES}


def generate(
    num_items: int = 3000,
    num_users: int = 5000,
    seed: int = 0,
    language: str = "en",
    min_len: int = 4,
    max_len: int = 20,
    user_id_secret: str | None = None,
) -> Dataset:
    """A synthetic e-commerce dataset ("synthetic" or "synthetic-zh"); same arguments, same tables."""
    _check_args(num_items, num_users, language, min_len, max_len)
    rng = np.random.default_rng(seed)
    world = build_world(rng, num_items)
    users, items, timestamps = simulate(rng, world, num_users, min_len, max_len)

    items_df = render_catalog(world, language)
    pseudonyms = np.array(pseudonymize([f"user_{u:05d}" for u in range(num_users)], user_id_secret), dtype=object)
    events = pd.DataFrame(
        {"user_id": pseudonyms[users], "item_id": items_df["item_id"].to_numpy()[items], "timestamp": timestamps}
    )
    events = events.sort_values("timestamp", kind="mergesort").reset_index(drop=True)  # a log, oldest first
    return Dataset(SPECS[language].dataset_name, Catalog(items_df), Interactions(events))


def _check_language(language: str) -> None:
    if language not in LANGUAGES:
        raise DataError(f"synthetic dataset: language must be one of {LANGUAGES}, got {language!r}")


def _check_args(num_items: int, num_users: int, language: str, min_len: int, max_len: int) -> None:
    _check_language(language)
    if num_items < len(LEAVES):
        raise DataError(
            f"synthetic dataset: num_items must be at least {len(LEAVES)} (one per category), got {num_items}"
        )
    if num_users < 1:
        raise DataError(f"synthetic dataset: num_users must be at least 1, got {num_users}")
    if min_len < 1 or max_len < min_len:
        raise DataError(f"synthetic dataset: need 1 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")
