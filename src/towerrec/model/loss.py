"""Retrieval loss for the two towers: in-batch sampled softmax, its helpers, and a GradCache variant.

Everything here works on embeddings, never on text or models, so it is tested with hand-made vectors.

The loss follows the order of TensorFlow Recommenders' retrieval task:
    logits = queries @ items.T / temperature        # (B, M)
    logits -= log_q                                  # logQ correction for popularity-biased sampling
    logits[accidental hits] = very negative          # same item as the row's positive, other column
    loss = cross_entropy(logits, labels)

Columns of `items` are the candidates of every query: the in-batch positives (rows 0..B-1 by default),
then any extra negatives (uniform samples, which `towerrec.data.datamodule` draws and appends at collate
time; a `CrossBatchMemory`; other ranks via `gather_with_grad`, located by `rank_offset_labels`; ids of uneven
length per rank via `gather_uneven`).

`cached_loss_backward` computes the same loss and the same parameter gradients as embedding the whole
batch at once, in chunks small enough for memory (GradCache, Gao et al. 2021).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

REDUCTIONS = ("mean", "sum", "none")


# --------------------------------------------------------------------------------------------------
# The loss
# --------------------------------------------------------------------------------------------------


def in_batch_softmax_loss(
    queries: Tensor,
    items: Tensor,
    item_ids: Tensor,
    temperature: float | Tensor,
    log_q: Tensor | None = None,
    labels: Tensor | None = None,
    mask_accidental_hits: bool = True,
    reduction: str = "mean",
) -> Tensor:
    """Sampled-softmax cross-entropy of each query against every item column.

    Args:
        queries: (B, D) query (user) embeddings, normally L2-normalised.
        items: (M, D) candidate item embeddings. By default rows 0..B-1 are the positives of
            queries 0..B-1 and rows B.. are extra negatives.
        item_ids: (M,) integer catalog ids of the item rows; two columns with the same id are the
            same product (used to mask accidental hits).
        temperature: positive float, or a scalar tensor (e.g. a clamped exp of a learned
            log-temperature; gradients flow into it).
        log_q: optional (M,) log sampling probability of each item column (logQ correction). Additive
            constants do not matter. Columns drawn from different distributions (in-batch vs uniform)
            need their own values, e.g. `log_q_from_counts(...)[ids]` and `log(1 / num_items)`.
        labels: optional (B,) long column index of each query's positive; default `arange(B)`.
            Under DDP with gathered items, pass `rank_offset_labels(B, rank, columns_per_rank)`.
        mask_accidental_hits: if True, a column holding the same item id as the row's positive (but
            not the positive column itself) is removed from that row's softmax.
        reduction: 'mean', 'sum' or 'none' (then a (B,) tensor of per-query losses).

    Returns:
        The loss, in float32 (or float64 for float64 inputs) whatever the embedding dtype, so that
        float16/bfloat16 embeddings give a finite loss.
    """
    num_queries, num_items = _check_inputs(queries, items, item_ids, temperature, log_q, labels, reduction)
    if labels is None:
        labels = torch.arange(num_queries, device=queries.device)  # (B,)

    compute_dtype = torch.promote_types(queries.dtype, torch.float32)
    logits = (queries @ items.T).to(compute_dtype) / temperature  # (B, M)
    if log_q is not None:
        logits = logits - log_q.to(compute_dtype)[None, :]  # (B, M)
    if mask_accidental_hits:
        positive_ids = item_ids[labels]  # (B,)
        hits = positive_ids[:, None] == item_ids[None, :]  # (B, M)
        hits[torch.arange(num_queries, device=hits.device), labels] = False  # never mask the positive
        # A finite "minus infinity": exp() of it is 0, and nothing overflows to inf or nan.
        logits = logits.masked_fill(hits, torch.finfo(compute_dtype).min / 2)
    return F.cross_entropy(logits, labels, reduction=reduction)


def _check_inputs(
    queries: Tensor,
    items: Tensor,
    item_ids: Tensor,
    temperature: float | Tensor,
    log_q: Tensor | None,
    labels: Tensor | None,
    reduction: str,
) -> tuple[int, int]:
    """Shape and dtype checks (metadata only: no device sync). Returns (B, M)."""
    if queries.ndim != 2 or items.ndim != 2:
        raise ValueError(
            f"queries and items must be 2-D (rows, dim), got queries {tuple(queries.shape)} "
            f"and items {tuple(items.shape)}"
        )
    (num_queries, dim), (num_items, item_dim) = queries.shape, items.shape
    if dim != item_dim:
        raise ValueError(f"queries have dim {dim} but items have dim {item_dim}")
    if item_ids.shape != (num_items,):
        raise ValueError(f"item_ids must have shape ({num_items},), one id per item row, got {tuple(item_ids.shape)}")
    if item_ids.is_floating_point() or item_ids.is_complex():
        raise ValueError(f"item_ids must be integer catalog ids, got dtype {item_ids.dtype}")
    if isinstance(temperature, Tensor):
        if temperature.numel() != 1:
            raise ValueError(f"temperature must be a scalar, got a tensor of shape {tuple(temperature.shape)}")
    elif not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if log_q is not None and log_q.shape != (num_items,):
        raise ValueError(f"log_q must have shape ({num_items},), one value per item row, got {tuple(log_q.shape)}")
    if labels is None:
        if num_items < num_queries:
            raise ValueError(
                f"items has {num_items} rows but there are {num_queries} queries: without labels, rows "
                f"0..{num_queries - 1} of items must be the positives"
            )
    elif labels.shape != (num_queries,) or labels.dtype != torch.long:
        raise ValueError(
            f"labels must be a long tensor of shape ({num_queries},), got {labels.dtype} {tuple(labels.shape)}"
        )
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return num_queries, num_items


def log_q_from_counts(counts: Tensor | np.ndarray, min_count: float = 1.0) -> Tensor:
    """(N,) log probability that in-batch sampling draws each item: log(count / total).

    `counts` are training interaction counts per item index (e.g. `Split.item_counts()`). Counts below
    `min_count` (zeros, in practice) are raised to it so that every log is finite; such items are
    never in-batch positives, so their value only matters if they reach the softmax another way.
    The true in-batch inclusion probability is about batch_size * p; the constant factor cancels in
    the softmax. Index the result with the ids of the item columns: `log_q_from_counts(c)[item_ids]`.
    """
    counts = torch.as_tensor(counts)
    if counts.ndim != 1 or counts.numel() == 0:
        raise ValueError(f"counts must be a non-empty 1-D array (one count per item), got shape {tuple(counts.shape)}")
    if not min_count > 0:
        raise ValueError(f"min_count must be positive, got {min_count}")
    dtype = torch.float64 if counts.dtype == torch.float64 else torch.float32
    counts = counts.to(dtype)
    if not bool(torch.isfinite(counts).all()) or bool((counts < 0).any()):
        raise ValueError("counts must be finite and non-negative")
    smoothed = counts.clamp(min=min_count)  # (N,)
    return smoothed.log() - smoothed.sum().log()  # (N,)


# --------------------------------------------------------------------------------------------------
# Extra negatives: a memory bank of recent items
# --------------------------------------------------------------------------------------------------


class CrossBatchMemory:
    """FIFO queue of the most recent item embeddings (detached) and their ids, up to `capacity` rows.

    Buffers live on the device and dtype of the first enqueued embeddings; later embeddings are
    moved to them. The embeddings are stale (computed with older weights) and carry no gradient: they
    only add negatives. Typical step:
        mem_emb, mem_ids = memory.get()
        loss = in_batch_softmax_loss(q, torch.cat([items, mem_emb.to(items)]), torch.cat([ids, mem_ids]), t)
        memory.enqueue(items[:B], ids[:B])  # positives, after the loss, so a batch never meets its own copies
    """

    def __init__(self, capacity: int, dim: int | None = None):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.dim = dim
        self._emb: Tensor | None = None  # (capacity, D) ring buffer
        self._ids: Tensor | None = None  # (capacity,)
        self._next = 0  # ring position of the next write
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def enqueue(self, emb: Tensor, ids: Tensor) -> None:
        """Append rows (n, D) with their ids (n,); the oldest rows drop out beyond capacity."""
        if emb.ndim != 2 or ids.shape != (emb.shape[0],):
            raise ValueError(
                f"enqueue needs embeddings (n, D) and ids (n,), got {tuple(emb.shape)} and {tuple(ids.shape)}"
            )
        if self.dim is not None and emb.shape[1] != self.dim:
            raise ValueError(f"this memory holds {self.dim}-dim embeddings, got {emb.shape[1]}-dim")
        self.dim = emb.shape[1]
        if self._emb is None:
            self._emb = emb.new_zeros(self.capacity, self.dim)
            self._ids = ids.new_zeros(self.capacity)
        emb = emb.detach().to(self._emb)[-self.capacity :]  # (n', D), n' <= capacity
        ids = ids.detach().to(self._ids)[-self.capacity :]  # (n',)
        n = emb.shape[0]
        positions = (self._next + torch.arange(n, device=self._emb.device)) % self.capacity  # (n',)
        self._emb[positions] = emb
        self._ids[positions] = ids
        self._next = (self._next + n) % self.capacity
        self._size = min(self._size + n, self.capacity)

    def get(self) -> tuple[Tensor, Tensor]:
        """(K, D) embeddings and (K,) ids held now, oldest first; K = len(self) <= capacity."""
        if self._emb is None:
            return torch.zeros(0, self.dim or 0), torch.zeros(0, dtype=torch.long)
        start = (self._next - self._size) % self.capacity
        order = (start + torch.arange(self._size, device=self._emb.device)) % self.capacity  # (K,)
        return self._emb[order], self._ids[order]

    def clear(self) -> None:
        """Forget every row (keeps the buffers, dim, device and dtype)."""
        self._next = 0
        self._size = 0


# --------------------------------------------------------------------------------------------------
# DDP: negatives from every rank
# --------------------------------------------------------------------------------------------------


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class _AllGather(torch.autograd.Function):
    """All-gather along dim 0 whose backward hands each rank the gradient of its own slice, summed
    over every rank's loss (all-reduce, then slice: works on gloo and nccl alike)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
        ctx.rows, ctx.rank = x.shape[0], rank
        parts = [torch.empty_like(x) for _ in range(world)]
        torch.distributed.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)  # (world * n, ...)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        torch.distributed.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]  # (n, ...)


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate x (n, ...) from every rank along dim 0, in rank order: (world_size * n, ...).

    Gradients flow back to each rank's own slice, summed over the ranks' losses, so DDP's gradient
    averaging gives the gradient of the mean loss. Every rank must pass the same shape (use
    drop_last=True). Without an initialised process group, or with one rank, returns x itself.
    """
    if not _distributed() or torch.distributed.get_world_size() == 1:
        return x
    if not x.requires_grad:  # e.g. ids: no autograd bookkeeping needed
        parts = [torch.empty_like(x) for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)
    return _AllGather.apply(x)


def gather_uneven(t: torch.Tensor) -> torch.Tensor:
    """Concatenate a 1-D tensor (no grad) from every rank, in rank order; ranks may hold different lengths (the
    sequence towers' next items: their in-batch columns are the global batch's, each rank embedding them with its
    own replica of the product tower while DDP averages the gradients). Without a process group, or with one
    rank, returns t itself."""
    if not _distributed() or torch.distributed.get_world_size() == 1:
        return t
    world = torch.distributed.get_world_size()
    size = torch.tensor([len(t)], device=t.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    torch.distributed.all_gather(sizes, size)
    padded = torch.zeros(int(max(n.item() for n in sizes)), dtype=t.dtype, device=t.device)
    padded[: len(t)] = t
    parts = [torch.empty_like(padded) for _ in range(world)]
    torch.distributed.all_gather(parts, padded)
    return torch.cat([part[: int(n.item())] for part, n in zip(parts, sizes)])  # (sum of lengths,)


def rank_offset_labels(
    num_positives: int,
    rank: int | None = None,
    columns_per_rank: int | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """(B,) column of each of this rank's B positives among the item rows gathered from every rank.

    Every rank sends the same `columns_per_rank` rows (default B): its B positives, then its extra
    negatives (e.g. uniform samples). `gather_with_grad` concatenates them in rank order,
    [pos_0, neg_0, pos_1, neg_1, ...], so rank r's positives are the columns
    r * columns_per_rank + arange(B). With one rank (rank 0) this is arange(B), the loss's default.
    `rank` defaults to this process's rank (0 without a process group).
    """
    if rank is None:
        rank = torch.distributed.get_rank() if _distributed() else 0
    if columns_per_rank is None:
        columns_per_rank = num_positives
    if num_positives < 0 or rank < 0 or columns_per_rank < num_positives:
        raise ValueError(
            "need num_positives >= 0, rank >= 0 and columns_per_rank >= num_positives (positives come first), "
            f"got num_positives={num_positives}, rank={rank}, columns_per_rank={columns_per_rank}"
        )
    return torch.arange(num_positives, device=device) + rank * columns_per_rank


# --------------------------------------------------------------------------------------------------
# GradCache: large batches in small memory
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _RngState:
    """CPU and (already initialised) CUDA random states, to replay dropout exactly."""

    cpu: Tensor
    cuda: list[Tensor]

    @classmethod
    def capture(cls) -> _RngState:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
        return cls(torch.get_rng_state(), cuda)

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Run the block from this state; the caller's random state is restored afterwards."""
        with torch.random.fork_rng(devices=range(len(self.cuda))):
            torch.set_rng_state(self.cpu)
            if self.cuda:
                torch.cuda.set_rng_state_all(self.cuda)
            yield


def _embed_without_grad(
    embed: Callable[[Any], Tensor], chunks: Sequence[Any], side: str
) -> tuple[Tensor, list[_RngState], list[int]]:
    """First pass: (N, D) concatenated embeddings, the random state before each chunk, chunk sizes."""
    embs, states = [], []
    for chunk in chunks:
        states.append(_RngState.capture())
        with torch.no_grad():
            emb = embed(chunk)
        if not isinstance(emb, Tensor) or emb.ndim != 2:
            raise ValueError(f"embed_{side} must return a (n, D) tensor, got {getattr(emb, 'shape', type(emb))}")
        embs.append(emb)
    return torch.cat(embs), states, [emb.shape[0] for emb in embs]


def _backward_chunks(
    embed: Callable[[Any], Tensor],
    chunks: Sequence[Any],
    states: list[_RngState],
    rows: list[int],
    grad: Tensor | None,
    side: str,
) -> None:
    """Second pass: re-embed each chunk with grad under its saved random state, push its gradient."""
    if grad is None:  # the loss does not depend on this side
        return
    for chunk, state, chunk_grad in zip(chunks, states, grad.split(rows)):
        with state.replay():
            emb = embed(chunk)  # (n, D)
        if emb.shape != chunk_grad.shape:
            raise RuntimeError(
                f"embed_{side} returned {tuple(emb.shape)} when re-run on a chunk, not the shape of its first "
                "run: it must be deterministic given the random state"
            )
        if not emb.requires_grad:  # a frozen tower: nothing to accumulate
            return
        emb.backward(chunk_grad)


def cached_loss_backward(
    embed_queries: Callable[[Any], Tensor],
    embed_items: Callable[[Any], Tensor],
    query_chunks: Sequence[Any],
    item_chunks: Sequence[Any],
    loss_fn: Callable[[Tensor, Tensor], Tensor],
) -> Tensor:
    """Backpropagate loss_fn over the whole batch while embedding only one chunk at a time.

    1. Embed every chunk without grad, saving the random state before each (CPU and CUDA).
    2. Concatenate into leaf tensors q (Nq, D) and i (Ni, D), compute loss_fn(q, i) and backward:
       this gives d loss / d embeddings (and the gradients of anything inside loss_fn, such as a
       learned temperature).
    3. Re-embed each chunk with grad under its saved random state (same dropout masks) and call
       emb.backward(its slice of the cached gradient), accumulating parameter gradients.

    Parameter gradients equal those of embedding the same chunks with grad in one graph and calling
    loss.backward(). Chunks are opaque (e.g. dicts of token tensors, see `split_into_chunks`); the
    query chunks are embedded before the item chunks, in order. Call the optimizer step afterwards.
    Returns the loss, detached.

    Under DDP the repeated backward calls would each start a gradient all-reduce: run this inside
    `model.no_sync()` and all-reduce the gradients once afterwards (or use a single-process run).
    """
    if not query_chunks or not item_chunks:
        raise ValueError("cached_loss_backward needs at least one query chunk and one item chunk")
    if not torch.is_grad_enabled():
        raise RuntimeError("cached_loss_backward needs gradients enabled (it was called under torch.no_grad())")

    queries, query_states, query_rows = _embed_without_grad(embed_queries, query_chunks, "queries")  # (Nq, D)
    items, item_states, item_rows = _embed_without_grad(embed_items, item_chunks, "items")  # (Ni, D)
    queries.requires_grad_(True)
    items.requires_grad_(True)
    loss = loss_fn(queries, items)
    if loss.ndim != 0:
        raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
    loss.backward()

    _backward_chunks(embed_queries, query_chunks, query_states, query_rows, queries.grad, "queries")
    _backward_chunks(embed_items, item_chunks, item_states, item_rows, items.grad, "items")
    return loss.detach()


def split_into_chunks(batch: Tensor | Mapping[str, Tensor], chunk_size: int) -> list:
    """Slice a tensor, or a dict of tensors sharing dim 0, into pieces of at most chunk_size rows."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    if isinstance(batch, Tensor):
        return list(batch.split(chunk_size))
    sizes = {key: value.shape[0] for key, value in batch.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"every tensor of the batch must have the same number of rows, got {sizes}")
    n = next(iter(sizes.values()))
    return [
        {key: value[start : start + chunk_size] for key, value in batch.items()} for start in range(0, n, chunk_size)
    ]


def full_softmax_loss(queries: Tensor, items: Tensor, targets: Tensor, temperature: float | Tensor,
                      reduction: str = "mean") -> Tensor:
    """Cross-entropy of each query (P, D) over the whole catalog `items` (N, D); `targets` (P,) positions."""
    compute_dtype = torch.promote_types(queries.dtype, torch.float32)
    logits = (queries @ items.T).to(compute_dtype) / temperature  # (P, N)
    return F.cross_entropy(logits, targets, reduction=reduction)
