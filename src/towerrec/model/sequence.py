"""The sequence towers: a product tower over text vectors (+ optional item ids), and a user tower that reads the
history as a sequence of those product vectors through a small causal transformer. The text vectors are frozen, or
come from a text encoder that trains with the towers (`ItemEncoder.text_module`, towerrec.model.text_encoder).

Item indices are catalog positions 0..N-1; -1 is padding. Histories are right-aligned windows of length L (the
newest item in the last slot, older items before it, padding on the left), so a position embedding is the
distance back from the newest item: the same for a history whatever window it is padded into.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from towerrec.model.towers import pool

ADAPTERS = ("linear", "mlp")


class ItemEncoder(nn.Module):
    """Product vectors: adapter(text vector) [+ learned item-id embedding], L2-normalised.

    `text_vectors` (N, H) or None (id-only: a SASRec-style item table). With text, the id embedding covers only
    products seen in training (`item_counts` > 0); the others, and products added later, are text alone.
    `text_module` (a TrainableText, or None: frozen text vectors): the text encoder that trains with the towers;
    `with_text(idx, text_module(idx))` reads it with grad, and `refresh_text()` recomputes the stored table `text`
    from it."""

    def __init__(self, text_vectors: np.ndarray | None, dim: int, *, num_items: int | None = None,
                 adapter: str = "linear", item_ids: bool = False, item_counts: np.ndarray | None = None,
                 text_module: nn.Module | None = None):
        super().__init__()
        if adapter not in ADAPTERS:
            raise ValueError(f"model.adapter must be one of {ADAPTERS}, got {adapter!r}")
        if text_vectors is None and not item_ids:
            raise ValueError("a product tower needs text vectors, item ids, or both")
        if text_module is not None and text_vectors is None:
            raise ValueError("a trained text encoder needs model.text=true (the product tower's text vectors)")
        self.text_module = text_module
        self.num_items = len(text_vectors) if text_vectors is not None else int(num_items)
        self.dim = dim
        self.adapter = None
        if text_vectors is not None:
            self.register_buffer("text", torch.as_tensor(np.asarray(text_vectors), dtype=torch.float32))  # (N, H)
            hidden = self.text.shape[1]
            self.adapter = nn.Linear(hidden, dim)
            if hidden == dim:  # start from the text encoder's own space
                nn.init.eye_(self.adapter.weight)
            nn.init.zeros_(self.adapter.bias)
            self.mlp = None
            if adapter == "mlp":  # a residual two-layer refinement on top of the linear map
                self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
                nn.init.zeros_(self.mlp[2].weight)
                nn.init.zeros_(self.mlp[2].bias)
        self.ids = None
        if item_ids:
            seen = np.ones(self.num_items, bool) if text_vectors is None or item_counts is None \
                else np.asarray(item_counts) > 0
            rows = np.zeros(self.num_items, dtype=np.int64)  # row 0: no id vector (unseen), zero, never trained
            rows[seen] = np.arange(1, seen.sum() + 1)
            self.register_buffer("id_rows", torch.from_numpy(rows))
            self.ids = nn.Embedding(int(seen.sum()) + 1, dim, padding_idx=0)
            nn.init.normal_(self.ids.weight, std=0.02 if text_vectors is not None else 1.0 / dim ** 0.5)
            with torch.no_grad():
                self.ids.weight[0].zero_()

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """(...,) catalog positions (>= 0) -> (..., D) unit vectors from the stored text vectors."""
        return self.with_text(idx, self.text[idx] if self.adapter is not None else None)

    def with_text(self, idx: torch.Tensor, text: torch.Tensor | None) -> torch.Tensor:
        """(...,) catalog positions, (..., H) their text vectors (None: id-only) -> (..., D) unit vectors."""
        out = 0
        if text is not None:
            out = adapt(self.adapter, self.mlp, text)  # (..., D)
        if self.ids is not None:
            out = out + self.ids(self.id_rows[idx])  # (..., D)
        return F.normalize(out, dim=-1)

    @torch.no_grad()
    def refresh_text(self, progress: bool = False) -> None:
        """Recompute the stored text vectors (N, H) of the whole catalog by `text_module` (no grad, eval mode)."""
        self.text.copy_(self.text_module.all(progress).to(self.text))

    def all(self) -> torch.Tensor:
        """(N, D) vectors of the whole catalog."""
        return self(torch.arange(self.num_items, device=self._device()))

    def _device(self) -> torch.device:
        return next(self.parameters()).device


def adapt(adapter: nn.Linear, mlp: nn.Module | None, text: torch.Tensor) -> torch.Tensor:
    """(..., H) text vectors -> (..., D): the linear adapter, then the residual MLP when there is one (not
    normalised). The one text path of the product tower, in training and in the exported `TextItemTower`."""
    out = adapter(text)
    return out + mlp(out) if mlp is not None else out


class TextItemTower(nn.Module):
    """The product tower's text path on its own: text encoder -> pooling -> adapter [-> mlp] -> L2 norm.

    What an exported sequence artifact embeds products added later and free-text queries with: the encoder that
    computed the training text vectors (frozen, or with its trained layers: `TrainableText.export_encoder`) and
    the trained adapter, no id embedding (such products are unseen). `forward` has the TextTower signature, so
    `towerrec.model.encode.encode_texts` runs it."""

    def __init__(self, encoder: nn.Module, pooling: str, dim: int, adapter: str = "linear"):
        super().__init__()
        if adapter not in ADAPTERS:
            raise ValueError(f"model.adapter must be one of {ADAPTERS}, got {adapter!r}")
        self.encoder, self.pooling, self.dim = encoder, pooling, dim
        self.adapter = nn.Linear(encoder.config.hidden_size, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)) \
            if adapter == "mlp" else None

    @classmethod
    def from_items(cls, encoder: nn.Module, pooling: str, items: ItemEncoder) -> TextItemTower:
        """The text path of a trained ItemEncoder (its adapter and mlp weights copied) over `encoder`."""
        if items.adapter is None:
            raise ValueError("an id-only product tower (model.text=false) has no text path")
        if items.adapter.in_features != encoder.config.hidden_size:
            raise ValueError(f"the adapter reads {items.adapter.in_features}-dim text vectors but the encoder "
                             f"computes {encoder.config.hidden_size}")
        tower = cls(encoder, pooling, items.dim, "mlp" if items.mlp is not None else "linear")
        tower.adapter.load_state_dict(items.adapter.state_dict())
        if items.mlp is not None:
            tower.mlp.load_state_dict(items.mlp.state_dict())
        return tower.to(next(encoder.parameters()).device)  # where the encoder is (moving it would move the caller's)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                item_idx: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) tokens -> (B, D) unit vectors; `item_idx` is ignored (no id embedding)."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, H)
        return F.normalize(adapt(self.adapter, self.mlp, pool(hidden, attention_mask, self.pooling)), dim=-1)


def attention_mask(real: torch.Tensor, heads: int) -> torch.Tensor:
    """(B * heads, L, L) bool, True = may not attend: later slots (causal) and padding, except a slot's own,
    so that a padded slot still attends to something (its output is finite and never used)."""
    _, length = real.shape
    future = torch.triu(torch.ones(length, length, dtype=torch.bool, device=real.device), diagonal=1)  # (L, L)
    padded_key = ~real[:, None, :]  # (B, 1, L)
    own = torch.eye(length, dtype=torch.bool, device=real.device)  # (L, L)
    blocked = future[None] | (padded_key & ~own[None])  # (B, L, L)
    return blocked.repeat_interleave(heads, dim=0)  # (B * heads, L, L)


class SequenceUserTower(nn.Module):
    """History item vectors + position embeddings -> causal transformer -> per-slot user vectors (L2 norm)."""

    def __init__(self, dim: int, max_len: int, *, layers: int = 2, heads: int = 2, dropout: float = 0.1,
                 ff_mult: int = 4):
        super().__init__()
        self.dim, self.max_len, self.heads = dim, max_len, heads
        self.layers, self.ff_mult, self.dropout_p = layers, ff_mult, dropout
        self.positions = nn.Embedding(max_len, dim)  # slot max_len - 1 is the newest item
        nn.init.normal_(self.positions.weight, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, ff_mult * dim, dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.projection = nn.Linear(dim, dim)
        nn.init.eye_(self.projection.weight)
        nn.init.zeros_(self.projection.bias)
        self.dropout = nn.Dropout(dropout)

    def inputs(self, item_vectors: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """item_vectors (B, L, D), real (B, L) -> (B, L, D): padding zeroed, plus each slot's position embedding."""
        length = item_vectors.shape[1]
        if length > self.max_len:
            raise ValueError(f"a history window of {length} items is longer than model.max_len={self.max_len}")
        return item_vectors * real[..., None] + self.positions.weight[self.max_len - length :]

    def forward(self, item_vectors: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """item_vectors (B, L, D), real (B, L) bool (False = padding) -> (B, L, D): slot t sees slots <= t."""
        x = self.inputs(item_vectors, real)  # (B, L, D)
        x = self.transformer(self.dropout(x), mask=attention_mask(real, self.heads))  # (B, L, D)
        return F.normalize(self.projection(self.norm(x)), dim=-1)

    def shape(self) -> dict:
        """The constructor's arguments: what rebuilds this tower (an exported artifact's tower.json)."""
        return {"dim": int(self.dim), "max_len": int(self.max_len), "layers": int(self.layers),
                "heads": int(self.heads), "ff_mult": int(self.ff_mult), "dropout": float(self.dropout_p)}

    def embed_windows(self, table: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        """table (N, D) product vectors, windows (B, L) right-aligned positions (-1 = padding) -> (B, D): the
        newest slot's user vector. In eval mode the last layer runs for the newest slot only (`newest`)."""
        real = windows >= 0  # (B, L)
        return self.user(table[windows.clamp_min(0)], real)

    def user(self, item_vectors: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """item_vectors (B, L, D), real (B, L) -> (B, D) the newest slot's output: `newest` in eval mode when
        every newest slot is real, else the full forward. The one path of evaluation and serving."""
        if not self.training and bool(real[:, -1].all()):
            return self.newest(item_vectors, real)
        return self(item_vectors, real)[:, -1]

    def newest(self, item_vectors: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """`forward(...)[:, -1]` in eval mode, the last layer computed for the newest slot alone: its keys and
        values still read every slot, but its query, output projection and feed-forward run on one slot of L
        (bench/user_tower.py). The newest slot must be real."""
        x = self.inputs(item_vectors, real)  # (B, L, D)
        *lower, last = self.transformer.layers
        if lower:
            mask = attention_mask(real, self.heads)  # (B * heads, L, L)
            for layer in lower:
                x = layer(x, src_mask=mask)  # (B, L, D)
        h = last.norm1(x)  # (B, L, D)
        attended = last.self_attn(h[:, -1:], h, h, key_padding_mask=~real, need_weights=False)[0]  # (B, 1, D)
        y = x[:, -1] + attended[:, 0]  # (B, D): the newest slot sees every real slot (nothing is later)
        y = y + last.linear2(last.activation(last.linear1(last.norm2(y))))  # (B, D)
        return F.normalize(self.projection(self.norm(y)), dim=-1)


class SequenceRecommender(nn.Module):
    """The product tower and the sequence user tower over it (shared item vectors)."""

    def __init__(self, items: ItemEncoder, users: SequenceUserTower):
        super().__init__()
        if items.dim != users.dim:
            raise ValueError(f"product vectors of {items.dim} dims for a user tower of width {users.dim}")
        self.items, self.users = items, users

    @property
    def dim(self) -> int:
        return self.items.dim

    def user_states(self, windows: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) positions, -1 = padding -> (B, L, D) per-slot user vectors. The positions index `table` (M, D)
        when given (vectors computed for this batch), else the catalog (the product tower's stored vectors)."""
        real = windows >= 0  # (B, L)
        w = windows.clamp_min(0)
        return self.users(self.items(w) if table is None else table[w], real)

    def embed_users(self, windows: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) right-aligned histories -> (B, D): the newest slot's vector.

        The history's product vectors are looked up in the catalog table `table` (N, D) (default
        `items.all()`): exactly the vectors an exported artifact stores and serving looks up, so the exported
        user vectors are the evaluated ones bit for bit."""
        table = self.items.all() if table is None else table
        return self.users.embed_windows(table, windows)

