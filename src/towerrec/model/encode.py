"""The one encode path: token lists -> length-sorted, dynamically padded batches -> (N, D) vectors.

Export, the zero-shot baseline, validation inside training and serving all encode through `encode_tokens`,
so the same tokens, batch size and weights give the same vectors bit for bit wherever they are computed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from towerrec.data.tokens import pad_batch, tokenize

# (input_ids (B, L), attention_mask (B, L), item_idx (B,) or None) -> (B, D)
EmbedFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


@torch.no_grad()
def encode_tokens(embed: EmbedFn, tokens: Sequence[np.ndarray], pad_id: int, dim: int, *, batch_size: int = 256,
                  device: torch.device | str = "cpu", item_idx: np.ndarray | None = None, progress: bool = False,
                  desc: str = "encode") -> torch.Tensor:
    """(N, D) float32 embeddings on `device`, batches of similar length (stable sort by token count).

    `item_idx` (N,) goes with each row to `embed` (the product tower's id embedding); None: text only."""
    out = torch.empty(len(tokens), dim, device=device)
    if len(tokens) == 0:
        return out
    order = np.argsort([len(t) for t in tokens], kind="stable")
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
        rows = order[start : start + batch_size]
        batch = pad_batch([tokens[i] for i in rows], pad_id)
        idx = None if item_idx is None else torch.as_tensor(np.asarray(item_idx)[rows], dtype=torch.long,
                                                              device=device)
        emb = embed(batch["input_ids"].to(device), batch["attention_mask"].to(device), idx)  # (B, D)
        out[torch.as_tensor(rows, device=device)] = emb.float()  # autocast may give bf16
    return out


def encode_texts(tower: torch.nn.Module, tokenizer, texts: Sequence[str], max_length: int, batch_size: int = 256,
                 item_idx: np.ndarray | None = None, progress: bool = False, desc: str = "encode") -> np.ndarray:
    """(N, D) float32 tower embeddings of `texts` in eval mode (the training mode is restored after)."""
    tokens = tokenize(tokenizer, list(texts), max_length) if len(texts) else []
    was_training = tower.training
    tower.eval()
    try:
        out = encode_tokens(tower, tokens, tokenizer.pad_token_id or 0, tower.dim, batch_size=batch_size,
                            device=next(tower.parameters()).device, item_idx=item_idx, progress=progress, desc=desc)
    finally:
        tower.train(was_training)
    return out.cpu().numpy()


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """L2-normalised float32 rows; rows already of unit norm (to 1e-5) are left bit-identical."""
    x = np.array(x, dtype=np.float32, copy=True)
    norms = np.linalg.norm(x, axis=1)
    fix = np.abs(norms - 1.0) > 1e-5
    if (norms[fix] == 0).any():
        raise ValueError("cannot normalise a zero embedding vector")
    x[fix] /= norms[fix, None]
    return x
