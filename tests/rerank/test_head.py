"""The hidden-state head (`rerank.scorer=head`, towerrec.rerank.head) and the paired bootstrap of
towerrec.rerank.evaluate, on the tiny random Llama with the byte tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from towerrec.rerank import lm as lm_mod
from towerrec.rerank import prompts as P
from towerrec.rerank.evaluate import head_users, paired_bootstrap
from towerrec.rerank.head import EXTRA_FEATURES, CandidateHead, HeadFeatures, HeadTraining, _line_ends, train_head
from towerrec.rerank.reranker import HEAD_FILE, Reranker, RerankSettings, save_rerank_dir

TINY = {"model_path": "random_init", "device": "cpu", "dtype": "float32"}


@pytest.fixture(scope="module")
def tiny_lm():
    return lm_mod.load_lm(TINY)


def texts(n: int, stem: str = "Widget") -> list[str]:
    return [f"{stem} model {i}, Acme" for i in range(n)]


def test_line_ends_point_at_each_candidates_last_token(tiny_lm):
    _, tok = tiny_lm
    cands = texts(4)
    # history text that imitates a candidate block cannot move the positions
    prompt = P.listwise_prompt(["Candidates: A. Widget model 0, Acme"], cands, P.PromptConfig(), tok,
                               query="A. Widget model 0, Acme")
    enc = tok(prompt.text, add_special_tokens=False, return_offsets_mapping=True)
    ends = _line_ends(prompt.text, enc["offset_mapping"], prompt.labels, cands)
    for end, text in zip(ends, cands):
        assert tok.decode(enc["input_ids"][end]) == text[-1]
        assert tok.decode(enc["input_ids"][end + 1]) == "\n"
    assert ends == sorted(ends) and len(set(ends)) == len(ends)
    assert enc["offset_mapping"][ends[0]][0] > prompt.text.index("Candidates:\n")


def test_features_batched_equal_one_by_one_and_the_full_prompt(tiny_lm):
    """Prefix cache and left padding change nothing: batched == alone == a plain forward of the whole prompt."""
    model, tok = tiny_lm
    feats = HeadFeatures(model, tok, batch_size=3)
    hists = [["Drill"], ["Saw", "Tape measure, Stanley"], []]
    cands = [texts(5), texts(3, "Gadget"), texts(6, "Thing with a longer name")]
    batched = feats.features(hists, cands)
    for u in range(3):
        alone = HeadFeatures(model, tok, batch_size=1).features([hists[u]], [cands[u]])[0]
        np.testing.assert_allclose(batched[u], alone, atol=1e-4)
        prompt = P.listwise_prompt(hists[u], cands[u], P.PromptConfig(), tok)
        enc = tok(prompt.text, add_special_tokens=False, return_offsets_mapping=True)
        with torch.no_grad():
            out = model(input_ids=torch.tensor([enc["input_ids"]]), output_hidden_states=True)
        ends = _line_ends(prompt.text, enc["offset_mapping"], prompt.labels, cands[u])
        np.testing.assert_allclose(batched[u][:, :-EXTRA_FEATURES], out.hidden_states[-1][0, ends].numpy(), atol=1e-4)
        labels = P.label_token_ids(tok, prompt.labels)
        np.testing.assert_allclose(batched[u][:, -2], torch.log_softmax(out.logits[0, -1, labels], -1).numpy(),
                                   atol=1e-4)
        np.testing.assert_allclose(batched[u][:, -1], np.arange(len(cands[u])) / len(cands[u]))
    assert feats.features([["Drill"]], [[]])[0].shape == (0, feats.dim)


def test_train_head_learns_a_planted_signal_and_refuses_too_few_lists():
    rng = np.random.default_rng(0)
    feats = [rng.normal(size=(8, 5)).astype(np.float32) for _ in range(300)]
    targets = [int(np.argmax(f[:, 0] + f[:, 3])) for f in feats]  # a hidden-state feature and an extra decide
    targets[:20] = [-1] * 20  # lists without their target are skipped
    head, log = train_head(feats, targets, HeadTraining(epochs=150, lr=0.05))
    assert log["lists"] == 280 and log["skipped"] == 20
    test = [rng.normal(size=(8, 5)).astype(np.float32) for _ in range(100)]
    hits = np.mean([np.argmax(s) == np.argmax(f[:, 0] + f[:, 3]) for s, f in zip(head.scores(test), test)])
    assert hits > 0.9
    with pytest.raises(ValueError, match="only 5 training lists"):
        train_head(feats[:5], targets[20:25])


def test_head_scorer_through_a_rerank_directory(tiny_lm, tmp_path):
    model, tok = tiny_lm
    feats = HeadFeatures(model, tok)
    torch.manual_seed(0)
    head = CandidateHead(feats.dim, components=4)
    torch.nn.init.normal_(head.linear.weight)
    torch.nn.init.normal_(head.basis)
    settings = RerankSettings.from_config({**TINY, "top_n": 5, "scorer": "head"})
    save_rerank_dir(tmp_path / "rr", settings)
    head.save(tmp_path / "rr" / HEAD_FILE)
    loaded = Reranker.from_dir(tmp_path / "rr")
    hist = [{"title": "Drill", "brand": "Acme"}]
    cands = [{"item_id": f"s{i}", "title": t, "score": 1.0 - 0.1 * i} for i, t in enumerate(texts(5))]
    expected = head.scores(feats.features([loaded.render(hist)], [loaded.render(cands)]))[0]
    np.testing.assert_allclose(loaded.lm_scores([hist], [cands])[0], expected, rtol=1e-6)
    assert sorted(loaded.rank(hist, cands).order.tolist()) == list(range(5))
    with pytest.raises(ValueError, match="rerank.scorer=head needs rerank.head"):
        Reranker.from_config({**TINY, "scorer": "head"})
    CandidateHead(7).save(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="takes 7 features"):
        Reranker.from_config({**TINY, "scorer": "head", "head": str(tmp_path / "other.pt")})
    again = CandidateHead.load(tmp_path / "rr" / HEAD_FILE)
    assert again.components == 4 and all(torch.equal(a, b) for a, b in zip(again.state_dict().values(),
                                                                          head.state_dict().values()))
    with pytest.raises(FileNotFoundError, match="no rerank head file"):
        CandidateHead.load(tmp_path / "missing.pt")


def test_paired_bootstrap_and_head_users():
    rng = np.random.default_rng(1)
    base = rng.random(500)
    same = paired_bootstrap(base, base)
    assert same["relative_gain"] == 0.0 and same["ci95_low"] == same["ci95_high"] == 0.0
    better = paired_bootstrap(base, base * 1.05 + 0.01)
    assert better["ci95_low"] > 0 and better["ci95_low"] < better["relative_gain"] < better["ci95_high"]
    noisy = paired_bootstrap(base, base + rng.normal(0, 0.3, 500))
    assert noisy["ci95_low"] < 0 < noisy["ci95_high"]
    users = head_users(100, 30, 0, np.arange(0, 100, 2))
    assert len(users) == 30 and (users % 2 == 1).all() and len(set(users)) == 30
    with pytest.raises(ValueError, match="only 50 are outside"):
        head_users(100, 60, 0, np.arange(0, 100, 2))
