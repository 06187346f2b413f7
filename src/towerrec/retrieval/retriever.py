"""Retriever: search an exported artifact (`towerrec.artifact`) the way serving does: embed users exactly as
training did, search the FAISS index under exclusions and a boolean filter mask, recommend, find similar products.

User text. A history (item ids, oldest first, as stored in training) is rendered by
`towerrec.data.text.UserText` over the items' history texts (`TextConfig.history_fields`), newest first,
within the stored token budget, with the user tower's tokenizer counting tokens: the same text training
built. Free text (a search query, or a description the user typed) is treated as the newest "item": it
comes first, then the history newest first, all within the same budget (the free text is always kept; the
oldest history items are dropped first). Free text alone is the user text by itself (after `user_prefix`).

Sequence artifacts (manifest model.kind `sequence`) read no user text: a history is a right-aligned window of
the newest `max_len` stored product vectors through the sequence user tower, and free text is embedded by the
product text path and appended as the newest element (the window keeps the newest max_len). `embed_histories`
is the one path for both kinds (embed_user, recommend and the harness scorer use it); `user_text` and
`embed_texts` exist for the text towers only.

Results. `search` returns, for each user, (row_id, score) pairs with score = inner product of the
L2-normalised vectors (cosine), best first; exactly k of them whenever k eligible products exist.
Filters are an `ItemFilter` (category path, price range; `category=` is its category) and/or any (N,) boolean
mask over table positions (stock, ...); exclusions are row ids per user.

Backends (`index.backend`, `IndexConfig`): `faiss` searches the artifact's index; filters and exclusions
over-fetch from it (k + |exclude|, scaled by the filter's selectivity, then doubling), and a selective filter is
scored exactly over its products right away. `milvus` searches the collection the artifact was loaded into
(`towerrec.artifact.milvus`): the ItemFilter becomes a Milvus expression, and so do a single user's exclusions
(a batch of users shares one request, its exclusions over-fetched as with FAISS); a mask is applied to the
results, over-fetching by its selectivity. Either way, when the backend cannot supply enough eligible products
(approximate indexes) the stored embeddings are scored exactly (counted in `exact_fallbacks`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from towerrec.artifact.format import SEQUENCE
from towerrec.artifact.items import ItemFilter
from towerrec.artifact.milvus import MAX_LIMIT, MilvusCatalog, filter_expression
from towerrec.artifact.reader import Artifact
from towerrec.data.schema import CATEGORY_SEP, category_key, category_prefixes
from towerrec.data.text import UserText
from towerrec.index import IndexConfig
from towerrec.model.encode import normalize_rows

log = logging.getLogger(__name__)

MAX_PUSHED_IDS = 4096  # exclusions written into a Milvus expression; more are over-fetched


class Retriever:
    """Serving-side API over an Artifact (or an artifact directory, loaded and verified)."""

    def __init__(self, artifact: Artifact | str | Path, *, batch_size: int = 256, exact_filter_max: int = 2048,
                 exact_filter_fraction: float = 0.1, index: IndexConfig | Mapping | None = None):
        """`index`: where to search (`IndexConfig` or its mapping; only `backend` and `milvus` are read);
        None: the artifact's FAISS index."""
        self.artifact = artifact if isinstance(artifact, Artifact) else Artifact.load(artifact)
        self.batch_size = batch_size
        # (FAISS) a filter matching at most max(exact_filter_max, fraction * N) products is scored exactly
        self.exact_filter_max, self.exact_filter_fraction = exact_filter_max, exact_filter_fraction
        art = self.artifact
        self.table, self.items, self.text, self.row_ids = art.table, art.items, art.text, art.row_ids
        self.kind = art.kind
        self._user_text = None
        if self.kind != SEQUENCE:
            self._user_text = UserText(art.items["history_text"].tolist(), art.text,
                                       lambda text: art.user_tower.count_tokens(text))
        self._categories = art.items["category"].astype(str).map(category_key)  # (N,) normalised paths
        self.categories = category_prefixes(self._categories)  # every category filter that matches something
        self._category_masks: dict[str, np.ndarray] = {}
        self._nothing = np.zeros(self.num_items, dtype=bool)
        self._nothing.flags.writeable = False
        cfg = IndexConfig.from_any(index) if index is not None else IndexConfig()
        self.backend = cfg.backend
        self.milvus = MilvusCatalog.open(art, cfg.milvus) if cfg.backend == "milvus" else None
        self.exact_fallbacks = 0  # searches the backend could not fill, scored exactly instead

    @property
    def num_items(self) -> int:
        return self.artifact.num_items

    @property
    def is_sequence(self) -> bool:
        """Whether the artifact holds the sequence towers (no user text: see `embed_histories`)."""
        return self.kind == SEQUENCE

    # ---- users -------------------------------------------------------------------------------------------
    def _no_user_text(self, what: str) -> None:
        if self.is_sequence:
            raise ValueError(f"{self.artifact.path}: a sequence artifact reads a history as a sequence of product "
                             f"vectors, not as user text, so it has no {what}; use embed_histories")

    def user_text(self, history_positions: Sequence[int], text: str | None = None) -> str:
        """The user tower's input for a history (table positions, oldest first; -1 = unknown, skipped).
        Text towers only."""
        self._no_user_text("user text")
        return self._user_text(history_positions, text)

    def embed_texts(self, user_texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """(B, D) unit-norm user vectors of ready-made user texts (batched by length, as evaluation does).
        Text towers only."""
        self._no_user_text("user texts to embed")
        emb = self.artifact.user_tower.encode(list(user_texts), batch_size or self.batch_size)
        return normalize_rows(emb) if len(emb) else emb

    def embed_histories(self, histories: Sequence[Sequence[int]], texts: Sequence[str | None] | None = None,
                        batch_size: int | None = None) -> np.ndarray:
        """(B, D) unit-norm user vectors of histories (table positions, oldest first; -1 = unknown, skipped),
        each with an optional free text (`texts`: one str or None per history; a query, the newest element).

        Text towers: `embed_texts` of `user_text` (bit-identical to calling them). Sequence towers: right-aligned
        windows of the stored product vectors through the user tower, a free text's product-text-path vector
        in the newest slot (an id-only artifact refuses free text). Batches of `batch_size` (default the
        Retriever's): the training datamodule's eval batch size reproduces the in-training vectors exactly."""
        histories = list(histories)
        if texts is not None and len(texts) != len(histories):
            raise ValueError(f"{len(texts)} texts for {len(histories)} histories")
        batch_size = batch_size or self.batch_size
        if not self.is_sequence:
            user_texts = [self.user_text(h, None if texts is None else texts[i]) for i, h in enumerate(histories)]
            return self.embed_texts(user_texts, batch_size)
        art = self.artifact
        queries = None
        wanted = [i for i, t in enumerate(texts or []) if t is not None and t.strip()]
        if wanted:
            art.require_text_path("embed a free-text query (recommend from a history of item ids alone)")
            vectors = art.item_tower.encode([" ".join(texts[i].split()) for i in wanted], batch_size)  # (Q, D)
            queries = [None] * len(histories)
            for row, i in enumerate(wanted):
                queries[i] = vectors[row]
        emb = art.user_tower.embed_histories(histories, art.embeddings, queries, batch_size)
        return normalize_rows(emb) if len(emb) else emb

    def history_positions(self, history_item_ids: Iterable[str]) -> np.ndarray:
        """Table positions of item ids; unknown ids (e.g. removed products) are dropped with a warning."""
        ids = [str(i) for i in history_item_ids]
        pos = self.table.positions_of_items(ids)
        if (pos < 0).any():
            unknown = [i for i, p in zip(ids, pos) if p < 0]
            log.warning("%d history item(s) not in the artifact, ignored: %s", len(unknown), unknown[:5])
        return pos[pos >= 0].astype(np.int64)

    def _user_positions(self, history_item_ids: Sequence[str] | None, text: str | None, what: str) -> np.ndarray:
        """History positions for `what` ("embed a user", ...); ValueError when there is no known item and no text."""
        positions = self.history_positions(history_item_ids or [])
        if len(positions) == 0 and not (text and text.strip()):
            given = "history items unknown to the artifact" if history_item_ids else "an empty history"
            raise ValueError(f"cannot {what} from {given} and no text: pass known item ids or a text")
        return positions

    def embed_user(self, history_item_ids: Sequence[str] | None = None, text: str | None = None) -> np.ndarray:
        """(D,) unit-norm user vector from a history (item ids, oldest first) and/or free text."""
        positions = self._user_positions(history_item_ids, text, "embed a user")
        return self.embed_histories([positions], [text])[0]

    # ---- search ------------------------------------------------------------------------------------------
    def category_mask(self, category: str) -> np.ndarray:
        """(N,) bool, read-only: products whose category path starts with `category`, at path-segment boundaries
        ("Home > Kitchen" matches "Home > Kitchen" and "Home > Kitchen > Coffee", not "Home > Kitchenware").
        Masks are cached for the category paths the catalog has (so arbitrary strings cannot grow the cache)."""
        key = category_key(category)
        if key not in self.categories:
            return self._nothing
        mask = self._category_masks.get(key)
        if mask is None:
            cats = self._categories
            mask = ((cats == key) | cats.str.startswith(key + CATEGORY_SEP)).to_numpy()
            mask.flags.writeable = False
            self._category_masks[key] = mask
        return mask

    def filter_mask(self, item_filter: ItemFilter | None) -> np.ndarray | None:
        """(N,) bool of the products `item_filter` keeps (an unknown price fails any price bound); None: no filter.
        Do not modify it (it may be a cached category mask)."""
        if item_filter is None or item_filter.empty:
            return None
        mask = None if item_filter.category is None else self.category_mask(item_filter.category)
        if item_filter.priced:
            lo = -math.inf if item_filter.price_min is None else item_filter.price_min
            hi = math.inf if item_filter.price_max is None else item_filter.price_max
            with np.errstate(invalid="ignore"):
                price_ok = (self.table.prices >= lo) & (self.table.prices <= hi)  # NaN (unknown) compares False
            mask = price_ok if mask is None else mask & price_ok
        return mask

    def search(self, user_vecs: np.ndarray, k: int, exclude: Sequence[Iterable[int]] | None = None,
               category: str | None = None, mask: np.ndarray | None = None,
               item_filter: ItemFilter | None = None) -> list[list[tuple[int, float]]]:
        """Top-k (row_id, score) per user vector (B, D); `exclude`: row ids to leave out, one set per user;
        `category`: keep products under this category path; `item_filter`: category and price range;
        `mask` (N,) bool over table positions: keep only True. Exactly k results when k eligible exist."""
        q = np.ascontiguousarray(np.atleast_2d(user_vecs), dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.artifact.dim:
            raise ValueError(f"user vectors must have shape (B, {self.artifact.dim}), got {q.shape}")
        if k < 1:
            raise ValueError(f"k must be positive, got {k}")
        b, n = len(q), self.num_items
        if exclude is None:
            excl = [set() for _ in range(b)]
        elif len(exclude) != b:
            raise ValueError(f"exclude has {len(exclude)} sets for {b} user vectors")
        else:
            excl = [{int(i) for i in e} for e in exclude]
        item_filter = _with_category(item_filter, category)
        pushed = self.filter_mask(item_filter)  # what a Milvus expression says
        allowed = pushed
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != (n,):
                raise ValueError(f"mask must have shape ({n},), got {mask.shape}")
            allowed = mask if allowed is None else allowed & mask
        n_allowed = n if allowed is None else int(allowed.sum())
        if n_allowed == 0:
            return [[] for _ in range(b)]
        targets = [min(k, self._eligible(e, allowed, n_allowed)) for e in excl]
        if self.milvus is None:
            if allowed is not None and n_allowed <= max(self.exact_filter_max, self.exact_filter_fraction * n):
                return [self._exact(q[i], k, excl[i], allowed) for i in range(b)]
            fetch = math.ceil(min(n, k + max(len(e) for e in excl)) * n / n_allowed)  # expect fetch * selectivity
            return self._fill(q, k, excl, allowed, targets, fetch, n, lambda rows, f: self.artifact.index.search(
                q[rows], f))
        push = b == 1 and len(excl[0]) <= MAX_PUSHED_IDS
        expr = filter_expression(item_filter, excl[0] if push else ())
        n_pushed = n if pushed is None else int(pushed.sum())
        base = k if push else k + max(len(e) for e in excl)
        fetch = math.ceil(base * n_pushed / n_allowed)  # the mask, if any, is applied to the results
        return self._fill(q, k, excl, allowed, targets, fetch, min(n_pushed, MAX_LIMIT),
                          lambda rows, f: self.milvus.search(q[rows], f, expr))

    def _fill(self, q, k, excl, allowed, targets, fetch, limit, run) -> list[list[tuple[int, float]]]:
        """Fetch from the backend (`run(rows, fetch) -> (scores, labels)`), doubling until every user has its
        target of eligible hits; past `limit` (all the backend can give) score the rest exactly."""
        results: list[list[tuple[int, float]]] = [[] for _ in range(len(q))]
        pending, fetch = list(range(len(q))), min(fetch, limit)
        while pending:
            scores, labels = run(pending, fetch)
            unfinished = []
            for j, i in enumerate(pending):
                hits = self._keep(labels[j], scores[j], excl[i], allowed, k)
                if len(hits) >= targets[i]:
                    results[i] = hits
                elif fetch >= limit:  # the backend gave all it has; an approximate one may miss some
                    results[i] = self._exact(q[i], k, excl[i], allowed)
                    self.exact_fallbacks += 1
                else:
                    unfinished.append(i)
            pending, fetch = unfinished, min(limit, fetch * 2)
        return results

    def _eligible(self, excl: set[int], allowed: np.ndarray | None, n_allowed: int) -> int:
        """How many products pass the filter and are not excluded."""
        if not excl:
            return n_allowed
        pos = self.table.positions_of_rows(list(excl))
        pos = pos[pos >= 0]
        return n_allowed - (len(pos) if allowed is None else int(allowed[pos].sum()))

    def _keep(self, labels, scores, excl: set[int], allowed: np.ndarray | None, k: int) -> list[tuple[int, float]]:
        hits = []
        for label, score in zip(labels.tolist(), scores.tolist()):
            if label < 0 or label in excl:
                continue
            if allowed is not None and not allowed[self.table.position_of_row[label]]:
                continue
            hits.append((label, score))
            if len(hits) == k:
                break
        return hits

    def _exact(self, q: np.ndarray, k: int, excl: set[int], allowed: np.ndarray | None) -> list[tuple[int, float]]:
        """Brute force over the stored embeddings; ties go to the lower table position."""
        keep = np.ones(self.num_items, dtype=bool) if allowed is None else allowed.copy()
        if excl:
            pos = self.table.positions_of_rows(list(excl))
            keep[pos[pos >= 0]] = False
        cand = np.flatnonzero(keep)
        scores = self.artifact.embeddings[cand] @ q  # (C,)
        top = np.argsort(-scores, kind="stable")[:k]
        return [(int(self.row_ids[cand[t]]), float(scores[t])) for t in top]

    # ---- product-level API -------------------------------------------------------------------------------
    def _describe(self, hits: list[tuple[int, float]]) -> list[dict]:
        positions = self.table.positions_of_rows([row for row, _ in hits])
        return [self.table.product(p, score) for p, (_, score) in zip(positions, hits)]

    def recommend(self, history_item_ids: Sequence[str] | None, k: int = 10, text: str | None = None,
                  exclude_seen: bool = True, category: str | None = None) -> list[dict]:
        """Top-k products for a history (item ids, oldest first) and/or free text, as dicts with item_id,
        score, title, brand, category, price (None if unknown) and row_id; seen items left out by default."""
        positions = self._user_positions(history_item_ids, text, "recommend")
        vec = self.embed_histories([positions], [text])
        seen = set(self.row_ids[positions].tolist()) if exclude_seen else set()
        return self._describe(self.search(vec, k, [seen], category)[0])

    def similar_items(self, item_id: str, k: int = 10, category: str | None = None) -> list[dict]:
        """The k products whose stored vectors are closest to `item_id`'s (itself left out)."""
        pos = self.table.position_of_id.get(str(item_id), -1)
        if pos < 0:
            raise KeyError(f"unknown item id {item_id!r}: not in the artifact {self.artifact.path}")
        q = self.artifact.embeddings[pos : pos + 1]
        return self._describe(self.search(q, k, [{int(self.row_ids[pos])}], category)[0])


def _with_category(item_filter: ItemFilter | None, category: str | None) -> ItemFilter | None:
    """`item_filter` with `category` (search's own argument) as its category; both given must agree."""
    if category is None or not category.strip():
        return item_filter
    if item_filter is not None and item_filter.category is not None \
            and item_filter.category != category_key(category):
        raise ValueError(f"two category filters: category={category!r} and item_filter.category="
                         f"{item_filter.category!r}")
    base = item_filter or ItemFilter()
    return ItemFilter(category, base.price_min, base.price_max)


def ranked_ids(hits: Sequence[tuple[int, float]], decimals: int = 5) -> list[int]:
    """Row ids of search hits ordered by score (rounded), then id: the form in which two backends' answers are
    compared, since each may return exactly tied products in its own order."""
    return [row for row, _ in sorted(hits, key=lambda h: (-round(h[1], decimals), h[0]))]
