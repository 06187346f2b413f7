"""The shoppers: preferences, next-purchase sequences and timestamps drawn over a built world."""

from __future__ import annotations

import numpy as np

from towerrec.data.synthetic.tables import (
    ANCHOR_LAST_P,
    BRAND_ANCHOR_P,
    CANDIDATES,
    CHAIN,
    COLOR_NAMES,
    COLOR_P,
    EPOCH,
    LEAVES,
    LOYALTY_BETA,
    MODE_P,
    MODE_P_CONSUMABLE,
    NUM_BESTSELLERS,
    PALETTES,
    PREFERRED,
    RANDOM,
    REDRAWS,
    SESSION_P,
    TIE_P,
    TIER_ANCHOR_P,
    TIER_USER_P,
    TOP_WEIGHT,
    TOPS,
    TRENDING,
    USER_TIER_P,
)
from towerrec.data.synthetic.world import World, successor_weights


class _GroupSampler:
    """Draws one member of a query group per query, with probability proportional to its weight.

    Members are laid out sorted by group with keys `group + within-group cumulative share`, so one
    `searchsorted` answers a whole batch of (group, uniform) queries.
    """

    def __init__(self, groups: np.ndarray, members: np.ndarray, weights: np.ndarray, num_groups: int):
        order = np.argsort(groups, kind="stable")
        groups, members, weights = groups[order], members[order], weights[order].astype(np.float64)
        self.sizes = np.bincount(groups, minlength=num_groups)  # (G,)
        totals = np.bincount(groups, weights=weights, minlength=num_groups)  # (G,)
        cum = np.cumsum(weights)
        before = np.concatenate([[0.0], np.cumsum(totals)])[:-1]  # (G,) weight of all earlier groups
        share = (cum - before[groups]) / totals[groups]
        ends = np.cumsum(self.sizes) - 1
        share[ends[self.sizes > 0]] = 1.0  # exact upper bound per group
        self.keys = groups + share
        self.members = members

    def has(self, groups: np.ndarray) -> np.ndarray:
        return self.sizes[groups] > 0

    def sample(self, rng: np.random.Generator, groups: np.ndarray) -> np.ndarray:
        """One member per query group; every queried group must be non-empty."""
        u = np.minimum(rng.random(len(groups)), 1.0 - 1e-9)
        return self.members[np.searchsorted(self.keys, groups + u, side="right")]


def _global_attribute_ids(w: World) -> tuple[np.ndarray, np.ndarray]:
    """Colour ids into COLOR_NAMES and size ids shared across categories (same text, same id)."""
    color_of = {name: i for i, name in enumerate(COLOR_NAMES)}
    sizes = sorted({s for leaf in LEAVES for s in leaf.sizes})
    size_of = {s: i for i, s in enumerate(sizes)}
    color_id = np.full(len(w.item_leaf), -1, dtype=np.int64)
    size_id = np.full(len(w.item_leaf), -1, dtype=np.int64)
    for i, (leaf, c, z) in enumerate(zip(w.item_leaf, w.item_color, w.item_size)):
        if c >= 0:
            color_id[i] = color_of[PALETTES[LEAVES[leaf].colors][c]]
        if z >= 0:
            size_id[i] = size_of[LEAVES[leaf].sizes[z]]
    return color_id, size_id


def simulate(
    rng: np.random.Generator, w: World, num_users: int, min_len: int, max_len: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat (user index, item index, timestamp) arrays of all events, each user's in time order."""
    num_items, num_leaves = len(w.item_leaf), len(w.leaf_top)
    num_brands, num_tops = len(w.brand_strength), len(TOPS)
    items_idx = np.arange(num_items)

    # samplers: items within (leaf, brand), (leaf, tier), leaf; leaves within a top / a successor list
    leaf_brand = w.item_leaf * num_brands + w.item_brand
    by_leaf_brand = _GroupSampler(leaf_brand, items_idx, w.item_pop, num_leaves * num_brands)
    by_leaf_tier = _GroupSampler(w.item_leaf * 3 + w.item_tier, items_idx, w.item_pop, num_leaves * 3)
    by_leaf = _GroupSampler(w.item_leaf, items_idx, w.item_pop, num_leaves)
    leaves = np.arange(num_leaves)
    leaf_in_top = _GroupSampler(w.leaf_top, leaves, w.leaf_weight, num_tops)
    any_leaf = _GroupSampler(np.zeros(num_leaves, dtype=np.int64), leaves, w.leaf_weight, 1)
    succ_from = np.concatenate([np.full(len(n), i) for i, n in enumerate(w.leaf_next)])
    succ_to = np.concatenate(w.leaf_next)
    succ_w = np.concatenate([successor_weights(len(n)) for n in w.leaf_next])
    successor = _GroupSampler(succ_from, succ_to, succ_w, num_leaves)
    global_pop = w.item_pop / np.bincount(w.item_leaf, weights=w.item_pop)[w.item_leaf] * w.leaf_weight[w.item_leaf]
    best = np.argsort(-global_pop, kind="stable")[:NUM_BESTSELLERS]
    bestseller = _GroupSampler(np.zeros(len(best), dtype=np.int64), best, global_pop[best], 1)
    top_sells = (w.brand_sells.astype(np.int64) @ np.eye(num_tops, dtype=np.int64)[w.leaf_top]) > 0  # (B, T)
    top_of, brand_of = np.nonzero(top_sells.T)
    favourite_in_top = _GroupSampler(top_of, brand_of, w.brand_strength[brand_of], num_tops)
    consumable = np.array([leaf.consumable for leaf in LEAVES])
    color_id, size_id = _global_attribute_ids(w)  # (N,), (N,); -1 where the item has none

    # users: preferred tops (first one strongest), a favourite brand per preferred top, loyalty, price level
    gumbel = rng.gumbel(size=(num_users, num_tops)) + np.log(np.array([TOP_WEIGHT[t] for t in TOPS]))
    order = np.argsort(-gumbel, axis=1)[:, :3]
    k = rng.choice([1, 2, 3], size=num_users, p=[0.4, 0.4, 0.2])
    pref = np.where(np.arange(3) < k[:, None], order, order[:, [0, 0, 1]])  # (U, 3)
    fav = favourite_in_top.sample(rng, pref.ravel()).reshape(num_users, 3)  # (U, 3)
    loyalty = rng.beta(*LOYALTY_BETA, num_users)  # (U,) chance to buy a known brand
    level = rng.choice(3, size=num_users, p=USER_TIER_P)  # (U,)
    fav_color = rng.choice(len(COLOR_NAMES), size=num_users, p=COLOR_P)  # (U,)

    extra_mean = (max_len - min_len) / 3.0
    lengths = np.minimum(min_len + rng.geometric(1.0 / (extra_mean + 1.0), num_users) - 1, max_len)  # (U,)
    seq = np.full((num_users, max_len), -1, dtype=np.int64)  # (U, T) item indices

    def draw(users: np.ndarray, leaf: np.ndarray, anchor: np.ndarray | None) -> np.ndarray:
        """One item per query in `leaf`: a loyal brand pick, else at the target price tier, else any."""
        n = len(users)
        u = rng.random(n)
        anchor_tier = w.item_tier[anchor] if anchor is not None else level[users]
        other_tier = np.where(u < TIER_USER_P + TIER_ANCHOR_P, anchor_tier, rng.integers(0, 3, n))
        tier = np.where(u < TIER_USER_P, level[users], other_tier)
        brand = fav[users, rng.integers(0, 3, n)]
        if anchor is not None:
            brand = np.where(rng.random(n) < BRAND_ANCHOR_P, w.item_brand[anchor], brand)
        out = by_leaf.sample(rng, leaf)
        g = leaf * 3 + tier
        ok = by_leaf_tier.has(g)
        out[ok] = by_leaf_tier.sample(rng, g[ok])
        g = leaf * num_brands + brand
        ok = (rng.random(n) < loyalty[users]) & by_leaf_brand.has(g)
        out[ok] = by_leaf_brand.sample(rng, g[ok])
        return out

    def pick_item(users: np.ndarray, leaf: np.ndarray, anchor: np.ndarray | None) -> np.ndarray:
        """Best of a few draws: the user's colour and the anchor's size (a 15.6" laptop -> a 15.6" bag)."""
        cands = np.stack([draw(users, leaf, anchor) for _ in range(CANDIDATES)], axis=1)  # (n, C)
        match = (color_id[cands] == fav_color[users][:, None]).astype(np.float64)  # (n, C)
        if anchor is not None:
            anchor_size = size_id[anchor][:, None]  # (n, 1)
            match += (size_id[cands] == anchor_size) & (anchor_size >= 0)
        best = np.argmax(match, axis=1)  # first candidate on ties keeps the popularity prior
        return cands[np.arange(len(users)), best]

    users = np.arange(num_users)
    first_leaf = leaf_in_top.sample(rng, pref[users, rng.integers(0, 3, num_users)])
    seq[:, 0] = pick_item(users, first_leaf, None)
    for t in range(1, max_len):
        act = np.flatnonzero(lengths > t)
        n = len(act)
        if n == 0:
            break
        pos = np.where(rng.random(n) < ANCHOR_LAST_P, t - 1, rng.integers(0, t, n))
        anchor = seq[act, pos]
        anchor_leaf = w.item_leaf[anchor]
        p = np.where(consumable[anchor_leaf][:, None], MODE_P_CONSUMABLE, MODE_P)  # (n, 5)
        mode = (rng.random(n)[:, None] > np.cumsum(p, axis=1)[:, :-1]).sum(axis=1)  # (n,) index into MODES
        leaf = anchor_leaf.copy()  # mode "same"
        m = mode == CHAIN
        leaf[m] = successor.sample(rng, anchor_leaf[m])
        m = mode == PREFERRED
        leaf[m] = leaf_in_top.sample(rng, pref[act[m], rng.integers(0, 3, int(m.sum()))])
        m = mode == RANDOM
        leaf[m] = any_leaf.sample(rng, np.zeros(int(m.sum()), dtype=np.int64))
        item = pick_item(act, leaf, anchor)
        m = mode == TRENDING
        item[m] = bestseller.sample(rng, np.zeros(int(m.sum()), dtype=np.int64))
        for _ in range(REDRAWS):  # durable goods are rarely bought twice: redraw repeats
            again = (seq[act, :t] == item[:, None]).any(axis=1) & ~consumable[w.item_leaf[item]]
            if not again.any():
                break
            item[again] = pick_item(act[again], leaf[again], anchor[again])
        seq[act, t] = item

    # timestamps: same order (tie), same session (minutes), or a later visit (days)
    kind = rng.random((num_users, max_len))
    gaps = np.where(
        kind < TIE_P,
        0,
        np.where(
            kind < TIE_P + SESSION_P,
            1 + rng.exponential(300.0, (num_users, max_len)).astype(np.int64),
            3600 + rng.exponential(6 * 86400.0, (num_users, max_len)).astype(np.int64),
        ),
    )
    gaps[:, 0] = rng.integers(0, 365 * 86400, num_users)
    times = EPOCH + np.cumsum(gaps, axis=1)  # (U, T)

    valid = np.arange(max_len)[None, :] < lengths[:, None]  # (U, T)
    user_of = np.broadcast_to(users[:, None], valid.shape)
    return user_of[valid], seq[valid], times[valid].astype(np.int64)

