"""Building the synthetic world: brands, items, leaf traffic and demand, prices and attributes (numbers only).

Text is rendered later (`render`), so the English and Chinese worlds of one seed are the same numbers.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from towerrec.data.schema import CATEGORY_SEP
from towerrec.data.synthetic.tables import (
    BRAND_HEADS,
    BRAND_TAILS,
    CHAIN,
    ITEMS_PER_DEMAND,
    LEAF_INDEX,
    LEAVES,
    MODE_P,
    MODE_P_CONSUMABLE,
    MODEL_LETTERS,
    PALETTES,
    SAME,
    TIER_PRICE,
    TOP_WEIGHT,
    TOPS,
    ZIPF_EXPONENT,
    Leaf,
)


@dataclasses.dataclass
class World:
    """One seed's world as arrays; items are in catalog order (shuffled, so an index says nothing)."""

    leaf_top: np.ndarray  # (L,) top-category index of each leaf
    leaf_weight: np.ndarray  # (L,) traffic share of each leaf
    leaf_next: list[np.ndarray]  # L arrays of complementary leaf indices
    brand_heads: np.ndarray  # (B,) syllable indices of brand names
    brand_tails: np.ndarray  # (B,)
    brand_strength: np.ndarray  # (B,)
    brand_sells: np.ndarray  # (B, L) bool
    item_leaf: np.ndarray  # (N,)
    item_brand: np.ndarray  # (N,)
    item_tier: np.ndarray  # (N,) 0 budget, 1 mid, 2 premium
    item_price: np.ndarray  # (N,)
    item_pop: np.ndarray  # (N,) relative popularity within its leaf
    item_size: np.ndarray  # (N,) index into the leaf's sizes, -1 for none
    item_color: np.ndarray  # (N,) index into the leaf's palette, -1 for none
    item_material: np.ndarray  # (N,) index into the leaf's materials, -1 for none
    item_model: np.ndarray  # (N, 2) model letter and number
    item_text_draws: np.ndarray  # (N, 8) random ints choosing templates and synonyms (language-independent)


def successor_weights(n: int) -> np.ndarray:
    """(n,) probabilities of a leaf's complements, strongest first."""
    w = 1.0 / np.sqrt(np.arange(1, n + 1))
    return w / w.sum()


def _sizes_are_measured(leaf: Leaf) -> bool:
    """Sizes that are quantities (128 GB, 28 cm, 2 L: bigger costs more), not fits (M, EU 42)."""
    return any(ch.isdigit() for ch in "".join(leaf.sizes)) and not leaf.sizes[0].startswith("EU")


def _price(raw: np.ndarray, size: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Shelf prices: +20% per size step where sizes are quantities, ending in .99 (or .49 below 20)."""
    raw = raw * np.where(measured & (size > 0), 1.0 + 0.2 * size, 1.0)
    price = np.where(raw >= 20, np.round(raw) - 0.01, np.round(raw * 2) / 2 - 0.01)
    return np.maximum(price, 0.99)


def _leaf_demand(leaf_weight: np.ndarray, leaf_next: list[np.ndarray]) -> np.ndarray:
    """(L,) long-run share of purchases per leaf under the next-purchase chain (power iteration)."""
    num_leaves = len(leaf_weight)
    consumable = np.array([leaf.consumable for leaf in LEAVES])
    p = np.where(consumable[:, None], MODE_P_CONSUMABLE, MODE_P)  # (L, modes)
    move = np.zeros((num_leaves, num_leaves))  # (L, L) row-stochastic
    for i, succ in enumerate(leaf_next):
        move[i, succ] += p[i, CHAIN] * successor_weights(len(succ))
    move[np.arange(num_leaves), np.arange(num_leaves)] += p[:, SAME]
    move += (1.0 - p[:, CHAIN] - p[:, SAME])[:, None] * leaf_weight[None, :]  # elsewhere: about leaf traffic
    demand = leaf_weight.copy()
    for _ in range(50):
        demand = demand @ move
    return demand / demand.sum()


def build_world(rng: np.random.Generator, num_items: int) -> World:
    """Leaves' traffic, brands and `num_items` items, the first draws from `rng`."""
    num_leaves = len(LEAVES)
    leaf_top = np.array([TOPS.index(leaf.path.split(CATEGORY_SEP)[0]) for leaf in LEAVES])
    top_weight = np.array([TOP_WEIGHT[t] for t in TOPS])
    leaf_weight = top_weight[leaf_top] / np.bincount(leaf_top)[leaf_top] * rng.lognormal(0.0, 0.5, num_leaves)
    leaf_weight /= leaf_weight.sum()
    leaf_next = [np.array([LEAF_INDEX[k] for k in leaf.next]) for leaf in LEAVES]

    # brands: a home top category, a few leaves in it, sometimes a complementary leaf elsewhere
    num_brands = int(np.clip(round(num_items / 40), 30, len(BRAND_HEADS) * len(BRAND_TAILS)))
    pairs = rng.choice(len(BRAND_HEADS) * len(BRAND_TAILS), size=num_brands, replace=False)
    brand_heads, brand_tails = pairs // len(BRAND_TAILS), pairs % len(BRAND_TAILS)
    brand_strength = rng.lognormal(0.0, 0.6, num_brands)
    brand_tier = rng.choice(3, size=num_brands, p=[0.35, 0.40, 0.25])
    home_p = top_weight * np.bincount(leaf_top)  # more brands where there are more categories
    brand_home = rng.choice(len(TOPS), size=num_brands, p=home_p / home_p.sum())
    sells = np.zeros((num_brands, num_leaves), dtype=bool)
    for b in range(num_brands):
        in_home = np.flatnonzero(leaf_top == brand_home[b])
        k = min(len(in_home), int(rng.integers(2, 7)))
        chosen = rng.choice(in_home, size=k, replace=False)
        sells[b, chosen] = True
        if rng.random() < 0.3:
            extra = np.concatenate([leaf_next[c] for c in chosen])
            sells[b, rng.choice(extra)] = True
    for leaf in range(num_leaves):  # every leaf gets two brands, preferably lightly loaded ones from its top
        missing = 2 - int(sells[:, leaf].sum())
        if missing > 0:
            pool = np.flatnonzero(~sells[:, leaf])
            fit = np.where(brand_home[pool] == leaf_top[leaf], 10.0, 1.0) / (1.0 + sells[pool].sum(axis=1)) ** 2
            sells[rng.choice(pool, size=missing, replace=False, p=fit / fit.sum()), leaf] = True

    # items per leaf: at least one each, the rest in proportion to the expected purchases
    share = _leaf_demand(leaf_weight, leaf_next) ** ITEMS_PER_DEMAND
    share /= share.sum()
    counts = 1 + rng.multinomial(num_items - num_leaves, share)
    item_leaf = np.repeat(np.arange(num_leaves), counts)
    item_brand = np.empty(num_items, dtype=np.int64)
    item_pop = np.empty(num_items)
    for leaf in range(num_leaves):
        at = np.flatnonzero(item_leaf == leaf)
        brands = np.flatnonzero(sells[:, leaf])
        p = brand_strength[brands] / brand_strength[brands].sum()
        item_brand[at] = rng.choice(brands, size=len(at), p=p)
        ranks = rng.permutation(len(at)) + 1
        item_pop[at] = ranks ** (-ZIPF_EXPONENT) * np.sqrt(brand_strength[item_brand[at]])

    # a brand's items sit mostly at its price positioning
    shift = rng.choice([-1, 0, 1], size=num_items, p=[0.15, 0.7, 0.15])
    item_tier = np.clip(brand_tier[item_brand] + shift, 0, 2)

    def attribute(options_per_leaf: list[int]) -> np.ndarray:
        n = np.array(options_per_leaf)[item_leaf]
        return np.where(n > 0, (rng.random(num_items) * np.maximum(n, 1)).astype(np.int64), -1)

    item_size = attribute([len(leaf.sizes) for leaf in LEAVES])
    base = np.array([leaf.price for leaf in LEAVES])[item_leaf] * TIER_PRICE[item_tier]
    measured = np.array([_sizes_are_measured(leaf) for leaf in LEAVES])[item_leaf]
    item_price = _price(base * rng.lognormal(0.0, 0.15, num_items), item_size, measured)
    item_color = attribute([len(PALETTES[leaf.colors]) if leaf.colors else 0 for leaf in LEAVES])
    item_material = attribute([len(leaf.materials) for leaf in LEAVES])
    item_model = np.stack([rng.integers(0, len(MODEL_LETTERS), num_items), rng.integers(1, 100, num_items)], 1)
    text_draws = rng.integers(0, 1 << 30, size=(num_items, 8))

    # shuffle rows so that the item index says nothing about the category
    perm = rng.permutation(num_items)
    return World(
        leaf_top=leaf_top,
        leaf_weight=leaf_weight,
        leaf_next=leaf_next,
        brand_heads=brand_heads,
        brand_tails=brand_tails,
        brand_strength=brand_strength,
        brand_sells=sells,
        item_leaf=item_leaf[perm],
        item_brand=item_brand[perm],
        item_tier=item_tier[perm],
        item_price=item_price[perm],
        item_pop=item_pop[perm],
        item_size=item_size[perm],
        item_color=item_color[perm],
        item_material=item_material[perm],
        item_model=item_model[perm],
        item_text_draws=text_draws,
    )
