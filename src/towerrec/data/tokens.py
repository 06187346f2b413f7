"""Token ids without padding (`tokenize`) and dynamic padding per batch (`pad_batch`): the one tokenization path."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def tokenize(tokenizer, texts: Sequence[str], max_length: int, batch_size: int = 2048) -> list[np.ndarray]:
    """Token ids of each text (with special tokens), truncated to `max_length`; no padding."""
    out: list[np.ndarray] = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[start : start + batch_size]), truncation=True, max_length=max_length,
                        add_special_tokens=True)
        out.extend(np.asarray(ids, dtype=np.int32) for ids in enc["input_ids"])
    return out


def pad_batch(token_lists: Sequence[np.ndarray], pad_id: int) -> dict[str, torch.Tensor]:
    """Dynamic padding to the longest sequence in the batch -> input_ids, attention_mask (B, L)."""
    length = max(len(t) for t in token_lists)
    ids = torch.full((len(token_lists), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_lists), length), dtype=torch.long)
    for row, t in enumerate(token_lists):
        ids[row, : len(t)] = torch.from_numpy(t.astype(np.int64))
        mask[row, : len(t)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def count_tokens(tokenizer, text: str) -> int:
    """Token count without special tokens: the budget measure of user texts."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])
