"""The two towers: a text encoder with pooling, optional projection and L2 normalisation.

The product tower may add a learned item-id embedding (text + collaborative signal); items never seen in
training map to row 0, a fixed zero vector, so they fall back to text alone (cold start).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def layer_stack(encoder: nn.Module) -> tuple[nn.Module, str] | None:
    """(parent, attribute) of the transformer layer stack of common HF encoders (BERT-like, DistilBERT,
    RoBERTa, ...): `getattr(parent, attribute)` is the nn.ModuleList; None when there is none."""
    for path in ("encoder.layer", "transformer.layer", "layers", "layer"):
        parent, *names, last = [encoder, *path.split(".")]
        for name in names:
            parent = getattr(parent, name, None)
            if parent is None:
                break
        if parent is not None and isinstance(getattr(parent, last, None), nn.ModuleList):
            return parent, last
    return None


def encoder_layers(encoder: nn.Module) -> nn.ModuleList | None:
    """The stack of transformer layers of common HF encoders (BERT-like, DistilBERT, RoBERTa, ...)."""
    found = layer_stack(encoder)
    return None if found is None else getattr(*found)


def freeze_lower_layers(encoder: nn.Module, num_layers: int) -> None:
    """Freeze the embeddings and the lowest `num_layers` transformer layers (-1: the whole encoder)."""
    if num_layers == 0:
        return
    if num_layers < 0:
        encoder.requires_grad_(False)
        return
    layers = encoder_layers(encoder)
    if layers is None:
        raise ValueError(f"cannot find the transformer layers of {type(encoder).__name__} to freeze")
    if num_layers > len(layers):
        raise ValueError(f"cannot freeze {num_layers} layers: the encoder has {len(layers)}")
    embeddings = getattr(encoder, "embeddings", None)
    if embeddings is not None:
        embeddings.requires_grad_(False)
    for layer in layers[:num_layers]:
        layer.requires_grad_(False)


def set_dropout(module: nn.Module, p: float) -> None:
    """Set every dropout probability inside `module` (HF attention dropout included)."""
    for sub in module.modules():
        if isinstance(sub, nn.Dropout):
            sub.p = p
    config = getattr(module, "config", None)
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout"):
        if config is not None and hasattr(config, name):
            setattr(config, name, p)


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """(B, L, H) hidden states, (B, L) mask -> (B, H)."""
    if mode == "cls":
        return hidden[:, 0]
    if mode == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)
    raise ValueError(f"pooling must be 'mean' or 'cls', got {mode!r}")


class TextTower(nn.Module):
    def __init__(
        self,
        encoder: nn.Module,
        pooling: str = "mean",
        projection_dim: int | None = None,
        normalize: bool = True,
        item_id_counts: np.ndarray | None = None,
    ):
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.normalize = normalize
        hidden = encoder.config.hidden_size
        self.projection = nn.Linear(hidden, projection_dim, bias=False) if projection_dim else None
        if self.projection is not None and projection_dim == hidden:
            nn.init.eye_(self.projection.weight)  # start from the pretrained embedding space
        self.dim = projection_dim or hidden
        self.id_embedding = None
        if item_id_counts is not None:
            # row 0 = unseen item (zero, never trained); seen items get rows 1..S
            seen = np.asarray(item_id_counts) > 0
            rows = np.zeros(len(seen), dtype=np.int64)
            rows[seen] = np.arange(1, seen.sum() + 1)
            self.register_buffer("id_rows", torch.from_numpy(rows), persistent=True)
            self.id_embedding = nn.Embedding(int(seen.sum()) + 1, self.dim, padding_idx=0)
            nn.init.normal_(self.id_embedding.weight, std=0.01)
            with torch.no_grad():
                self.id_embedding.weight[0].zero_()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, item_idx: torch.Tensor | None = None):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, H)
        emb = pool(hidden, attention_mask, self.pooling)  # (B, H)
        if self.projection is not None:
            emb = self.projection(emb)  # (B, D)
        if self.id_embedding is not None and item_idx is not None:
            known = (item_idx >= 0) & (item_idx < len(self.id_rows))  # new products: row 0, text only
            rows = torch.where(known, self.id_rows[item_idx.clamp(0, len(self.id_rows) - 1)], torch.zeros_like(item_idx))
            emb = emb + self.id_embedding(rows)
        return F.normalize(emb, dim=-1) if self.normalize else emb


class TwoTower(nn.Module):
    """User tower over history text, product tower over product text; optionally one shared encoder."""

    def __init__(
        self,
        encoder: nn.Module,
        pooling: str = "mean",
        projection_dim: int | None = None,
        shared_encoder: bool = True,
        freeze_layers: int = 0,
        item_id_counts: np.ndarray | None = None,
        normalize: bool = True,
        dropout: float | None = None,
    ):
        super().__init__()
        if dropout is not None:
            set_dropout(encoder, dropout)
        item_encoder = encoder if shared_encoder else copy.deepcopy(encoder)
        for enc in {id(encoder): encoder, id(item_encoder): item_encoder}.values():
            freeze_lower_layers(enc, freeze_layers)
        self.user_tower = TextTower(encoder, pooling, projection_dim, normalize)
        self.item_tower = TextTower(item_encoder, pooling, projection_dim, normalize, item_id_counts)
        self.shared_encoder = shared_encoder
        self.train()  # from_pretrained returns eval mode; Lightning keeps whatever mode it finds

    @property
    def dim(self) -> int:
        return self.item_tower.dim

    def embed_users(self, batch: dict) -> torch.Tensor:
        return self.user_tower(batch["input_ids"], batch["attention_mask"])  # (B, D)

    def embed_items(self, batch: dict) -> torch.Tensor:
        return self.item_tower(batch["input_ids"], batch["attention_mask"], batch.get("item_idx"))  # (B, D)
