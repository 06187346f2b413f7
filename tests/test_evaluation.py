"""Full-ranking evaluation: hand-worked metrics, tie-breaking, history masking, chunking, reporting."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from towerrec import evaluation
from towerrec.data.splits import Examples
from towerrec.evaluation import (
    evaluate,
    format_table,
    prefix,
    rank_targets,
    save_metrics,
    tie_order,
    top_k,
)


def matrix_scorer(matrix: np.ndarray, user_rows: dict[str, int], max_rows: int | None = None):
    """A scorer returning fixed rows of `matrix` for the users it is asked about."""

    def scorer(histories: list[np.ndarray], users: np.ndarray) -> torch.Tensor:
        assert len(histories) == len(users)
        if max_rows is not None:
            assert len(histories) <= max_rows, f"chunk of {len(histories)} users > {max_rows}"
        return torch.tensor(matrix[[user_rows[u] for u in users]], dtype=torch.float32)

    return scorer


def make_examples(histories: list[list[int]], targets: list[int]) -> Examples:
    users = np.array([f"u{i}" for i in range(len(targets))], dtype=object)
    return Examples(users, [np.array(h, dtype=np.int64) for h in histories], np.array(targets, dtype=np.int64))


# ------------------------------------------------------------------------------- hand-worked example

SCORES = np.array(
    [
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],  # u0
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # u1
        [0.5, 0.1, 0.9, 0.3, 0.7, 0.2],  # u2
    ]
)
HISTORIES = [[0], [5], [1]]
TARGETS = [2, 0, 2]
CATEGORIES = np.array(["x", "y", "y", "y", "z", "y"], dtype=object)
COUNTS = np.array([4, 3, 2, 1, 0, 6])


def test_hand_worked_metrics():
    # History items go to -inf, so the full orders (best first) are
    #   u0: 1 2 3 4 5 | 0      target 2 -> rank 1
    #   u1: 4 3 2 1 0 | 5      target 0 -> rank 4
    #   u2: 2 4 0 3 5 | 1      target 2 -> rank 0
    # All scores in a row are distinct, so the tie order plays no part.
    ex = make_examples(HISTORIES, TARGETS)
    scorer = matrix_scorer(SCORES, {"u0": 0, "u1": 1, "u2": 2})
    m = evaluate(scorer, ex, 6, item_counts=COUNTS, item_categories=CATEGORIES, ks=(1, 2, 5), beyond_k=3)

    # K=1: only u2 (rank 0) hits; its ndcg and mrr are 1.
    assert m["recall@1"] == pytest.approx(1 / 3)
    assert m["ndcg@1"] == pytest.approx(1 / 3)
    assert m["mrr@1"] == pytest.approx(1 / 3)
    # K=2: u0 (rank 1) and u2 (rank 0) hit.
    assert m["recall@2"] == pytest.approx(2 / 3)
    assert m["ndcg@2"] == pytest.approx((1 / math.log2(3) + 1) / 3)
    assert m["mrr@2"] == pytest.approx((1 / 2 + 1) / 3)
    # K=5: everyone hits (u1 at rank 4 < 5).
    assert m["recall@5"] == pytest.approx(1.0)
    assert m["ndcg@5"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(6) + 1) / 3)
    assert m["mrr@5"] == pytest.approx((1 / 2 + 1 / 5 + 1) / 3)

    # Top-3 lists: u0 [1 2 3], u1 [4 3 2], u2 [2 4 0].
    # coverage: union {0 1 2 3 4} -> 5 of 6 items.
    assert m["coverage@3"] == pytest.approx(5 / 6)
    # diversity: categories u0 (y y y) -> 0/3 differing pairs; u1 (z y y) -> 2/3; u2 (y z x) -> 3/3.
    assert m["diversity@3"] == pytest.approx((0 + 2 / 3 + 1) / 3)  # = 5/9
    # novelty: p(i) = (count+1)/(16+6) = [5 4 3 2 1 7]/22; the 9 slots show item 0 once, 1 once, 2 three
    # times, 3 twice, 4 twice -> mean of log2(22/(count+1)) over the slots.
    expected_novelty = (
        math.log2(22 / 5) + math.log2(22 / 4) + 3 * math.log2(22 / 3) + 2 * math.log2(22 / 2) + 2 * math.log2(22 / 1)
    ) / 9
    assert m["novelty@3"] == pytest.approx(expected_novelty)  # ~3.2287
    # gini: exposure [1 1 3 2 2 0] sorted [0 1 1 2 2 3], total 9;
    # sum_i (2i - N - 1) x_(i) = -5*0 - 3*1 - 1*1 + 1*2 + 3*2 + 5*3 = 19 -> 19 / (6 * 9)
    # (check: the sum of |x_i - x_j| over unordered pairs is also 19, and G = 2*19 / (2 * 6 * 9)).
    assert m["gini@3"] == pytest.approx(19 / 54)
    assert m["num_users"] == 3


def test_diversity_is_skipped_without_categories():
    ex = make_examples(HISTORIES, TARGETS)
    m = evaluate(matrix_scorer(SCORES, {"u0": 0, "u1": 1, "u2": 2}), ex, 6, item_counts=COUNTS, ks=(1,), beyond_k=3)
    assert "diversity@3" not in m
    assert {"coverage@3", "novelty@3", "gini@3"} <= m.keys()


# ------------------------------------------------------------------------------------- tie breaking


def test_tie_order_is_seeded_permutation_not_id_order():
    a, b = tie_order(50, seed=0), tie_order(50, seed=1)
    assert sorted(a.tolist()) == list(range(50))
    assert torch.equal(a, tie_order(50, seed=0))  # deterministic
    assert not torch.equal(a, b)  # seed matters
    assert not torch.equal(a, torch.arange(50))  # not item-id order


def test_all_equal_scores_rank_by_tie_order():
    n = 20
    ties = tie_order(n, seed=3)
    scores = torch.zeros(n, n)  # (B, N) all tied
    targets = torch.arange(n)
    assert torch.equal(rank_targets(scores, targets, ties), ties)
    assert torch.equal(top_k(scores, 5, ties)[0], torch.argsort(ties)[:5])

    # evaluate with a constant scorer: recall@K = share of targets whose tie rank is < K, and it changes
    # with the seed, so the result is neither id-ordered nor lucky.
    ex = make_examples([[] for _ in range(n)], list(range(n)))

    def constant(histories, users):
        return torch.zeros(len(histories), n)

    for seed in (0, 1):
        m = evaluate(constant, ex, n, item_counts=np.zeros(n), ks=(1, 5), exclude_history=False, tie_seed=seed)
        assert m["recall@5"] == pytest.approx(5 / n)  # each tie rank 0..n-1 is some user's target
        assert m["mrr@5"] == pytest.approx(sum(1 / (r + 1) for r in range(5)) / n)
    # the user who hits @1 differs between seeds
    first = [int(torch.argsort(tie_order(n, s))[0]) for s in (0, 1)]
    assert first[0] != first[1]


def test_partial_ties_use_tie_order():
    scores = torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.0]])
    ties = torch.tensor([4, 2, 0, 1, 3])  # tie ranks of items 0..4
    # tied at 2.0: items 2 (tie 0), 3 (tie 1), 1 (tie 2); then item 0, then item 4
    assert top_k(scores, 4, ties).tolist() == [[2, 3, 1, 0]]
    assert rank_targets(scores, torch.tensor([2]), ties).tolist() == [0]
    assert rank_targets(scores, torch.tensor([1]), ties).tolist() == [2]
    assert rank_targets(scores, torch.tensor([4]), ties).tolist() == [4]
    # with id order as tie order, item 1 would win instead
    assert top_k(scores, 1, torch.arange(5)).tolist() == [[1]]


def test_top_k_and_rank_agree_with_a_reference_sort():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (16, 30), generator=gen).float()  # (B, N) heavy ties
    scores[0, :] = -math.inf  # a row of all -inf still orders by tie rank
    ties = tie_order(30, seed=7)
    for b in range(16):
        reference = sorted(range(30), key=lambda i: (-scores[b, i].item(), ties[i].item()))
        assert top_k(scores[b : b + 1], 30, ties)[0].tolist() == reference
        assert top_k(scores[b : b + 1], 7, ties)[0].tolist() == reference[:7]
        ranks = rank_targets(scores[b : b + 1].expand(30, 30), torch.arange(30), ties)
        assert ranks.tolist() == [reference.index(i) for i in range(30)]


# ---------------------------------------------------------------------------------- history masking


def test_history_items_are_masked_and_a_target_in_history_is_a_miss():
    n = 6
    scores = np.tile(np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4]), (2, 1))  # (2, 6)
    # u0: history {0}, target 1 -> item 0 masked, target ranks first.
    # u1: history {0, 3}, target 0 (a repeat): highest raw score but masked -> a miss even at K=50 > N.
    ex = make_examples([[0], [0, 3]], [1, 0])
    scorer = matrix_scorer(scores, {"u0": 0, "u1": 1})
    m = evaluate(scorer, ex, n, item_counts=np.ones(n), ks=(1, 50), beyond_k=n)
    assert m["recall@1"] == pytest.approx(1 / 2)
    assert m["recall@50"] == pytest.approx(1 / 2)
    assert m["mrr@50"] == pytest.approx(1 / 2)
    # lists leave masked items out: u0 shows 1..5, u1 shows 1 2 4 5 -> item 0 is never exposed
    assert m["coverage@6"] == pytest.approx(5 / 6)

    # without masking, u1's target ranks first and u0's target is second
    m = evaluate(scorer, ex, n, item_counts=np.ones(n), ks=(1, 50), beyond_k=n, exclude_history=False)
    assert m["recall@1"] == pytest.approx(1 / 2)
    assert m["recall@50"] == pytest.approx(1.0)
    assert m["coverage@6"] == pytest.approx(1.0)


def test_masking_does_not_modify_the_scorer_output():
    held = torch.ones(1, 4)

    def scorer(histories, users):
        return held

    evaluate(scorer, make_examples([[0, 1]], [2]), 4, item_counts=np.zeros(4), ks=(1,), beyond_k=2)
    assert torch.equal(held, torch.ones(1, 4))


# ------------------------------------------------------------------------------------------ chunking


def random_case(num_users=37, num_items=40, seed=0):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 5, size=(num_users, num_items)).astype(np.float32)  # many ties
    histories = [rng.choice(num_items, size=rng.integers(0, 6), replace=False).tolist() for _ in range(num_users)]
    targets = rng.integers(0, num_items, size=num_users).tolist()
    ex = make_examples(histories, targets)
    rows = {u: i for i, u in enumerate(ex.users)}
    cats = np.array(list("abcd"))[rng.integers(0, 4, size=num_items)]
    return scores, rows, ex, rng.integers(0, 50, size=num_items), cats


def test_chunking_gives_identical_results():
    scores, rows, ex, counts, cats = random_case()

    def run(batch_size):
        scorer = matrix_scorer(scores, rows, max_rows=batch_size)
        return evaluate(
            scorer, ex, 40, item_counts=counts, item_categories=cats, ks=(1, 5, 10), beyond_k=5, batch_size=batch_size
        )
    one, seven, big = run(1), run(7), run(1000)
    assert one.keys() == big.keys() == seven.keys()
    for key in big:
        assert one[key] == pytest.approx(big[key], abs=1e-12), key
        assert seven[key] == pytest.approx(big[key], abs=1e-12), key
    assert 0 < big["recall@10"] < 1  # the case is not degenerate


def test_never_scores_more_than_batch_size_users():
    scores, rows, ex, counts, _ = random_case()
    sizes = []

    def scorer(histories, users):
        assert len(histories) <= 4
        sizes.append(len(histories))
        return matrix_scorer(scores, rows)(histories, users)

    evaluate(scorer, ex, 40, item_counts=counts, batch_size=4)
    assert sum(sizes) == len(ex) and max(sizes) == 4


def test_chunk_is_lowered_for_large_catalogs(monkeypatch):
    scores, rows, ex, counts, _ = random_case()
    monkeypatch.setattr(evaluation, "CHUNK_BYTES", 4 * 40 * 3)  # room for 3 rows of 40 float32 scores
    assert evaluation.chunk_rows(256, 40) == 3
    evaluate(matrix_scorer(scores, rows, max_rows=3), ex, 40, item_counts=counts, batch_size=256)
    monkeypatch.setattr(evaluation, "CHUNK_BYTES", 1)
    assert evaluation.chunk_rows(256, 40) == 1  # never below one user


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_scores_raise(bad):
    scores = np.zeros((3, 6))
    scores[2, 4] = bad
    ex = make_examples(HISTORIES, TARGETS)
    with pytest.raises(ValueError, match=r"non-finite score .* example 2 \(user 'u2'\), item 4"):
        evaluate(matrix_scorer(scores, {"u0": 0, "u1": 1, "u2": 2}), ex, 6, item_counts=COUNTS)


def test_bad_shapes_and_indices_raise():
    ex = make_examples(HISTORIES, TARGETS)
    with pytest.raises(ValueError, match=r"shape \(3, 5\), expected \(3, 6\)"):
        evaluate(lambda h, u: torch.zeros(len(h), 5), ex, 6, item_counts=COUNTS)
    with pytest.raises(ValueError, match=r"targets\[1\] = 9"):
        evaluate(lambda h, u: torch.zeros(len(h), 6), make_examples(HISTORIES, [2, 9, 2]), 6, item_counts=COUNTS)
    with pytest.raises(ValueError, match="history of example 1 holds item index 7"):
        evaluate(lambda h, u: torch.zeros(len(h), 6), make_examples([[0], [7], [1]], TARGETS), 6, item_counts=COUNTS)
    with pytest.raises(ValueError, match="item_counts has shape"):
        evaluate(lambda h, u: torch.zeros(len(h), 6), ex, 6, item_counts=np.zeros(5))
    with pytest.raises(ValueError, match="no examples"):
        evaluate(lambda h, u: torch.zeros(len(h), 6), make_examples([], []), 6, item_counts=COUNTS)


# ------------------------------------------------------------------------------------------ reporting


def test_prefix_save_metrics_and_format_table(tmp_path):
    ex = make_examples(HISTORIES, TARGETS)
    m = evaluate(matrix_scorer(SCORES, {"u0": 0, "u1": 1, "u2": 2}), ex, 6, item_counts=COUNTS,
                 item_categories=CATEGORIES, ks=(1, 2, 5), beyond_k=3)
    staged = prefix(m, "test")
    assert staged["test/recall@2"] == m["recall@2"] and len(staged) == len(m)

    path = tmp_path / "out" / "metrics.json"
    save_metrics(path, staged)
    text = path.read_text()
    loaded = json.loads(text)
    assert loaded == pytest.approx(staged)
    assert list(loaded) == sorted(staged)  # sorted keys
    assert all(isinstance(v, float) for v in loaded.values())  # flat, floats only
    assert all(k.startswith("test/") for k in loaded)
    assert list(tmp_path.joinpath("out").iterdir()) == [path]  # no temp file left behind

    table = format_table(m)
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "@1", "@2", "@3", "@5"]
    recall = next(line for line in lines if line.startswith("recall"))
    assert recall.split() == ["recall", "0.3333", "0.6667", "-", "1.0000"]
    assert f"{m['novelty@3']:.4f}" in table and f"{m['gini@3']:.4f}" in table
    assert next(line for line in lines if line.startswith("num_users")).split() == ["num_users", "3"]


def test_save_metrics_rejects_non_numbers(tmp_path):
    with pytest.raises(TypeError, match="'test/x' must be a number"):
        save_metrics(tmp_path / "m.json", {"test/x": "high"})
