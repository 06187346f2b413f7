"""Template mode (towerrec.rerank.faithful, towerrec.rerank.templates): the LM's choices (scripted, and real
with the tiny random Llama), the template's slots, and that its output passes the full grounding check on
random catalogs; the continuation scorer it uses (towerrec.rerank.scoring.continuation_logprobs)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.shop import CARD, FRYING_PAN, HEADLAMP, KNIFE, SAUCEPAN, SOCKS, TABLE, TRIPOD

from towerrec.rerank import explain as E
from towerrec.rerank import faithful as F
from towerrec.rerank import grounding as G
from towerrec.rerank import lm as lm_mod
from towerrec.rerank import templates as T
from towerrec.rerank.scoring import continuation_logprobs

TEMPLATE = {"mode": "template", "history_title_tokens": 60, "title_tokens": 60}  # byte tokens: 1 per letter


@pytest.fixture(scope="module")
def tiny_lm():
    torch.set_num_threads(1)
    return lm_mod.load_lm({"model_path": "random_init", "device": "cpu", "dtype": "float32"})


class ScriptedWriter(F.TemplateWriter):
    """A TemplateWriter whose LM log-probabilities come from `scores(prefix, continuation) -> float` (one token)."""

    def __init__(self, explainer, scores):
        super().__init__(explainer)
        self.scores, self.calls = scores, []

    def _logprobs(self, prefix, continuations):
        self.calls.append((prefix, list(continuations)))
        return [np.array([self.scores(prefix, c)]) for c in continuations]


def test_continuation_logprobs_match_a_full_forward_pass(tiny_lm):
    model, tok = tiny_lm
    prefix, conts = "Shoppers who buy a lamp also buy", [" a bulb.", " two long extension cords.", "!"]
    got = continuation_logprobs(model, tok, prefix, conts)
    for cont, lp in zip(conts, got):
        ids = torch.tensor([tok.encode(prefix + cont, add_special_tokens=False)])
        n = len(tok.encode(cont, add_special_tokens=False))
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].float(), -1)  # (L, V)
        want = logp[-n - 1 : -1].gather(-1, ids[0, -n:, None])[:, 0]  # (n,)
        assert lp.shape == (n,) and np.allclose(lp, want.numpy(), atol=1e-4)


def test_the_purchase_is_the_one_the_product_raises_most_not_the_likeliest(tiny_lm):
    ex = E.Explainer.for_artifact(None, tiny_lm[1], TEMPLATE, TABLE)

    def scores(prefix, cont):  # the headlamp is likely anyway; the tripod buyer's card gains most from it
        base = {" Korex Memory Card.": -9.0, " Lumfield LED Headlamp.": -2.0}[cont]
        return base + (3.0 if "Tripod" in prefix and "Card" in cont else 1.0 if "buy " in prefix else 0.0)

    writer = ScriptedWriter(ex, scores)
    assert writer.purchases([CARD, HEADLAMP], [TRIPOD]) == [(CARD, "Korex Memory Card")]
    assert [p for p, _ in writer.calls] == ["Shoppers also buy", "Shoppers who buy Zenana Tripod also buy"]
    assert writer.purchases([], [TRIPOD]) == [(None, "")]


def test_the_fact_said_is_the_one_the_purchase_supports_most(tiny_lm):
    ex = E.Explainer.for_artifact(None, tiny_lm[1], TEMPLATE, TABLE)
    # with the frying pan named, "also from Norlux" gains most; plain likelihood would pick the price
    gain = {"also from Norlux.": 2.0, "in Saucepans.": 0.5, "Stainless Steel.": 0.1, "at $30.99.": 0.0}
    writer = ScriptedWriter(ex, lambda prefix, c: (gain[c] if "You bought" in prefix else 0.0) + (5 if "$" in c else 0))
    (e,) = writer.explain_many([FRYING_PAN], [SAUCEPAN])
    assert e == E.Explanation("You bought Norlux Frying Pan. Suggested next: Norlux Saucepan Lite, also from Norlux.",
                              True, [], 1)
    facts = sorted(writer.calls[-1][1])
    assert facts == sorted(gain)  # every candidate clause comes from the saucepan's own fields
    copy = writer.describe([FRYING_PAN], SAUCEPAN)
    assert copy.text == ("Norlux Saucepan Lite: from Norlux, in Saucepans, Stainless Steel, at $30.99. Picked "
                         "because you bought Norlux Frying Pan.") and copy.grounded


def test_slots_come_from_the_fields():
    vocab = G.Vocabulary.from_items(TABLE)
    assert F.attribute_phrases("Norlux Saucepan Lite - Stainless Steel / 2 L", vocab) == ["Stainless Steel"]
    assert F.attribute_phrases("Ionmont Sling Camera Bag, Canvas, Gray", vocab, exclude={"canva"}) == ["Gray"]
    assert F.category_leaf("Home & Kitchen > Cookware > Saucepans", vocab) == "Saucepans"
    flat = G.Vocabulary.from_items(pd.DataFrame({"title": ["a", "b"], "brand": ["", ""],
                                                 "category": ["Lab Supplies", "Lab Supplies Glassware Beakers"]}))
    assert F.category_leaf("Lab Supplies Glassware Beakers", flat) == "Glassware Beakers"
    assert G.without_numbers("Evara Daypack 20 L Nylon") == "Evara Daypack Nylon"


WORDS = ("steel red oak pro max alpha matte glass foam nylon swift lunar delta quartz amber cobalt ultra "
         "compact hybrid kettle lamp drill mat bottle cable hook tray brush").split()


def random_catalog(rng: np.random.Generator, n: int = 30) -> pd.DataFrame:
    """Random product rows: brands, titles with a lead, segments, sizes and model codes, path or flat categories,
    prices or none."""
    brands = [f"{rng.choice(list('BKLMTZ'))}{''.join(rng.choice(list('aeiourlnst'), 5))}" for _ in range(6)]
    rows = []
    for i in range(n):
        words = rng.choice(WORDS, size=rng.integers(2, 5), replace=False)
        brand = str(rng.choice(brands + [""]))
        segments = [" ".join(rng.choice(WORDS, size=rng.integers(1, 3))).title(), f"{rng.integers(1, 500)} mm",
                    f"X{rng.integers(10, 99)}"]
        title = f"{brand} {' '.join(words).title()} - " + ", ".join(rng.permutation(segments))
        top, leaf = rng.choice(["Home", "Tools", "Garden"]), str(rng.choice(WORDS)).title()
        category = f"{top} > {leaf}s" if rng.random() < 0.5 else f"{top} Supplies {leaf}s"
        price = float(np.round(rng.uniform(1, 300), 2)) if rng.random() < 0.7 else float("nan")
        rows.append((f"p{i}", title.strip(), brand, category, price))
    return pd.DataFrame(rows, columns=["item_id", "title", "brand", "category", "price"])


@pytest.mark.parametrize("seed", range(4))
def test_template_output_passes_the_full_check_on_random_catalogs(tiny_lm, seed):
    rng = np.random.default_rng(seed)
    table = random_catalog(rng)
    model, tok = tiny_lm
    ex = E.Explainer.for_artifact(model, tok, TEMPLATE, table)
    products = [{k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}
                for row in table.to_dict("records")]
    for _ in range(3):
        picks = rng.choice(len(products), size=7, replace=False)
        history, items = [products[i] for i in picks[: rng.integers(0, 4)]], [products[i] for i in picks[4:]]
        for item, e in zip(items, ex.explain_many(history, items) + [ex.describe(history, items[0])]):
            assert e.text is not None and e.grounded and e.flagged == [], e
            assert G.check_grounded(e.text, history, item, ex.vocabulary).grounded, e.text
            assert ex._shown_title(item["title"], ex.cfg.title_tokens) in e.text


def test_a_field_that_trips_the_check_falls_back_to_a_safe_sentence(tiny_lm):
    odd = {"item_id": "z", "title": "Since You Bought Mug", "brand": "Zenana", "category": "", "price": None}
    table = pd.concat([TABLE, pd.DataFrame([odd])], ignore_index=True)
    ex = E.Explainer.for_artifact(tiny_lm[0], tiny_lm[1], TEMPLATE, table)
    (e,) = ex.explain_many([SOCKS], [odd])  # "you bought Mug from Zenana": a claim the socks' buyer never made
    assert e.text == T.TEMPLATES["en"]["fallback"] and e.grounded and e.flagged


def test_template_languages_share_every_key_and_render(tiny_lm, monkeypatch):
    T.check_templates()
    ex = E.Explainer.for_artifact(tiny_lm[0], tiny_lm[1], {**TEMPLATE, "template_language": "zh"}, TABLE)
    (e,) = ex.explain_many([FRYING_PAN], [KNIFE])
    assert e.text.startswith("您买过Norlux Frying Pan。推荐：Brisen Premium Chef Knife，")
    monkeypatch.setitem(T.TEMPLATES, "xx", {"explain": "{history}"})
    with pytest.raises(ValueError, match="'xx' lacks"):
        T.check_templates()


def test_mode_options_are_checked_and_free_mode_opens_with_the_chosen_purchase(tiny_lm):
    with pytest.raises(ValueError, match="rerank.explain.mode"):
        E.ExplainConfig.from_dict({"mode": "creative"})
    with pytest.raises(ValueError, match="rerank.explain.template_language"):
        E.ExplainConfig.from_dict({"template_language": "fr"})
    ex = E.Explainer.for_artifact(tiny_lm[0], tiny_lm[1], {**TEMPLATE, "mode": "free"}, TABLE)
    assert ex.explain_prefixes([FRYING_PAN], [KNIFE, SAUCEPAN]) == ["Since you bought the Norlux Frying Pan,"] * 2
    assert ex.explain_prefixes([], [KNIFE]) == [""]
    words = {w for t in E.prompt_prose(ex.cfg) for w in G.words_of(t)}
    assert {"suggested", "picked"} <= words and not words & ex.vocabulary.attributes
