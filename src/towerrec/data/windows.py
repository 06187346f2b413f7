"""History windows as the sequence towers read them: right-aligned (the newest item in the last slot, -1 padding
on the left), and the training windows cut from each sequence. Plain numpy: serving uses it without Lightning."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def trim_padding(windows, *others):
    """Right-aligned (B, L) windows (-1 = padding) and arrays or tensors aligned with them, without the leading
    slots that are padding in every row -> (B, L') each, L' >= 1 (numpy arrays or CPU tensors alike)."""
    real = np.asarray(windows >= 0).any(0)  # (L,)
    first = int(real.argmax()) if real.any() else windows.shape[1] - 1
    return tuple(t[:, first:] for t in (windows, *others))


def right_aligned(histories: Sequence[np.ndarray], length: int) -> np.ndarray:
    """(B, L) int64 windows of the newest `length` items of each history (oldest first), -1 on the left."""
    out = np.full((len(histories), length), -1, dtype=np.int64)
    for row, h in enumerate(histories):
        h = np.asarray(h, dtype=np.int64)[len(h) - length :] if len(h) > length else np.asarray(h, dtype=np.int64)
        if len(h):
            out[row, length - len(h) :] = h
    return out


def training_windows(sequences: Sequence[np.ndarray], max_len: int) -> np.ndarray:
    """(W, max_len + 1) windows cut from the newest end of each sequence of at least two items."""
    windows = []
    for seq in sequences:
        seq = np.asarray(seq, dtype=np.int64)
        stop = len(seq)
        while stop >= 2:
            start = max(0, stop - max_len - 1)
            windows.append(seq[start:stop])
            stop = start + 1  # the next window ends with this one's first item: each transition once
            if start == 0:
                break
    return right_aligned(windows, max_len + 1) if windows else np.zeros((0, max_len + 1), np.int64)
