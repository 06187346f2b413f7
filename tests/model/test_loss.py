"""Retrieval loss: hand-worked values, masking, dtypes, the memory bank, DDP helpers, GradCache."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from towerrec.model.loss import (
    CrossBatchMemory,
    cached_loss_backward,
    gather_with_grad,
    in_batch_softmax_loss,
    log_q_from_counts,
    rank_offset_labels,
    split_into_chunks,
)

# Two queries and two positive items in 3 dims, all unit length:
#   q0 = (1, 0, 0)    i0 = (1, 0, 0)
#   q1 = (0, 1, 0)    i1 = (0.6, 0.8, 0)
# Scores q @ i.T = [[1.0, 0.6],
#                   [0.0, 0.8]]
# Each row's loss is -log softmax(row)[label]; with two columns that is softplus(other - positive),
# softplus(x) = log(1 + e^x).
Q = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
ITEMS = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0]], dtype=torch.float64)
EXTRA = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)  # scores 0 with both queries
IDS = torch.tensor([10, 11])


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_hand_worked_loss():
    # row 0: softplus(0.6 - 1.0) = log(1 + e^-0.4) = 0.513015
    # row 1: softplus(0.0 - 0.8) = log(1 + e^-0.8) = 0.371101
    # mean = 0.442058
    loss = in_batch_softmax_loss(Q, ITEMS, IDS, temperature=1.0)
    assert loss.item() == pytest.approx((softplus(-0.4) + softplus(-0.8)) / 2, abs=1e-12)
    assert loss.item() == pytest.approx(0.442058, abs=1e-6)
    per_row = in_batch_softmax_loss(Q, ITEMS, IDS, temperature=1.0, reduction="none")
    assert per_row.tolist() == pytest.approx([0.513015, 0.371101], abs=1e-6)
    total = in_batch_softmax_loss(Q, ITEMS, IDS, temperature=1.0, reduction="sum")
    assert total.item() == pytest.approx(0.884116, abs=1e-6)


def test_temperature_scales_the_scores():
    # temperature 0.5 doubles the scores: [[2.0, 1.2], [0.0, 1.6]]
    # row 0: softplus(-0.8) = 0.371101, row 1: softplus(-1.6) = 0.183901, mean = 0.277501
    loss = in_batch_softmax_loss(Q, ITEMS, IDS, temperature=0.5)
    assert loss.item() == pytest.approx((softplus(-0.8) + softplus(-1.6)) / 2, abs=1e-12)
    assert loss.item() == pytest.approx(0.277501, abs=1e-6)
    as_tensor = in_batch_softmax_loss(Q, ITEMS, IDS, temperature=torch.tensor(0.5, dtype=torch.float64))
    assert as_tensor.item() == pytest.approx(loss.item(), abs=1e-12)


def test_log_q_correction():
    # q = (0.5, 0.25): logits - log q = [[1 + ln 2, 0.6 + 2 ln 2], [ln 2, 0.8 + 2 ln 2]]
    # row 0: -log(2e^1 / (2e^1 + 4e^0.6)) = log(1 + 2 e^-0.4)   = 0.850424 (popular i0 is penalised less
    #        than the rare i1 is boosted: the rare negative now weighs twice as much)
    # row 1: -log(4e^0.8 / (2 + 4e^0.8))  = log(1 + 0.5 e^-0.8) = 0.202667
    # mean = 0.526546
    log_q = torch.tensor([math.log(0.5), math.log(0.25)], dtype=torch.float64)
    loss = in_batch_softmax_loss(Q, ITEMS, IDS, temperature=1.0, log_q=log_q)
    expected = (math.log(1 + 2 * math.exp(-0.4)) + math.log(1 + 0.5 * math.exp(-0.8))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert loss.item() == pytest.approx(0.526546, abs=1e-6)
    # A constant shift of log q changes nothing.
    shifted = in_batch_softmax_loss(Q, ITEMS, IDS, temperature=1.0, log_q=log_q + 3.0)
    assert shifted.item() == pytest.approx(expected, abs=1e-12)


def test_extra_negatives_are_appended_columns():
    # items = [i0, i1, e] with e = (0, 0, 1): scores [[1.0, 0.6, 0.0], [0.0, 0.8, 0.0]]
    # row 0: log(1 + e^-0.4 + e^-1.0) = 0.712067
    # row 1: log(1 + e^-0.8 + e^-0.8) = 0.641147
    # mean = 0.676607
    items = torch.cat([ITEMS, EXTRA])
    loss = in_batch_softmax_loss(Q, items, torch.tensor([10, 11, 12]), temperature=1.0)
    expected = (math.log(1 + math.exp(-0.4) + math.exp(-1.0)) + math.log(1 + 2 * math.exp(-0.8))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert loss.item() == pytest.approx(0.676607, abs=1e-6)


def test_accidental_hit_is_masked():
    # Both rows' positives are the same product (id 7): for row 0, column 1 is that product again, so
    # it must not count as a negative (and likewise column 0 for row 1). Each row keeps only its
    # positive: loss = -log(1) = 0.
    same = torch.tensor([7, 7])
    assert in_batch_softmax_loss(Q, ITEMS, same, temperature=1.0).item() == pytest.approx(0.0, abs=1e-12)
    unmasked = in_batch_softmax_loss(Q, ITEMS, same, temperature=1.0, mask_accidental_hits=False)
    assert unmasked.item() == pytest.approx(0.442058, abs=1e-6)  # the plain value above

    # With an extra negative e (id 9), each row keeps its positive and e:
    # row 0: scores [1.0, masked, 0.0] -> softplus(-1.0) = 0.313262
    # row 1: scores [masked, 0.8, 0.0] -> softplus(-0.8) = 0.371101
    # mean = 0.342181
    items = torch.cat([ITEMS, EXTRA])
    loss = in_batch_softmax_loss(Q, items, torch.tensor([7, 7, 9]), temperature=1.0)
    assert loss.item() == pytest.approx((softplus(-1.0) + softplus(-0.8)) / 2, abs=1e-12)
    assert loss.item() == pytest.approx(0.342181, abs=1e-6)


def test_extra_negative_with_the_positive_id_is_masked():
    # A uniform negative that happens to be row 0's positive (id 10) is masked for row 0 only:
    # row 0: scores [1.0, 0.6, masked] -> softplus(-0.4) = 0.513015
    # row 1: scores [0.0, 0.8, 0.0]    -> log(1 + 2 e^-0.8) = 0.641147 (the copy is a real negative for row 1)
    items = torch.cat([ITEMS, ITEMS[:1]])
    per_row = in_batch_softmax_loss(Q, items, torch.tensor([10, 11, 10]), temperature=1.0, reduction="none")
    assert per_row.tolist() == pytest.approx([softplus(-0.4), math.log(1 + 2 * math.exp(-0.8))], abs=1e-12)
    assert per_row.tolist() == pytest.approx([0.513015, 0.641147], abs=1e-6)


def test_custom_labels():
    # labels (1, 0): row 0's positive is i1, row 1's is i0.
    # row 0: softplus(1.0 - 0.6) = 0.913015, row 1: softplus(0.8 - 0.0) = 1.171101, mean = 1.042058
    loss = in_batch_softmax_loss(Q, ITEMS, IDS, temperature=1.0, labels=torch.tensor([1, 0]))
    assert loss.item() == pytest.approx((softplus(0.4) + softplus(0.8)) / 2, abs=1e-12)
    assert loss.item() == pytest.approx(1.042058, abs=1e-6)


def test_rank_offset_labels_point_at_this_ranks_positives():
    assert rank_offset_labels(3, rank=2).tolist() == [6, 7, 8]
    assert rank_offset_labels(2).tolist() == [0, 1]  # no process group: rank 0
    # Rank 1 of 2: gathered items are [rank 0's two items, our two items], our positives in columns
    # 2 and 3. Rank 0 sent e twice (ids 20, 21), scoring 0 with both queries:
    # row 0: scores [0, 0, 1.0 (positive), 0.6] -> log(1 + 2 e^-1.0 + e^-0.4) = 0.877998
    # row 1: scores [0, 0, 0.0, 0.8 (positive)] -> log(1 + 3 e^-0.8)         = 0.853558
    items = torch.cat([EXTRA, EXTRA, ITEMS])
    ids = torch.tensor([20, 21, 10, 11])
    loss = in_batch_softmax_loss(Q, items, ids, temperature=1.0, labels=rank_offset_labels(2, rank=1))
    expected = (math.log(1 + math.exp(-0.4) + 2 * math.exp(-1.0)) + math.log(1 + 3 * math.exp(-0.8))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx((0.877998 + 0.853558) / 2, abs=1e-6)


def test_rank_offset_labels_skip_every_ranks_uniform_negatives():
    # 2 ranks x (B = 2 positives + U = 1 uniform negative): each rank sends 3 rows, gathered in rank order
    #   columns: 0 pos_0a, 1 pos_0b, 2 neg_0 | 3 pos_1a, 4 pos_1b, 5 neg_1
    # rank 0's queries point at columns 0, 1; rank 1's at 3, 4 (not 2, 3: column 2 is rank 0's negative).
    assert rank_offset_labels(2, rank=0, columns_per_rank=3).tolist() == [0, 1]
    assert rank_offset_labels(2, rank=1, columns_per_rank=3).tolist() == [3, 4]
    # 3 ranks x (B = 2 + U = 2): rank r's positives start at column 4 r
    assert [rank_offset_labels(2, rank=r, columns_per_rank=4).tolist() for r in range(3)] == [[0, 1], [4, 5], [8, 9]]
    assert rank_offset_labels(2, columns_per_rank=3).tolist() == [0, 1]  # no process group: rank 0
    with pytest.raises(ValueError, match="columns_per_rank"):
        rank_offset_labels(3, rank=1, columns_per_rank=2)  # fewer rows per rank than positives

    # The loss of rank 1 (queries q0, q1) with those labels. Rank 0 sent three rows e (scores 0 with both
    # queries, ids 20, 21, 22); rank 1 sent its positives i0, i1 and its negative e (id 23):
    # row 0: scores [0, 0, 0, 1.0 (positive), 0.6, 0] -> log(1 + e^-0.4 + 4 e^-1.0) = 1.144808
    # row 1: scores [0, 0, 0, 0.0, 0.8 (positive), 0] -> log(1 + 5 e^-0.8)          = 1.177622
    items = torch.cat([EXTRA, EXTRA, EXTRA, ITEMS, EXTRA])
    ids = torch.tensor([20, 21, 22, 10, 11, 23])
    labels = rank_offset_labels(2, rank=1, columns_per_rank=3)
    per_row = in_batch_softmax_loss(Q, items, ids, temperature=1.0, labels=labels, reduction="none")
    expected = [math.log(1 + math.exp(-0.4) + 4 * math.exp(-1.0)), math.log(1 + 5 * math.exp(-0.8))]
    assert per_row.tolist() == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx([1.144808, 1.177622], abs=1e-6)


def test_gradient_reaches_a_learned_temperature():
    # L(t) = mean_r softplus(-d_r / t) with margins d = (0.4, 0.8), so
    # dL/dt = mean_r sigmoid(-d_r / t) * d_r / t^2; at t = 1: (0.401312 * 0.4 + 0.310026 * 0.8) / 2 = 0.204273
    temperature = nn.Parameter(torch.tensor(1.0, dtype=torch.float64))
    in_batch_softmax_loss(Q, ITEMS, IDS, temperature=temperature).backward()
    assert temperature.grad.item() == pytest.approx(0.204273, abs=1e-6)

    # The usual parametrisation: t = exp(log_t).clamp(min); dL/dlog_t = t * dL/dt.
    log_t = nn.Parameter(torch.tensor(math.log(0.5), dtype=torch.float64))
    in_batch_softmax_loss(Q, ITEMS, IDS, temperature=log_t.exp().clamp(min=0.01)).backward()
    s = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    dl_dt = (s(-0.8) * 0.4 / 0.25 + s(-1.6) * 0.8 / 0.25) / 2
    assert log_t.grad.item() == pytest.approx(0.5 * dl_dt, abs=1e-12)


def test_masking_never_masks_the_positive():
    # Every column is the same product: each row keeps exactly its own positive column.
    q = F.normalize(torch.randn(4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64), dim=1)
    items = F.normalize(torch.randn(6, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64), dim=1)
    q.requires_grad_(True)
    per_row = in_batch_softmax_loss(q, items, torch.full((6,), 3), temperature=0.05, reduction="none")
    assert torch.equal(per_row, torch.zeros(4, dtype=torch.float64))
    per_row.sum().backward()
    assert torch.isfinite(q.grad).all()

    # Ids repeat across the columns and the labels are not the diagonal: rows 0 and 1 both point at
    # id 10 (columns 2 and 0); row 0 keeps column 2 and loses column 0, row 1 the other way round.
    ids = torch.tensor([10, 11, 10, 12])
    items4 = torch.cat([ITEMS, ITEMS])  # columns 2, 3 repeat columns 0, 1
    per_row = in_batch_softmax_loss(Q, items4, ids, 1.0, labels=torch.tensor([2, 0]), reduction="none")
    # row 0 (q0), columns [masked, 0.6, 1.0 (positive), 0.6]: log(1 + 2 e^-0.4)
    # row 1 (q1), columns [0.0 (positive), 0.8, masked, 0.8]: log(1 + 2 e^0.8)
    assert per_row.tolist() == pytest.approx([math.log(1 + 2 * math.exp(-0.4)), math.log(1 + 2 * math.exp(0.8))])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_is_finite(dtype):
    gen = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(8, 16, generator=gen), dim=1)
    items = F.normalize(torch.randn(12, 16, generator=gen), dim=1)
    ids = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 1, 1, 3, 9])  # columns 8, 9 and 10 are accidental hits
    reference = in_batch_softmax_loss(q, items, ids, temperature=0.02)
    q_low = q.to(dtype).requires_grad_(True)
    try:
        loss = in_batch_softmax_loss(q_low, items.to(dtype), ids, temperature=0.02)
    except RuntimeError as err:  # an op without a CPU kernel for this dtype
        pytest.skip(f"{dtype} not supported on this CPU build: {err}")
    loss.backward()
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss) and torch.isfinite(q_low.grad).all()
    # Scores of unit vectors are rounded at ~1e-2 in bfloat16, times 1/t = 50.
    assert loss.item() == pytest.approx(reference.item(), rel=0.05, abs=0.3)


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="item_ids"):
        in_batch_softmax_loss(Q, ITEMS, torch.tensor([1, 2, 3]), 1.0)
    with pytest.raises(ValueError, match="dim"):
        in_batch_softmax_loss(Q, ITEMS[:, :2], IDS, 1.0)
    with pytest.raises(ValueError, match="positives"):
        in_batch_softmax_loss(Q, ITEMS[:1], IDS[:1], 1.0)
    with pytest.raises(ValueError, match="temperature"):
        in_batch_softmax_loss(Q, ITEMS, IDS, 0.0)
    with pytest.raises(ValueError, match="log_q"):
        in_batch_softmax_loss(Q, ITEMS, IDS, 1.0, log_q=torch.zeros(3))
    with pytest.raises(ValueError, match="labels"):
        in_batch_softmax_loss(Q, ITEMS, IDS, 1.0, labels=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="reduction"):
        in_batch_softmax_loss(Q, ITEMS, IDS, 1.0, reduction="avg")


def test_log_q_from_counts():
    # counts (3, 1, 0): the zero is raised to 1 -> (3, 1, 1) / 5 = (0.6, 0.2, 0.2)
    log_q = log_q_from_counts(np.array([3, 1, 0]))
    assert log_q.dtype == torch.float32
    assert log_q.tolist() == pytest.approx([math.log(0.6), math.log(0.2), math.log(0.2)], abs=1e-6)
    # min_count 0.5 -> (3, 1, 0.5) / 4.5
    assert log_q_from_counts(torch.tensor([3, 1, 0]), min_count=0.5)[2].item() == pytest.approx(
        math.log(0.5 / 4.5), abs=1e-6
    )
    with pytest.raises(ValueError, match="non-negative"):
        log_q_from_counts(torch.tensor([1, -1]))
    with pytest.raises(ValueError, match="1-D"):
        log_q_from_counts(torch.zeros(2, 2))


def test_cross_batch_memory_is_a_fifo_of_fixed_capacity():
    memory = CrossBatchMemory(capacity=3, dim=2)
    emb, ids = memory.get()
    assert emb.shape == (0, 2) and ids.shape == (0,) and len(memory) == 0

    rows = lambda *ks: torch.tensor([[float(k), -float(k)] for k in ks])  # noqa: E731
    source = rows(1, 2).requires_grad_(True)
    memory.enqueue(source, torch.tensor([1, 2]))
    emb, ids = memory.get()
    assert ids.tolist() == [1, 2] and torch.equal(emb, rows(1, 2)) and not emb.requires_grad
    with torch.no_grad():
        source.zero_()  # the memory holds a copy
    assert torch.equal(memory.get()[0], rows(1, 2))

    memory.enqueue(rows(3, 4), torch.tensor([3, 4]))  # 1 drops out
    emb, ids = memory.get()
    assert ids.tolist() == [2, 3, 4] and torch.equal(emb, rows(2, 3, 4)) and len(memory) == 3

    memory.enqueue(rows(5, 6, 7, 8, 9), torch.arange(5, 10))  # more than capacity: the newest 3 stay
    emb, ids = memory.get()
    assert ids.tolist() == [7, 8, 9] and torch.equal(emb, rows(7, 8, 9))

    memory.enqueue(rows(10), torch.tensor([10]))
    assert memory.get()[1].tolist() == [8, 9, 10]

    memory.clear()
    assert len(memory) == 0 and memory.get()[0].shape == (0, 2)
    memory.enqueue(rows(11), torch.tensor([11]))
    assert memory.get()[1].tolist() == [11]

    with pytest.raises(ValueError, match="2-dim"):
        memory.enqueue(torch.zeros(1, 3), torch.tensor([0]))
    with pytest.raises(ValueError, match="ids"):
        memory.enqueue(torch.zeros(2, 2), torch.tensor([0]))


def test_gather_with_grad_is_the_identity_without_a_process_group():
    x = torch.randn(3, 4, requires_grad=True)
    gathered = gather_with_grad(x)
    assert gathered is x
    gathered.sum().backward()
    assert torch.equal(x.grad, torch.ones(3, 4))


def test_split_into_chunks():
    batch = {"input_ids": torch.arange(10).reshape(5, 2), "attention_mask": torch.ones(5, 2)}
    chunks = split_into_chunks(batch, 2)
    assert [c["input_ids"].shape[0] for c in chunks] == [2, 2, 1]
    assert torch.equal(torch.cat([c["input_ids"] for c in chunks]), batch["input_ids"])
    assert [c.shape[0] for c in split_into_chunks(torch.zeros(5, 3), 4)] == [4, 1]
    with pytest.raises(ValueError, match="same number of rows"):
        split_into_chunks({"a": torch.zeros(2), "b": torch.zeros(3)}, 1)


# --------------------------------------------------------------------------------------------------
# GradCache
# --------------------------------------------------------------------------------------------------


def _tower(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.Dropout(0.5), nn.Tanh(), nn.Linear(8, 4)).double().train()


def _setup():
    """Two dropout towers, a learned temperature and a loss with extra negatives, an accidental hit
    (extra column 6 is row 1's product) and logQ."""
    query_tower, item_tower = _tower(0), _tower(1)
    log_t = nn.Parameter(torch.tensor(math.log(0.1), dtype=torch.float64))
    gen = torch.Generator().manual_seed(2)
    query_inputs = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    item_inputs = torch.randn(9, 5, generator=gen, dtype=torch.float64)  # 6 positives + 3 negatives
    ids = torch.tensor([0, 1, 2, 3, 4, 5, 1, 7, 8])
    log_q = torch.linspace(-3.0, -1.0, 9, dtype=torch.float64)

    def loss_fn(q, i):
        return in_batch_softmax_loss(q, i, ids, temperature=log_t.exp().clamp(min=0.01), log_q=log_q)

    def embed_queries(x):
        return F.normalize(query_tower(x), dim=-1)

    def embed_items(x):
        return F.normalize(item_tower(x), dim=-1)

    params = [*query_tower.parameters(), *item_tower.parameters(), log_t]
    return embed_queries, embed_items, query_inputs, item_inputs, loss_fn, params


def _plain_loss(embed_queries, embed_items, query_chunks, item_chunks, loss_fn):
    """The reference: embed the same chunks with grad, in the same order, in one graph."""
    q = torch.cat([embed_queries(c) for c in query_chunks])
    i = torch.cat([embed_items(c) for c in item_chunks])
    return loss_fn(q, i)


def test_cached_loss_matches_the_plain_loss_and_its_gradients():
    embed_queries, embed_items, query_inputs, item_inputs, loss_fn, params = _setup()
    query_chunks = split_into_chunks(query_inputs, 4)  # 4 + 2 rows, smaller than the batch of 6
    item_chunks = split_into_chunks(item_inputs, 4)  # 4 + 4 + 1 rows

    torch.manual_seed(123)
    plain = _plain_loss(embed_queries, embed_items, query_chunks, item_chunks, loss_fn)
    plain.backward()
    plain_grads = [p.grad.clone() for p in params]
    rng_after_plain = torch.get_rng_state()

    for p in params:
        p.grad = None
    torch.manual_seed(123)
    cached = cached_loss_backward(embed_queries, embed_items, query_chunks, item_chunks, loss_fn)

    assert not cached.requires_grad
    assert cached.item() == pytest.approx(plain.item(), abs=1e-12)
    for p, expected in zip(params, plain_grads):
        torch.testing.assert_close(p.grad, expected, rtol=1e-9, atol=1e-12)
    assert params[-1].grad.abs().item() > 0  # the temperature learns too
    # The caller's random stream moves on as if each chunk had been embedded once.
    assert torch.equal(torch.get_rng_state(), rng_after_plain)

    # Dropout is really active: another seed gives another loss, so replaying the masks mattered.
    torch.manual_seed(124)
    with torch.no_grad():
        other = _plain_loss(embed_queries, embed_items, query_chunks, item_chunks, loss_fn)
    assert abs(other.item() - plain.item()) > 1e-3


def test_cached_loss_accumulates_into_existing_gradients():
    embed_queries, embed_items, query_inputs, item_inputs, loss_fn, params = _setup()
    query_chunks, item_chunks = split_into_chunks(query_inputs, 3), split_into_chunks(item_inputs, 5)
    torch.manual_seed(0)
    cached_loss_backward(embed_queries, embed_items, query_chunks, item_chunks, loss_fn)
    once = [p.grad.clone() for p in params]
    torch.manual_seed(0)
    cached_loss_backward(embed_queries, embed_items, query_chunks, item_chunks, loss_fn)
    for p, g in zip(params, once):
        torch.testing.assert_close(p.grad, 2 * g)


def test_cached_loss_needs_grad_enabled():
    embed_queries, embed_items, query_inputs, item_inputs, loss_fn, _ = _setup()
    with torch.no_grad(), pytest.raises(RuntimeError, match="no_grad"):
        cached_loss_backward(embed_queries, embed_items, [query_inputs], [item_inputs], loss_fn)
