"""Frozen text-encoder vectors of the catalog, computed once and cached on disk.

With `model.text_encoder.train=frozen` the text encoder never changes during training, so every product's
pooled text vector is computed once (through the one encode path) and stored as
`<cache_dir>/textvec-<key>.npy`, where the key hashes the encoder's identity, pooling, input length and the
rendered texts themselves: a second run or a sweep trial with the same encoder and text template reuses the
file; a changed template, text or encoder gives a new key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from towerrec.data.tokens import tokenize
from towerrec.model.encode import encode_tokens
from towerrec.model.encoders import load_encoder
from towerrec.model.towers import pool
from towerrec.utils.io import save_arrays

log = logging.getLogger(__name__)


def cache_key(encoder_cfg: Mapping, pooling: str, max_length: int, texts: Sequence[str], seed: int = 0,
              extra: Mapping | None = None) -> str:
    """A digest of everything the vectors depend on (the seed matters only for random-init encoders); `extra`:
    what else a cached file depends on (towerrec.model.text_encoder: the number of trained top layers)."""
    h = hashlib.blake2b(digest_size=12)
    what = {"encoder": dict(encoder_cfg), "pooling": pooling, "max_length": int(max_length),
            "seed": int(seed) if encoder_cfg.get("random_init") else None}
    if extra:  # absent for the text vectors: their existing cache files keep their keys
        what["extra"] = dict(extra)
    h.update(json.dumps(what, sort_keys=True, default=str).encode())
    for text in texts:
        h.update(text.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()


@torch.no_grad()
def compute_text_vectors(encoder, tokenizer, texts: Sequence[str], max_length: int, pooling: str = "mean",
                         batch_size: int = 128, progress: bool = True) -> np.ndarray:
    """(N, H) float32 pooled (not normalised) encoder outputs of `texts`."""
    def embed(input_ids, attention_mask, _idx):
        hidden = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, H)
        return pool(hidden, attention_mask, pooling)  # (B, H)

    encoder.eval()
    out = encode_tokens(embed, tokenize(tokenizer, list(texts), max_length), tokenizer.pad_token_id or 0,
                        encoder.config.hidden_size, batch_size=batch_size, progress=progress,
                        desc="text vectors")
    return out.numpy()


def load_text_encoder(encoder_cfg: Mapping, texts: Sequence[str], seed: int = 0):
    """(encoder in eval mode, tokenizer) as `text_vectors` loads them: random-init encoders draw their weights
    from `seed` and train their tokenizer on `texts`, so the same arguments give the same encoder."""
    torch.manual_seed(seed)  # random-init encoders: the same weights for the same seed
    encoder, tokenizer = load_encoder(encoder_cfg, corpus=texts)
    return encoder.eval(), tokenizer


def text_vectors(encoder_cfg: Mapping, texts: Sequence[str], *, max_length: int, pooling: str = "mean",
                 batch_size: int = 128, cache_dir: str | os.PathLike | None = None, seed: int = 0,
                 progress: bool = True) -> tuple[np.ndarray, torch.nn.Module, object]:
    """((N, H) float32 frozen text vectors, encoder, tokenizer): the vectors from the cache when present, else
    computed and saved; the encoder (eval mode) and tokenizer are those that compute them (an exported
    artifact embeds products added later and free-text queries with them)."""
    key = cache_key(encoder_cfg, pooling, max_length, texts, seed)
    path = Path(cache_dir) / f"textvec-{key}.npy" if cache_dir else None
    encoder, tokenizer = load_text_encoder(encoder_cfg, texts, seed)
    if path is not None and path.is_file():
        vectors = np.load(path, allow_pickle=False)
        if vectors.shape == (len(texts), encoder.config.hidden_size):
            log.info("text vectors from %s", path)
            return vectors, encoder, tokenizer
        log.warning("%s has shape %s, expected (%d, %d): recomputing", path, vectors.shape, len(texts),
                    encoder.config.hidden_size)
    vectors = compute_text_vectors(encoder, tokenizer, texts, max_length, pooling, batch_size, progress)
    if path is not None:
        save_arrays(path, vectors)
    return vectors, encoder, tokenizer
