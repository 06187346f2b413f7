"""Leave-last-out splits over time-ordered user sequences.

For each user with at least `min_interactions` events, sorted by timestamp (ties broken by a
deterministic hash of (user, item, occurrence), never by item id):
    test:  history = seq[:-1], target = seq[-1]
    valid: history = seq[:-2], target = seq[-2]
    train: seq[:-2], giving (seq[:t] -> seq[t]) pairs for t >= 1
Every history holds only items strictly before its target in the user's timeline.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pandas as pd

from towerrec.data.schema import Catalog, DataError, Dataset


def tie_break_key(user_ids: pd.Series, item_ids: pd.Series, occurrence: pd.Series) -> np.ndarray:
    """uint64 hash of (user, item, occurrence): orders events that share a timestamp."""
    keys = user_ids.astype(str) + "\x1f" + item_ids.astype(str) + "\x1f" + occurrence.astype(str)
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "little") for k in keys),
        dtype=np.uint64,
        count=len(keys),
    )


@dataclasses.dataclass
class Examples:
    """(history -> target) examples of one stage, one row per user."""

    users: np.ndarray  # (U,) pseudonymized user ids
    histories: list[np.ndarray]  # U arrays of item indices, oldest first
    targets: np.ndarray  # (U,) item index

    def __len__(self) -> int:
        return len(self.targets)


@dataclasses.dataclass
class Split:
    """A dataset split leave-last-out; item indices are catalog row positions."""

    name: str
    catalog: Catalog
    users: np.ndarray  # (U,) pseudonymized ids of users kept
    sequences: list[np.ndarray]  # U full time-ordered sequences of item indices
    fingerprint: str = ""

    @property
    def num_items(self) -> int:
        return len(self.catalog)

    def train_sequences(self) -> list[np.ndarray]:
        return [s[:-2] for s in self.sequences]

    def examples(self, stage: str) -> Examples:
        if stage not in ("valid", "test"):
            raise ValueError(f"stage must be 'valid' or 'test', got {stage!r}")
        cut = 2 if stage == "valid" else 1
        return Examples(
            users=self.users,
            histories=[s[:-cut] for s in self.sequences],
            targets=np.array([s[-cut] for s in self.sequences], dtype=np.int64),
        )

    def train_pairs(self, max_history: int | None = None) -> Examples:
        """Every (prefix -> next item) pair inside the training part of each sequence."""
        users, histories, targets = [], [], []
        for u, seq in zip(self.users, self.train_sequences()):
            for t in range(1, len(seq)):
                start = 0 if max_history is None else max(0, t - max_history)
                users.append(u)
                histories.append(seq[start:t])
                targets.append(seq[t])
        return Examples(np.array(users, dtype=object), histories, np.array(targets, dtype=np.int64))

    def item_counts(self) -> np.ndarray:
        """(N,) training interaction count of each item (popularity; no valid/test targets)."""
        counts = np.zeros(self.num_items, dtype=np.int64)
        for seq in self.train_sequences():
            np.add.at(counts, seq, 1)
        return counts


def leave_last_out(dataset: Dataset, min_interactions: int = 3) -> Split:
    """Sort each user's events by (timestamp, tie-break hash) and keep users with enough events."""
    if min_interactions < 3:
        raise ValueError("leave-last-out needs min_interactions >= 3 (train, valid and test)")
    ev = dataset.interactions.events[["user_id", "item_id", "timestamp"]].copy()
    ev["item"] = dataset.catalog.index_of(ev["item_id"])
    ev = ev.sort_values(["user_id", "timestamp"], kind="mergesort")  # repeats numbered in time order
    occurrence = ev.groupby(["user_id", "item_id"]).cumcount()
    ev["tie"] = tie_break_key(ev["user_id"], ev["item_id"], occurrence)
    ev = ev.sort_values(["user_id", "timestamp", "tie"], kind="mergesort")
    sizes = ev.groupby("user_id", sort=False).size()
    keep = sizes[sizes >= min_interactions]
    if len(keep) == 0:
        raise DataError(
            f"{dataset.name}: no user has {min_interactions} or more interactions, so there is nothing "
            "to split leave-last-out (every user needs a train, a validation and a test item)"
        )
    ev = ev[ev["user_id"].isin(keep.index)]
    users, sequences = [], []
    for user, group in ev.groupby("user_id", sort=True):
        users.append(user)
        sequences.append(group["item"].to_numpy(dtype=np.int64))
    return Split(dataset.name, dataset.catalog, np.array(users, dtype=object), sequences, dataset.fingerprint())
