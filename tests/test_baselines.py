"""Baselines: popularity, transition KNN and zero-shot text scores worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from towerrec.baselines import Popularity, TransitionKNN, ZeroShotText, encode_texts
from towerrec.data.splits import leave_last_out


def arrays(*lists):
    return [np.array(x, dtype=np.int64) for x in lists]


USERS = np.array(["u0", "u1"], dtype=object)

# ---------------------------------------------------------------------------------------- popularity


def test_popularity_scores_are_the_counts():
    pop = Popularity(np.array([3, 0, 5, 1]))
    scores = pop(arrays([0], [1, 2]), USERS)
    assert scores.shape == (2, 4)
    assert scores.dtype == torch.float32
    assert scores.tolist() == [[3, 0, 5, 1], [3, 0, 5, 1]]
    scores[0, 0] = 99  # a fresh tensor each call: callers may mask it in place
    assert pop(arrays([0]), USERS[:1]).tolist() == [[3, 0, 5, 1]]


# ----------------------------------------------------------------------------------- transition KNN


def test_transition_knn_hand_computed():
    # One sequence 0 -> 1 -> 2 over 4 items, window 2, forward 1, backward 0.5.
    #   distance 1 (weight 1):   0->1, 1->2      m[0,1] += 1, m[1,2] += 1;  backward m[1,0] += .5, m[2,1] += .5
    #   distance 2 (weight 1/2): 0->2            m[0,2] += .5;              backward m[2,0] += .25
    # Rows normalised to sum 1:
    #   row 0: [0, 1, .5, 0] / 1.5   = [0, 2/3, 1/3, 0]
    #   row 1: [.5, 0, 1, 0] / 1.5   = [1/3, 0, 2/3, 0]
    #   row 2: [.25, .5, 0, 0] / .75 = [1/3, 2/3, 0, 0]
    #   row 3: never seen            = 0
    knn = TransitionKNN(arrays([0, 1, 2]), num_items=4, window=2, forward=1.0, backward=0.5, decay=0.7, history=5)
    expected_sim = np.array([[0, 2 / 3, 1 / 3, 0], [1 / 3, 0, 2 / 3, 0], [1 / 3, 2 / 3, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_allclose(knn.sim.toarray(), expected_sim, atol=1e-12)

    # History [0, 1]: newest (1) weight 1, then 0 weight 0.7 -> row1 + 0.7 row0
    #   = [1/3, 0.7 * 2/3, 2/3 + 0.7/3, 0]. History [2]: row 2. History [3]: nothing reached.
    scores = knn(arrays([0, 1], [2], [3]), np.array(["a", "b", "c"], dtype=object))
    assert scores.shape == (3, 4)
    expected = [[1 / 3, 0.7 * 2 / 3, 2 / 3 + 0.7 / 3, 0], [1 / 3, 2 / 3, 0, 0], [0, 0, 0, 0]]
    np.testing.assert_allclose(scores.numpy(), expected, atol=1e-6)


def test_transition_knn_window_history_and_self_transitions():
    # Sequence 3 3 1 with window 1, forward 2, backward 1:
    #   3->3 is a self transition (dropped), 3->1: m[3,1] += 2, m[1,3] += 1. Rows: 3 -> [0,1,0,0], 1 -> [0,0,0,1].
    # Sequence 0 2 adds 0->2: m[0,2] += 2, m[2,0] += 1. Rows: 0 -> [0,0,1,0], 2 -> [1,0,0,0].
    # The distance-2 pair 3 .. 1 is outside window 1 and adds nothing.
    sequences = arrays([3, 3, 1], [0, 2])
    knn = TransitionKNN(sequences, num_items=4, window=1, forward=2.0, backward=1.0, decay=0.5, history=1)
    expected_sim = np.array([[0, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0], [0, 1, 0, 0]])
    np.testing.assert_allclose(knn.sim.toarray(), expected_sim)
    # history=1: only the newest item counts, so [1, 3] scores like [3] alone
    scores = knn(arrays([1, 3], [3, 1]), USERS)
    np.testing.assert_allclose(scores.numpy(), [[0, 1, 0, 0], [0, 0, 0, 1]], atol=1e-6)


def test_transition_knn_popularity_prior_orders_unreached_items():
    # Items 2 and 3 are never reached from item 0; the tiny prior (1e-6 * count / max count) orders them.
    knn = TransitionKNN(arrays([0, 1]), num_items=4, window=1, item_counts=np.array([1, 1, 2, 4]))
    scores = knn(arrays([0]), USERS[:1])[0]
    assert scores[1] == pytest.approx(1.0, abs=1e-5)  # the only neighbour of 0
    assert scores[3] == pytest.approx(1e-6, rel=1e-3)
    assert scores[2] == pytest.approx(0.5e-6, rel=1e-3)
    assert scores[1] > scores[3] > scores[2] > 0


def test_transition_knn_fitted_on_train_never_scores_valid_or_test_items(dataset):
    # The valid/test targets sku-c, sku-d, sku-f, sku-h (2, 3, 5, 7) never occur in a training part, so a
    # model fitted on training sequences has no transition into or out of them.
    split = leave_last_out(dataset)
    knn = TransitionKNN(split.train_sequences(), split.num_items, item_counts=split.item_counts())
    unseen = [2, 3, 5, 7]
    sim = knn.sim.toarray()
    assert (sim[:, unseen] == 0).all() and (sim[unseen, :] == 0).all()
    ex = split.examples("test")
    scores = knn(ex.histories, ex.users)
    assert (scores[:, unseen] == 0).all()
    assert (scores[:, [0, 1, 4, 6]] > 0).all()  # training items get the prior at least


def test_transition_knn_without_sequences_gives_zero_scores():
    knn = TransitionKNN([], num_items=3)
    assert knn(arrays([0, 1]), USERS[:1]).tolist() == [[0, 0, 0]]


# ------------------------------------------------------------------------------------- zero-shot text


def test_zero_shot_text_hand_computed():
    # Item embeddings (normalised inside): 0 = (1, 0) given as (3, 0), 1 = (0, 1), 2 = (1, 1)/sqrt2, 3 = (-1, 0)
    emb = torch.tensor([[3.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-2.0, 0.0]])
    model = ZeroShotText(emb, decay=0.5, history=20)
    # History [0, 1]: newest 1 weight 1, 0 weight 0.5 -> (0.5, 1), normalised (0.5, 1) / sqrt(1.25)
    u = np.array([0.5, 1.0]) / math.sqrt(1.25)
    np.testing.assert_allclose(model.user_embeddings(arrays([0, 1])).numpy(), [u], atol=1e-6)
    scores = model(arrays([0, 1], [3]), USERS)
    expected_u0 = [u[0], u[1], (u[0] + u[1]) / math.sqrt(2), -u[0]]
    expected_u1 = [-1, 0, -1 / math.sqrt(2), 1]  # a single history item: the user is that item
    np.testing.assert_allclose(scores.numpy(), [expected_u0, expected_u1], atol=1e-6)


def test_zero_shot_text_uses_only_recent_history():
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    model = ZeroShotText(emb, decay=0.5, history=1)
    np.testing.assert_allclose(model(arrays([0, 0, 1]), USERS[:1]).numpy(), [[0.0, 1.0]], atol=1e-6)


# ---------------------------------------------------------------------------------------- encode_texts


def test_encode_texts_normalised_and_in_input_order(tiny_encoder):
    encoder, tokenizer = tiny_encoder
    # lengths deliberately not sorted, so the internal length sort reorders them
    texts = [
        "espresso machine brand brewmaster category home kitchen coffee",
        "yoga mat",
        "trail running shoe brand stridex",
        "water bottle",
        "reading lamp brand lumo category home lighting",
    ]
    out = encode_texts(encoder, tokenizer, texts, max_length=32, batch_size=2, progress=False)
    assert out.shape == (len(texts), 16)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(len(texts)))
    one_by_one = torch.cat([encode_texts(encoder, tokenizer, [t], max_length=32, progress=False) for t in texts])
    torch.testing.assert_close(out, one_by_one, atol=1e-5, rtol=1e-5)
    # and the rows are distinct, so the comparison above would notice a permutation
    assert torch.cdist(out, out).add(torch.eye(len(texts))).min() > 1e-3
