"""Constrained decoding (towerrec.rerank.constraints): which tokens a request may not emit, with a word-level
tokenizer double (GPT-2-style tokens, a leading space belongs to the word), and real greedy decoding with the
tiny random Llama and its byte tokenizer, pushed towards a forbidden word."""

from __future__ import annotations

import pytest
import torch
from helpers.shop import CAMERA_BAG, CARD, HEADLAMP, PRO_BOOTS, SOCKS, TABLE

from towerrec.rerank import constraints as C
from towerrec.rerank import grounding as G
from towerrec.rerank import lm as lm_mod

TOKENS = [" Since", " you", " bought", " the", " Soltek", " Sol", "tek", " Pro", " Trekking", " Boots", " Boot", "s",
          ",", " this", " LED", " L", "ED", " camera", " bag", " Evara", " Trail", " Socks", " $", "8", "9", ".", " 9",
          "4", " waterproof", " canvas", " costs"]


class WordTokenizer:
    """A tokenizer double over TOKENS (no special tokens)."""

    all_special_ids: list[int] = []

    def get_vocab(self):
        return {t: i for i, t in enumerate(TOKENS)}

    def convert_tokens_to_string(self, tokens):
        return "".join(tokens)

    def batch_decode(self, rows, skip_special_tokens=True):
        return ["".join(TOKENS[int(i)] for i in row) for row in rows]


@pytest.fixture(scope="module")
def vocab() -> G.Vocabulary:
    return G.Vocabulary.from_items(TABLE)


def ids(*tokens: str) -> set[int]:
    return {TOKENS.index(t) for t in tokens}


def banned(vocab, history, item, text, **allow):
    allowance = C.Allowance.for_request(vocab, history, item, **allow)
    return C.TermConstraint(WordTokenizer(), vocab, [allowance], start=0).banned_ids(0, text)


def test_the_token_index_knows_word_starts_continuations_digits_and_is_cached():
    tok = WordTokenizer()
    index = C.TokenIndex.of(tok)
    assert index is C.TokenIndex.of(tok)
    assert set(index.start["boot"]) == ids(" Boots", " Boot") and index.cont["ed"] == [TOKENS.index("ED")]
    assert set(index.digit_ids) == ids("8", "9", " 9", "4")


def test_an_attribute_the_request_lacks_cannot_be_started_or_finished(vocab):
    first = banned(vocab, [CARD], CAMERA_BAG, "This")
    assert ids(" LED", " waterproof") <= first and not ids(" camera", " bag", " canvas") & first
    assert ids("ED") <= banned(vocab, [CARD], CAMERA_BAG, "This L")  # "L" + "ED" would spell it too
    # decoding lets any purchase's words through (the check then asks that the text cites that purchase)
    assert not ids(" LED") & banned(vocab, [HEADLAMP], CAMERA_BAG, "This")


def test_inside_an_ownership_clause_only_the_history_may_be_named(vocab):
    # the recommended boots' own brand and name cannot be claimed as bought ...
    assert ids(" Soltek") <= banned(vocab, [SOCKS], PRO_BOOTS, "Since you bought the")
    assert ids("tek") <= banned(vocab, [SOCKS], PRO_BOOTS, "Since you bought the Sol")
    assert ids(" Boots", " Boot") <= banned(vocab, [SOCKS], PRO_BOOTS, "Since you bought the Soltek Pro Trekking")
    assert not ids(" Boots") & banned(vocab, [SOCKS], PRO_BOOTS, "Since you bought the Trekking")  # no name
    assert not ids(" Evara", " Trail", " Socks") & banned(vocab, [SOCKS], PRO_BOOTS, "Since you bought the")
    # ... but once the clause is closed the product is named freely
    after = banned(vocab, [SOCKS], PRO_BOOTS, "Since you bought the Evara Trail Socks, this Soltek Pro Trekking")
    assert not ids(" Boots", " Boot", " Soltek") & after
    assert not ids(" Soltek") & banned(vocab, [PRO_BOOTS], PRO_BOOTS, "Since you bought the")


def test_digits_only_spell_the_products_numbers(vocab):
    # the boots cost $89.99 and are EU 42
    start = banned(vocab, [SOCKS], PRO_BOOTS, "It costs $")
    assert ids("8", "4") & start == set() and ids("9", " 9") <= start
    only, keep = banned(vocab, [SOCKS], PRO_BOOTS, "It costs $8")  # half a price: only its continuation
    assert only == "only" and keep == ids("9")
    assert ids("8", "9", " 9", "4") <= banned(vocab, [SOCKS], PRO_BOOTS, "It costs $", no_digits=True)


def test_flagged_words_are_forbidden_even_when_the_data_has_them(vocab):
    assert ids(" canvas") <= banned(vocab, [], CAMERA_BAG, "A", forbid=["canvas"])
    assert not ids(" canvas") & banned(vocab, [], CAMERA_BAG, "A")


class Want:
    """Logits processor that pushes greedy decoding to spell `target` (byte tokens), one byte per step."""

    def __init__(self, tok, target: str, start: int):
        self.ids, self.start = tok.encode(target, add_special_tokens=False), start

    def __call__(self, input_ids, scores):  # input_ids (B, T), scores (B, V)
        step = input_ids.shape[1] - self.start
        if step < len(self.ids):
            scores[:, self.ids[step]] += 1000.0
        return scores


def test_greedy_decoding_pushed_to_a_forbidden_word_cannot_complete_it(vocab):
    from transformers import LogitsProcessorList

    torch.set_num_threads(1)
    model, tok = lm_mod.load_lm({"model_path": "random_init", "device": "cpu", "dtype": "float32"})
    enc = tok(["Why this bag?"], return_tensors="pt", add_special_tokens=False)
    start, target = enc["input_ids"].shape[1], " A LED bag for your Korex card."

    def run(*extra):
        out = model.generate(**enc, max_new_tokens=len(target), do_sample=False, pad_token_id=tok.pad_token_id,
                             logits_processor=LogitsProcessorList([Want(tok, target, start), *extra]))
        return tok.decode(out[0, start:], skip_special_tokens=True)

    assert run() == target  # unconstrained, it writes the sentence
    for history, bad in (([CARD], "attribute: LED"), ([], "brand: Korex")):
        allowance = C.Allowance.for_request(vocab, history, CAMERA_BAG)
        text = run(C.TermConstraint(tok, vocab, [allowance], start))
        assert text != target and bad not in G.check_grounded(text, history, CAMERA_BAG, vocab).flagged
