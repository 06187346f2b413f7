"""Baselines scored by the same harness: popularity, item-to-item transition KNN, zero-shot text retrieval.

Each baseline is fitted on training sequences only and exposes `scorer(histories, users) -> (B, N)`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from towerrec.data.splits import Split
from towerrec.data.text import TextConfig, render_items
from towerrec.data.tokens import tokenize
from towerrec.model.encode import encode_tokens
from towerrec.model.encoders import load_encoder
from towerrec.model.towers import pool

log = logging.getLogger(__name__)

BASELINES = ("popularity", "itemknn", "zeroshot")


class Popularity:
    """Score = training interaction count of the item, the same for every user."""

    def __init__(self, item_counts: np.ndarray):
        self.scores = torch.as_tensor(np.asarray(item_counts, dtype=np.float32))  # (N,)

    def __call__(self, histories: Sequence[np.ndarray], users: np.ndarray) -> torch.Tensor:
        return self.scores.expand(len(histories), -1).clone()  # (B, N)


class TransitionKNN:
    """Item-to-item co-occurrence within a window of each training sequence, weighted 1/distance.

    A user's score for item j = sum over their last `history` items i (newest weight 1, then `decay`^age) of
    sim(i, j), where sim is the row-normalised transition matrix (forward transitions weighted by `forward`,
    backward ones by 1). A tiny popularity term orders the items no neighbour reaches.
    """

    def __init__(self, sequences: Sequence[np.ndarray], num_items: int, window: int = 3, forward: float = 1.0,
                 backward: float = 0.5, decay: float = 0.7, history: int = 5, item_counts: np.ndarray | None = None):
        rows, cols, vals = [], [], []
        for seq in sequences:
            n = len(seq)
            for d in range(1, window + 1):
                if n <= d:
                    break
                a, b = seq[:-d], seq[d:]
                w = np.full(len(a), 1.0 / d)
                rows += [a, b]
                cols += [b, a]
                vals += [forward * w, backward * w]
        if rows:
            m = sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                              shape=(num_items, num_items)).tocsr()
        else:
            m = sp.csr_matrix((num_items, num_items))
        m.setdiag(0)
        m.eliminate_zeros()
        norm = np.asarray(m.sum(axis=1)).ravel()
        norm[norm == 0] = 1.0
        self.sim = sp.diags(1.0 / norm) @ m  # (N, N) sparse, rows sum to 1
        counts = np.zeros(num_items) if item_counts is None else np.asarray(item_counts, dtype=np.float64)
        self.prior = torch.as_tensor(1e-6 * counts / max(counts.max(), 1.0), dtype=torch.float32)  # (N,)
        self.decay, self.history, self.num_items = decay, history, num_items

    def __call__(self, histories: Sequence[np.ndarray], users: np.ndarray) -> torch.Tensor:
        rows, cols, vals = [], [], []
        for r, h in enumerate(histories):
            recent = np.asarray(h[-self.history :])[::-1]  # newest first
            rows.append(np.full(len(recent), r))
            cols.append(recent)
            vals.append(self.decay ** np.arange(len(recent)))
        weights = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                                shape=(len(histories), self.num_items))
        scores = torch.as_tensor((weights @ self.sim).toarray(), dtype=torch.float32)  # (B, N)
        return scores + self.prior


class ZeroShotText:
    """A user is the recency-weighted mean of their history items' text embeddings; score = cosine.

    `item_emb` (N, D) are L2-normalised embeddings of the item texts from a pretrained encoder (no training).
    """

    def __init__(self, item_emb: torch.Tensor, decay: float = 0.8, history: int = 20):
        self.item_emb = torch.nn.functional.normalize(item_emb.float(), dim=-1)  # (N, D)
        self.decay, self.history = decay, history

    def user_embeddings(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        out = torch.zeros(len(histories), self.item_emb.shape[1])
        for r, h in enumerate(histories):
            recent = torch.as_tensor(np.asarray(h[-self.history :])[::-1].copy())  # newest first
            w = self.decay ** torch.arange(len(recent), dtype=torch.float32)  # (H,)
            out[r] = (w[:, None] * self.item_emb[recent]).sum(0)
        return torch.nn.functional.normalize(out, dim=-1)  # (B, D)

    def __call__(self, histories: Sequence[np.ndarray], users: np.ndarray) -> torch.Tensor:
        return self.user_embeddings(histories) @ self.item_emb.T  # (B, N)


def encode_texts(encoder, tokenizer, texts: Sequence[str], max_length: int = 64, batch_size: int = 128,
                 pooling: str = "mean", progress: bool = True) -> torch.Tensor:
    """(len(texts), H) L2-normalised pooled embeddings of a bare Hugging Face encoder (the one encode path)."""
    def embed(input_ids, attention_mask, _idx):
        hidden = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, H)
        return pool(hidden, attention_mask, pooling)  # (B, H)

    encoder.eval()
    out = encode_tokens(embed, tokenize(tokenizer, texts, max_length), tokenizer.pad_token_id or 0,
                        encoder.config.hidden_size, batch_size=batch_size, progress=progress, desc="encode items")
    return torch.nn.functional.normalize(out, dim=-1)


def build_baseline(params: Mapping, split: Split, text: TextConfig | None = None):
    """The baseline `params["kind"]` fitted on the split's training part; `params` is the plain `model` config
    (conf/model/<kind>.yaml); `text` renders products for the zero-shot encoder."""
    kind = params["kind"]
    if kind == "popularity":
        return Popularity(split.item_counts())
    if kind == "itemknn":
        return TransitionKNN(split.train_sequences(), split.num_items, window=params["window"],
                             forward=params["forward"], backward=params["backward"], decay=params["decay"],
                             history=params["history"], item_counts=split.item_counts())
    if kind == "zeroshot":
        texts = render_items(split.catalog, text or TextConfig())
        encoder, tokenizer = load_encoder(params["encoder"], corpus=texts)
        emb = encode_texts(encoder, tokenizer, texts, params["max_length"], params["batch_size"], params["pooling"])
        return ZeroShotText(emb, decay=params["decay"], history=params["history"])
    raise ValueError(f"unknown baseline {kind!r}; choose one of {BASELINES} or two_tower")
