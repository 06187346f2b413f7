"""LightningDataModule for two-tower training: render text once, tokenize once, batch by length.

Training examples are (history -> next item) pairs from the training part of each user's sequence.
Validation/test batches carry one user each (history text) and are scored against the whole catalog.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from towerrec.data.splits import Examples, Split
from towerrec.data.text import TextConfig, UserText, render_items
from towerrec.data.tokens import count_tokens, pad_batch, tokenize
from towerrec.utils.io import save_arrays

log = logging.getLogger(__name__)


def draw_uniform_negatives(num_items: int, n: int, seed: int, targets: np.ndarray) -> np.ndarray:
    """(n,) int64 item indices drawn uniformly with replacement from 0..num_items-1: a batch's extra negatives.

    The one sampler of uniform negatives (the model's loss gives them logQ log(1 / num_items) and masks
    accidental hits). Seeded by (seed, sum of the batch's targets, batch size), so a batch gets the same
    negatives whichever worker collates it and whenever it is replayed.
    """
    if num_items < 1 or n < 0:
        raise ValueError(f"need num_items >= 1 and n >= 0, got num_items={num_items}, n={n}")
    rng = np.random.default_rng([seed, int(targets.sum()), len(targets)])
    return rng.integers(0, num_items, n)


class BucketBatchSampler:
    """Shuffled batches of similar length: shuffle, cut into pools of `pool` batches, sort each pool by
    length, batch it, and shuffle the batch order. Seeded by (seed, epoch), so a resumed epoch replays the
    same batches. Shards batches across DDP ranks itself (use with use_distributed_sampler=False)."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, pool: int = 50,
                 drop_last: bool = True, num_replicas: int = 1, rank: int = 0):
        self.lengths = np.asarray(lengths)
        self.batch_size, self.seed, self.pool, self.drop_last = batch_size, seed, pool, drop_last
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0
        self.sampler = self  # Lightning calls batch_sampler.sampler.set_epoch(epoch) each epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths))
        batches = []
        span = self.batch_size * self.pool
        for start in range(0, len(order), span):
            chunk = order[start : start + span]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches.extend(chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size))
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        rng.shuffle(batches)
        per_rank = len(batches) // self.num_replicas if self.num_replicas > 1 else len(batches)
        return batches[self.rank * per_rank : (self.rank + 1) * per_rank] if self.num_replicas > 1 else batches

    def __iter__(self):
        yield from (b.tolist() for b in self._batches())

    def __len__(self) -> int:
        return len(self._batches())


class PairDataset(Dataset):
    def __init__(self, user_tokens: list[np.ndarray], targets: np.ndarray):
        self.user_tokens, self.targets = user_tokens, targets

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return i


class RetrievalDataModule(L.LightningDataModule):
    def __init__(
        self,
        split: Split,
        tokenizer,
        text: TextConfig,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        item_max_length: int = 48,
        user_max_length: int = 128,
        max_history: int = 50,
        uniform_negatives: int = 0,
        seed: int = 0,
        cache_dir: str | None = None,
        num_workers: int = 0,
    ):
        super().__init__()
        self.split, self.tokenizer, self.text = split, tokenizer, text
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.item_max_length, self.user_max_length = item_max_length, user_max_length
        self.max_history, self.uniform_negatives, self.seed = max_history, uniform_negatives, seed
        self.cache_dir, self.num_workers = cache_dir, num_workers
        self.pad_id = tokenizer.pad_token_id or 0
        self._prepared = False

    # ---- text and tokens -------------------------------------------------------------------------------
    def _cache_key(self) -> str:
        h = hashlib.blake2b(digest_size=8)
        for part in (self.split.fingerprint, repr(self.text), self.tokenizer.name_or_path, len(self.tokenizer),
                     self.item_max_length, self.user_max_length, self.max_history):
            h.update(repr(part).encode())
        h.update(repr(sorted(self.tokenizer.get_vocab().items())).encode())
        return h.hexdigest()

    def setup(self, stage: str | None = None) -> None:
        if self._prepared:
            return
        cache = Path(self.cache_dir) / f"tokens-{self._cache_key()}.npz" if self.cache_dir else None
        self.train_examples = self.split.train_pairs(self.max_history)
        self.eval_examples = {s: self.split.examples(s) for s in ("valid", "test")}
        self.item_texts = render_items(self.split.catalog, self.text)
        self.user_text = UserText(render_items(self.split.catalog, self.text, self.text.history_fields), self.text,
                                  lambda t: count_tokens(self.tokenizer, t))
        if cache is not None and cache.exists():
            log.info("loading tokenized text from %s", cache)
            self._load(cache)
        else:
            self.item_tokens = tokenize(self.tokenizer, self.item_texts, self.item_max_length)
            self.user_tokens = {"train": self._user_tokens(self.train_examples)}
            for s, ex in self.eval_examples.items():
                self.user_tokens[s] = self._user_tokens(ex)
            if cache is not None:
                self._save(cache)
        self._prepared = True

    def user_texts(self, examples: Examples) -> list[str]:
        return [self.user_text(h) for h in examples.histories]

    def _user_tokens(self, examples: Examples) -> list[np.ndarray]:
        return tokenize(self.tokenizer, self.user_texts(examples), self.user_max_length)

    def _save(self, path: Path) -> None:
        arrays = {"item": _pack(self.item_tokens)}
        for s, toks in self.user_tokens.items():
            arrays[s] = _pack(toks)
        save_arrays(path, {f"{k}_{part}": v for k, pair in arrays.items() for part, v in zip(("ids", "offsets"), pair)})

    def _load(self, path: Path) -> None:
        with np.load(path, allow_pickle=False) as z:
            self.item_tokens = _unpack(z["item_ids"], z["item_offsets"])
            self.user_tokens = {s: _unpack(z[f"{s}_ids"], z[f"{s}_offsets"]) for s in ("train", "valid", "test")}

    # ---- loaders --------------------------------------------------------------------------------------
    def _collate_pairs(self, rows: list[int]) -> dict:
        targets = self.train_examples.targets[rows]
        user = pad_batch([self.user_tokens["train"][i] for i in rows], self.pad_id)
        item_idx = torch.from_numpy(targets)
        if self.uniform_negatives:  # appended after the positives: the module's loss expects B + U item rows
            negatives = draw_uniform_negatives(len(self.item_tokens), self.uniform_negatives, self.seed, targets)
            item_idx = torch.cat([item_idx, torch.from_numpy(negatives)])
        item = pad_batch([self.item_tokens[i] for i in item_idx.tolist()], self.pad_id)
        item["item_idx"] = item_idx
        return {"user": user, "item": item, "num_positives": len(rows)}

    def _collate_users(self, stage: str):
        def collate(rows: list[int]) -> dict:
            batch = pad_batch([self.user_tokens[stage][i] for i in rows], self.pad_id)
            batch["example_idx"] = torch.tensor(rows, dtype=torch.long)
            return batch

        return collate

    def train_dataloader(self) -> DataLoader:
        world, rank = 1, 0
        if self.trainer is not None:
            world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = BucketBatchSampler([len(t) for t in self.user_tokens["train"]], self.batch_size, self.seed,
                                     num_replicas=world, rank=rank)
        return DataLoader(PairDataset(self.user_tokens["train"], self.train_examples.targets), batch_sampler=sampler,
                          collate_fn=self._collate_pairs, num_workers=self.num_workers)

    def _eval_loader(self, stage: str) -> DataLoader:
        order = np.argsort([len(t) for t in self.user_tokens[stage]], kind="stable")  # similar lengths together
        return DataLoader(order.tolist(), batch_size=self.eval_batch_size, collate_fn=self._collate_users(stage),
                          num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("valid")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")



def _pack(token_lists: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(token_lists) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(t) for t in token_lists])
    ids = np.concatenate(token_lists) if token_lists else np.zeros(0, dtype=np.int32)
    return ids.astype(np.int32), offsets


def _unpack(ids: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    return [ids[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
