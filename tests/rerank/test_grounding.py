"""The stricter grounding check (towerrec.rerank.grounding): attribute words of the catalog that the product
lacks, and ownership claims ("Since you bought X") about products not in the history. The texts that must be
flagged are real SmolLM2 outputs that the lexical check passed, rebuilt on a small hiking/kitchen/camera shop."""

from __future__ import annotations

import pandas as pd
import pytest
from helpers.shop import (
    CAMERA_BAG,
    CARD,
    DAYPACK,
    ELITE_BOOTS,
    FRYING_PAN,
    HEADLAMP,
    KNIFE,
    PRO_BOOTS,
    SAUCEPAN,
    SOCKS,
    TABLE,
    TRIPOD,
)

from towerrec.rerank import grounding as G
from towerrec.rerank import vocabulary as V


@pytest.fixture(scope="module")
def vocab() -> V.Vocabulary:
    return V.Vocabulary.from_items(TABLE)


def flags(text, history, item, vocab):
    return G.check_grounded(text, history, item, vocab).flagged


# --------------------------------------------------------------------------------------- attribute vocabulary


def test_attribute_words_are_the_catalogs_distinctive_words(vocab):
    for word in ("led", "waterproof", "suede", "stainless", "premium", "ingredient", "canva", "leather"):
        assert word in vocab.attributes
    # ordinary prose, stopwords, units and digits are never attributes
    for word in ("great", "perfect", "designed", "with", "the", "for", "light", "made", "42", "256"):
        assert V.fold(word) not in vocab.attributes


def test_words_in_more_than_the_share_of_items_are_not_attributes():
    texts = ["steel pan", "steel pot", "steel knife", "cast iron pan"]
    assert V.attribute_words(texts, 0.5) == {"pan", "pot", "knife", "cast", "iron"}  # steel: 3 of 4
    assert "steel" in V.attribute_words(texts, 0.75)
    assert "iron" not in V.attribute_words(texts, 0.5, exclude=["Iron"])
    with pytest.raises(ValueError, match="attribute_max_share"):
        V.attribute_words(texts, 0)
    assert V.Vocabulary.from_items(TABLE, attribute_max_share=None).attributes == frozenset()


# ------------------------------------------------------------------------------------ the real failures


def test_citing_the_recommended_product_as_a_purchase_is_flagged(vocab):
    text = "Since you bought the Soltek Pro Trekking Boots, this hiking shoes carry your hiking gear on long trips."
    assert flags(text, [SOCKS, DAYPACK], PRO_BOOTS, vocab) == ["claim: Soltek Pro Trekking Boots"]
    # the same sentence for a shopper who did buy them passes
    assert flags(text, [PRO_BOOTS, SOCKS], ELITE_BOOTS, vocab) == []


def test_the_products_own_title_claimed_as_bought_is_flagged(vocab):
    text = "Since you bought Soltek Elite EU Black Suede Waterproof Hiking Boots, this is your best hiking boots."
    assert flags(text, [PRO_BOOTS], ELITE_BOOTS, vocab) == ["claim: Elite", "claim: Black", "claim: Suede",
                                                            "claim: Waterproof"]


def test_product_copy_with_invented_attributes_is_flagged(vocab):
    text = ("This Norlux Saucepan is a premium Saucepan that is made with the finest ingredients and is designed to "
            "be a perfect match for your kitchen.")
    assert flags(text, [FRYING_PAN], SAUCEPAN, vocab) == ["attribute: premium", "attribute: finest",
                                                          "attribute: ingredients"]


def test_an_invented_attribute_is_flagged_unless_the_product_or_a_cited_purchase_has_it(vocab):
    assert flags("This LED camera bag keeps your camera safe.", [CARD], CAMERA_BAG, vocab) == ["attribute: LED"]
    # a purchase that has the word does not ground it unless the text cites that purchase
    assert flags("This LED camera bag keeps your camera safe.", [HEADLAMP], CAMERA_BAG, vocab) == ["attribute: LED"]
    cited = "Since you bought the Lumfield LED Headlamp, this canvas camera bag carries your camera."
    assert flags(cited, [HEADLAMP], CAMERA_BAG, vocab) == []
    assert flags("This waterproof canvas bag holds a camera.", [], CAMERA_BAG, vocab) == ["attribute: waterproof"]


def test_claims_after_the_object_and_in_your_phrases_are_checked(vocab):
    assert flags("It goes well with the Soltek Pro Trekking Boots you bought.", [SOCKS], PRO_BOOTS, vocab) == [
        "claim: Soltek Pro Trekking Boots"]
    assert flags("A good match for your Norlux Frying Pan.", [SOCKS], FRYING_PAN, vocab) == [
        "claim: Norlux Frying Pan"]
    # a comma between adjectives does not end the clause; one before "this" does
    assert flags("Since you bought a sturdy, waterproof boot, this tripod fits.", [PRO_BOOTS], TRIPOD, vocab) == [
        "claim: waterproof"]


@pytest.mark.parametrize("text, history, item", [
    ("Since you bought Evara Trail Socks, these Soltek Pro Trekking Boots are sturdy boots for your next trek.",
     [SOCKS], PRO_BOOTS),
    ("Since you bought the Norlux Frying Pan, this Norlux saucepan in stainless steel is for soups and sauces.",
     [FRYING_PAN], SAUCEPAN),
    ("You bought Korex Memory Card. Suggested next: Zenana Tripod, Aluminium.", [CARD], TRIPOD),
    ("This premium chef knife has a Damascus steel blade, a fine partner for your frying pan.", [FRYING_PAN], KNIFE),
    ("A handy addition to what you already own.", [SOCKS], DAYPACK),
])
def test_grounded_texts_pass(vocab, text, history, item):
    assert flags(text, history, item, vocab) == []


def test_claim_spans_mark_strong_weak_and_open_clauses():
    text = "Since you bought the red boots, this fits your daily walks"
    spans = [(text[c.start : c.end], c.strong, c.open) for c in G.claim_spans(text)]
    assert spans == [("the red boots", True, False), ("daily walks", False, True)]
    assert [(c.strong, c.open) for c in G.claim_spans("Since you bought")] == [(True, True)]
    assert G.claim_spans("Since you bought a light,")[0].open  # the next word decides whether the clause goes on
    assert not G.claim_spans("Nothing here is claimed.")


def test_a_title_without_its_part_numbers_names_the_product_and_inner_dots_do_not_end_a_clause():
    rows = [("g1", "Gorilla 6100101 Tape Handy Roll, 1-Pack, Black", "Gorilla", "Tapes"),
            ("g2", "Gorilla Tape, Black Duct Tape, 12 yd", "Gorilla", "Tapes"),
            ("m1", "Dr.Meter 0.01pH High Accuracy Pocket Size pH Meter", "Dr.Meter", "Meters"),
            ("m2", "General Hydroponics Ph 7.0 Calibration Solution", "General Hydroponics", "Lab")]
    table = pd.DataFrame(rows, columns=["item_id", "title", "brand", "category"])
    vocab = V.Vocabulary.from_items(table, attribute_max_share=0.5)
    roll, meter, solution = ({"title": r[1], "brand": r[2], "category": r[3]} for r in (rows[0], rows[2], rows[3]))
    assert ("gorilla", "tape") in vocab.terms  # a product name (g2's lead)
    assert flags("Suggested next: Gorilla Tape Handy Roll.", [], roll, vocab) == []  # as the prompt shows g1
    assert flags("You bought Dr.Meter High Accuracy Pocket Size pH Meter.", [meter], solution, vocab) == []
    assert flags("You bought Dr.Meter High Accuracy Pocket Size pH Meter.", [], solution, vocab)
