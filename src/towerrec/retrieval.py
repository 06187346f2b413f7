"""Retrieval over an exported artifact (`towerrec.export`): embed users exactly as training did, search the
FAISS index with exclusions and category filters, recommend, find similar products, and evaluate the
artifact with the foundation harness.

User text. A history (item ids, oldest first, as stored in training) is rendered by
`towerrec.data.text.render_user` over the items' history texts (`TextConfig.history_fields`), newest first,
within the stored token budget, with the user tower's tokenizer counting tokens: the same text training
built. Free text (a search query, or a description the user typed) is treated as the newest "item": it
comes first, then the history newest first, all within the same budget (the free text is always kept; the
oldest history items are dropped first). Free text alone is the user text by itself (after `user_prefix`).

Results. `search` returns, for each user, (row_id, score) pairs with score = inner product of the
L2-normalised vectors (cosine), best first; exactly k of them whenever k eligible products exist.
Exclusions and filters over-fetch from the index (k + |exclude|, scaled by the filter's selectivity, then
doubling) and fall back to exact scoring with the stored embeddings when the index cannot supply enough
(approximate indexes); a selective category filter is scored exactly over its products right away.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from towerrec import evaluation
from towerrec.data.schema import CATEGORY_SEP
from towerrec.data.splits import Examples, Split
from towerrec.data.text import render_user
from towerrec.export import Artifact, normalize_rows

log = logging.getLogger(__name__)

EVAL_DEFAULTS = {"ks": (5, 10, 20, 50), "beyond_k": 10, "exclude_history": True, "batch_size": 256, "tie_seed": 0}


class Retriever:
    """Serving-side API over an Artifact (or an artifact directory, loaded and verified)."""

    def __init__(self, artifact: Artifact | str | Path, *, batch_size: int = 256, exact_filter_max: int = 2048,
                 exact_filter_fraction: float = 0.1):
        self.artifact = artifact if isinstance(artifact, Artifact) else Artifact.load(artifact)
        self.batch_size = batch_size
        # a category filter matching at most max(exact_filter_max, fraction * N) products is scored exactly
        self.exact_filter_max, self.exact_filter_fraction = exact_filter_max, exact_filter_fraction
        art = self.artifact
        self.items = art.items
        self.text = art.text
        self.row_ids = art.row_ids
        self._history_texts = art.items["history_text"].tolist()
        self._position = np.full(int(self.row_ids.max()) + 1, -1, dtype=np.int64)  # row id -> table position
        self._position[self.row_ids] = np.arange(len(self.row_ids))
        self._token_counts: dict[str, int] = {}
        self._category_masks: dict[str, np.ndarray] = {}

    @property
    def num_items(self) -> int:
        return self.artifact.num_items

    # ---- users -------------------------------------------------------------------------------------------
    def _count_tokens(self, text: str) -> int:
        n = self._token_counts.get(text)
        if n is None:
            n = self._token_counts[text] = self.artifact.user_tower.count_tokens(text)
        return n

    def user_text(self, history_positions: Sequence[int], text: str | None = None) -> str:
        """The user tower's input for a history (table positions, oldest first; -1 = unknown, skipped)."""
        recent = np.asarray(history_positions, dtype=np.int64)
        recent = recent[-self.text.user_max_items :] if self.text.user_max_items > 0 else recent[:0]
        texts = [self._history_texts[p] for p in recent if p >= 0]
        if text is not None and text.strip():
            texts.append(" ".join(text.split()))  # the newest "item": rendered first
        return render_user(texts, self.text, count_tokens=self._count_tokens)

    def embed_texts(self, user_texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """(B, D) unit-norm user vectors of ready-made user texts (batched by length, as evaluation does)."""
        emb = self.artifact.user_tower.encode(list(user_texts), batch_size or self.batch_size)
        return normalize_rows(emb) if len(emb) else emb

    def history_positions(self, history_item_ids: Iterable[str]) -> np.ndarray:
        """Table positions of item ids; unknown ids (e.g. removed products) are dropped with a warning."""
        ids = [str(i) for i in history_item_ids]
        pos = self.artifact.position_of_item.get_indexer(ids) if ids else np.zeros(0, dtype=np.int64)
        if (pos < 0).any():
            unknown = [i for i, p in zip(ids, pos) if p < 0]
            log.warning("%d history item(s) not in the artifact, ignored: %s", len(unknown), unknown[:5])
        return pos[pos >= 0].astype(np.int64)

    def embed_user(self, history_item_ids: Sequence[str] | None = None, text: str | None = None) -> np.ndarray:
        """(D,) unit-norm user vector from a history (item ids, oldest first) and/or free text."""
        positions = self.history_positions(history_item_ids or [])
        if len(positions) == 0 and not (text and text.strip()):
            given = "history items unknown to the artifact" if history_item_ids else "an empty history"
            raise ValueError(f"cannot embed a user from {given} and no text: pass known item ids or a text")
        return self.embed_texts([self.user_text(positions, text)])[0]

    # ---- search ------------------------------------------------------------------------------------------
    def category_mask(self, category: str) -> np.ndarray:
        """(N,) bool: products whose category path starts with `category`, at path-segment boundaries
        ("Home > Kitchen" matches "Home > Kitchen" and "Home > Kitchen > Coffee", not "Home > Kitchenware")."""
        key = CATEGORY_SEP.join(part.strip() for part in category.split(CATEGORY_SEP.strip()))
        mask = self._category_masks.get(key)
        if mask is None:
            cats = self.items["category"].astype(str)
            mask = ((cats == key) | cats.str.startswith(key + CATEGORY_SEP)).to_numpy()
            self._category_masks[key] = mask
        return mask

    def search(self, user_vecs: np.ndarray, k: int, exclude: Sequence[Iterable[int]] | None = None,
               category: str | None = None) -> list[list[tuple[int, float]]]:
        """Top-k (row_id, score) per user vector (B, D); `exclude`: row ids to leave out, one set per user;
        `category`: keep products under this category path. Exactly k results when k eligible exist."""
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
        allowed = None if category is None else self.category_mask(category)
        if allowed is not None:
            n_allowed = int(allowed.sum())
            if n_allowed <= max(self.exact_filter_max, self.exact_filter_fraction * n):
                return [self._exact(q[i], k, excl[i], allowed) for i in range(b)]
        fetch = min(n, k + max(len(e) for e in excl))
        if allowed is not None:  # expect about fetch * selectivity to pass the filter
            fetch = min(n, math.ceil(fetch * n / max(n_allowed, 1)))
        results: list[list[tuple[int, float]]] = [[] for _ in range(b)]
        pending = list(range(b))
        while pending:
            scores, labels = self.artifact.index.search(q[pending], fetch)
            unfinished = []
            for j, i in enumerate(pending):
                hits = self._keep(labels[j], scores[j], excl[i], allowed, k)
                if len(hits) >= k:
                    results[i] = hits
                elif fetch >= n:  # the index gave all it has; an approximate one may miss some: score exactly
                    results[i] = self._exact(q[i], k, excl[i], allowed)
                else:
                    unfinished.append(i)
            pending, fetch = unfinished, min(n, fetch * 2)
        return results

    def _keep(self, labels, scores, excl: set[int], allowed: np.ndarray | None, k: int) -> list[tuple[int, float]]:
        hits = []
        for label, score in zip(labels.tolist(), scores.tolist()):
            if label < 0 or label in excl:
                continue
            if allowed is not None and not allowed[self._position[label]]:
                continue
            hits.append((label, score))
            if len(hits) == k:
                break
        return hits

    def _exact(self, q: np.ndarray, k: int, excl: set[int], allowed: np.ndarray | None) -> list[tuple[int, float]]:
        """Brute force over the stored embeddings; ties go to the lower table position."""
        keep = np.ones(self.num_items, dtype=bool) if allowed is None else allowed.copy()
        if excl:
            pos = self._position[[i for i in excl if 0 <= i < len(self._position)]]
            keep[pos[pos >= 0]] = False
        cand = np.flatnonzero(keep)
        scores = self.artifact.embeddings[cand] @ q  # (C,)
        top = np.argsort(-scores, kind="stable")[:k]
        return [(int(self.row_ids[cand[t]]), float(scores[t])) for t in top]

    # ---- product-level API -------------------------------------------------------------------------------
    def _describe(self, hits: list[tuple[int, float]]) -> list[dict]:
        out = []
        for row_id, score in hits:
            row = self.items.iloc[int(self._position[row_id])]
            price = float(row["price"])
            out.append({"item_id": row["item_id"], "score": float(score), "title": row["title"],
                        "brand": row["brand"], "category": row["category"],
                        "price": None if math.isnan(price) else price, "row_id": int(row_id)})
        return out

    def recommend(self, history_item_ids: Sequence[str] | None, k: int = 10, text: str | None = None,
                  exclude_seen: bool = True, category: str | None = None) -> list[dict]:
        """Top-k products for a history (item ids, oldest first) and/or free text, as dicts with item_id,
        score, title, brand, category, price (None if unknown) and row_id; seen items left out by default."""
        positions = self.history_positions(history_item_ids or [])
        if len(positions) == 0 and not (text and text.strip()):
            given = "history items unknown to the artifact" if history_item_ids else "an empty history"
            raise ValueError(f"cannot recommend from {given} and no text: pass known item ids or a text")
        vec = self.embed_texts([self.user_text(positions, text)])
        seen = set(self.row_ids[positions].tolist()) if exclude_seen else set()
        return self._describe(self.search(vec, k, [seen], category)[0])

    def similar_items(self, item_id: str, k: int = 10, category: str | None = None) -> list[dict]:
        """The k products whose stored vectors are closest to `item_id`'s (itself left out)."""
        pos = int(self.artifact.position_of_item.get_indexer([str(item_id)])[0])
        if pos < 0:
            raise KeyError(f"unknown item id {item_id!r}: not in the artifact {self.artifact.path}")
        q = self.artifact.embeddings[pos : pos + 1]
        return self._describe(self.search(q, k, [{int(self.row_ids[pos])}], category)[0])


# ------------------------------------------------------------------------------------------ evaluation


def evaluate_artifact(artifact: Artifact | Retriever | str | Path, split: Split, eval_cfg: Mapping | None = None, *,
                      stages: Sequence[str] = ("test",), batch_size: int = 256,
                      progress: bool = False) -> dict[str, float]:
    """Harness metrics of the exported model on `split`, e.g. {'test/recall@10': ...} ('val/' for valid).

    Users are embedded through the Retriever (stored text config, tokenizer and user tower) and scored
    against every split item with the stored item embeddings (full ranking, the harness's protocol).
    `batch_size`: users embedded at a time; the training datamodule's eval batch size reproduces the
    in-training metrics exactly. Split items missing from the artifact score -inf (never recommended).
    """
    retriever = artifact if isinstance(artifact, Retriever) else Retriever(artifact)
    art = retriever.artifact
    cfg = {**EVAL_DEFAULTS, **{k: v for k, v in dict(eval_cfg or {}).items() if k in EVAL_DEFAULTS}}
    fingerprint = art.manifest.get("data", {}).get("fingerprint")
    if fingerprint and fingerprint != split.fingerprint:
        log.warning("evaluating an artifact exported from data %s on data %s", fingerprint, split.fingerprint)
    pos = art.position_of_item.get_indexer(split.catalog.item_ids)  # split item -> artifact position
    missing = torch.from_numpy(pos < 0)
    if missing.any():
        log.warning("%d of %d split items are not in the artifact: never recommended", int(missing.sum()), len(pos))
    item_emb = torch.from_numpy(np.ascontiguousarray(art.embeddings[np.maximum(pos, 0)]))  # (N, D)
    counts, categories = split.item_counts(), split.catalog.top_category()
    metrics: dict[str, float] = {}
    for stage in stages:
        examples = split.examples(stage)
        texts = [retriever.user_text(pos[h]) for h in examples.histories]
        user_emb = torch.from_numpy(retriever.embed_texts(texts, batch_size))  # (U, D)

        def scorer(histories, users, user_emb=user_emb):
            scores = user_emb[torch.as_tensor(users, dtype=torch.long)] @ item_emb.T  # (B, N)
            if missing.any():
                scores[:, missing] = -math.inf
            return scores

        positions = Examples(np.arange(len(examples)), examples.histories, examples.targets)
        m = evaluation.evaluate(scorer, positions, split.num_items, item_counts=counts, item_categories=categories,
                                ks=tuple(int(k) for k in cfg["ks"]), beyond_k=int(cfg["beyond_k"]),
                                exclude_history=bool(cfg["exclude_history"]), batch_size=int(cfg["batch_size"]),
                                tie_seed=int(cfg["tie_seed"]), progress=progress, desc=f"artifact {stage}")
        metrics.update(evaluation.prefix(m, "val" if stage == "valid" else stage))
    return metrics
