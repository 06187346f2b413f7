"""Product text: one renderer of titles and descriptions, driven by a per-language `Language` spec.

Every choice (synonym, template, attribute order) comes from the world's language-independent draws, so
the English and Chinese catalogs of one seed describe the same items.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import numpy as np
import pandas as pd

from towerrec.data.synthetic.tables import (
    ADJS,
    ADJS_ZH,
    BRAND_HEADS,
    BRAND_HEADS_ZH,
    BRAND_TAILS,
    BRAND_TAILS_ZH,
    COLORS_ZH,
    LEAF_INDEX,
    LEAF_TEXT,
    LEAVES,
    LINES,
    LINES_ZH,
    MATERIALS_ZH,
    MODEL_LETTERS,
    PALETTES,
    TIER_SENTENCES,
    TIER_SENTENCES_ZH,
    LeafText,
)
from towerrec.data.synthetic.world import World

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Title:
    """A title template: `{attrs}` becomes open + sep.join(attributes) + close, or nothing without any."""

    text: str  # fields: brand, line, noun, adj, model, attrs
    open: str = " "
    sep: str = " "
    close: str = ""


@dataclasses.dataclass(frozen=True)
class Language:
    """What one language changes: vocabulary, templates, separators, capitalisation, articles, plurals."""

    dataset_name: str
    brand_heads: Sequence[str]
    brand_tails: Sequence[str]
    colors: Mapping[str, str] | None  # English name -> this language's; None: as is
    materials: Mapping[str, str] | None
    lines: Sequence[Sequence[str]]  # per price tier
    adjs: Sequence[Sequence[str]]
    tier_sentences: Sequence[Sequence[str]]
    titles: Sequence[Title]
    intros: Sequence[str]  # fields: brand, line, noun, other (a same-number synonym), adj, a (article), be, use, model
    features: tuple[str, str, str]  # clauses for colour, material, size
    features_sentence: str  # {} is the joined clauses
    specs_sentence: str  # {} is the joined attribute values
    partner_sentences: tuple[str, str]  # fields: a (article), partner
    sep: str  # between list items
    last_sep: str  # before the last of several clauses
    sentence_sep: str
    title_case: bool  # capitalise words of nouns, adjectives, colours and materials in titles
    specs_in_title_order: bool  # the specs sentence lists attributes as the title does, else size, colour, material
    plural: Callable[[str], bool] = lambda noun: False
    article: Callable[[str, str], str] = lambda phrase, noun: ""  # before `phrase`, whose head noun is `noun`
    be: tuple[str, str] = ("", "")  # singular, plural


def _title_case(s: str) -> str:
    return " ".join(word[:1].upper() + word[1:] for word in s.split(" "))


def _is_plural_en(noun: str) -> bool:
    return noun.endswith("s")  # true of every plural product noun in the tables, and of none of the singular ones


def _article_en(phrase: str, noun: str) -> str:
    """'a ' / 'an ' before `phrase` (whose head noun is `noun`), '' for plurals."""
    if _is_plural_en(noun):
        return ""
    first = phrase.split(" ", 1)[0]
    if len(first) > 1 and first.isupper():  # an acronym is spelled out: "an SD card", "a USB charger"
        return "an " if first[0] in "AEFHILMNORSX" else "a "
    return "an " if first[:1].lower() in "aeiou" else "a "



# fmt: off
EN = Language(
    dataset_name="synthetic",
    brand_heads=BRAND_HEADS, brand_tails=BRAND_TAILS, colors=None, materials=None,
    lines=LINES, adjs=ADJS, tier_sentences=TIER_SENTENCES,
    titles=(
        Title("{brand} {line} {noun} {model}{attrs}", ", ", ", "),
        Title("{brand} {model} {noun}{attrs}", " (", ", ", ")"),
        Title("{brand} {noun} {line}{attrs}", " - ", " / "),
        Title("{adj} {noun} by {brand}, {line} {model}{attrs}", ", ", ", "),
        Title("{brand} {line}{attrs} {noun}"),
    ),
    intros=(
        "The {brand} {noun} {model} {be} {a}{adj} {other} {use}.",
        "Meet the {brand} {line} {model}: {a}{adj} {noun} {use}.",
        "{brand} presents the {line} {model}, {a}{adj} {noun} {use}.",
    ),
    features=("comes in {}", "is made of {}", "is sized {}"),
    features_sentence="This model {}.", specs_sentence="Specifications: {}.",
    partner_sentences=("Pairs well with {a}{partner}.", "Customers often add {a}{partner}."),
    sep=", ", last_sep=" and ", sentence_sep=" ", title_case=True, specs_in_title_order=False,
    plural=_is_plural_en, article=_article_en, be=("is", "are"),
)
ZH = Language(
    dataset_name="synthetic-zh",
    brand_heads=BRAND_HEADS_ZH, brand_tails=BRAND_TAILS_ZH, colors=COLORS_ZH, materials=MATERIALS_ZH,
    lines=LINES_ZH, adjs=ADJS_ZH, tier_sentences=TIER_SENTENCES_ZH,
    titles=(
        Title("{brand}{noun}{line} {model}{attrs}"),
        Title("{brand} {model} {adj}{noun}{attrs}", "（", "，", "）"),
        Title("【{brand}】{noun} {line}{attrs}"),
        Title("{brand}{line}{noun} {model}{attrs}"),
        Title("{adj}{noun} {brand} {model}{attrs}"),
    ),
    intros=(
        "{brand}{line}{noun}{model}，{adj}之选，{use}。",
        "这款{brand}{noun}（{model}）{use}，是{adj}{noun}。",
        "{brand}推出{line}{model}，{adj}{noun}，{use}。",
    ),
    features=("颜色为{}", "采用{}材质", "规格{}"),
    features_sentence="本款{}。", specs_sentence="规格参数：{}。",
    partner_sentences=("搭配{partner}使用效果更佳。", "很多顾客会同时选购{partner}。"),
    sep="，", last_sep="，", sentence_sep="", title_case=False, specs_in_title_order=True,
)
# fmt: on
SPECS: dict[str, Language] = {"en": EN, "zh": ZH}


def _pick(options: Sequence[T], draw: int) -> T:
    return options[int(draw) % len(options)]


def _join(parts: Sequence[str], sep: str, last_sep: str) -> str:
    return parts[0] if len(parts) == 1 else sep.join(parts[:-1]) + last_sep + parts[-1]


def render_catalog(w: World, language: str) -> pd.DataFrame:
    """The catalog table of the world's items, text in `language`."""
    lang = SPECS[language]
    texts = LEAF_TEXT[language]
    brand_names = [lang.brand_heads[h] + lang.brand_tails[t] for h, t in zip(w.brand_heads, w.brand_tails)]
    partners_of = [[texts[LEAF_INDEX[k]] for k in leaf.next] for leaf in LEAVES]  # complements, strongest first
    rows = []
    for i in range(len(w.item_leaf)):
        j = w.item_leaf[i]
        leaf, text = LEAVES[j], texts[j]
        size = color = material = ""
        if w.item_size[i] >= 0:
            size = text.sizes[w.item_size[i]]
        if w.item_color[i] >= 0:
            color = PALETTES[leaf.colors][w.item_color[i]]
            color = lang.colors[color] if lang.colors else color
        if w.item_material[i] >= 0:
            material = leaf.materials[w.item_material[i]]
            material = lang.materials[material] if lang.materials else material
        model = f"{MODEL_LETTERS[w.item_model[i, 0]]}{w.item_model[i, 1]}"
        brand, tier, draws = brand_names[w.item_brand[i]], int(w.item_tier[i]), w.item_text_draws[i]
        title, description = _render(lang, text, partners_of[j], brand, tier, model, size, color, material, draws)
        rows.append((title, brand, text.path, description, color, size, material))
    df = pd.DataFrame(rows, columns=["title", "brand", "category", "description", "color", "size", "material"])
    df.insert(0, "item_id", [f"P{i:06d}" for i in range(len(df))])
    df.insert(5, "price", w.item_price)
    return df


def _render(
    lang: Language,
    leaf: LeafText,
    partners: Sequence[LeafText],
    brand: str,
    tier: int,
    model: str,
    size: str,
    color: str,
    material: str,
    d: np.ndarray,
) -> tuple[str, str]:
    """(title, description) of one item; `d` are its 8 text draws, `partners` its leaf's complements."""
    cap = _title_case if lang.title_case else str
    noun = _pick(leaf.nouns, d[0])
    line = _pick(lang.lines[tier], d[1])
    adj = _pick(lang.adjs[tier], d[2])
    attrs = [a for a in (size, cap(color), cap(material)) if a]
    if attrs and d[3] % 2:
        attrs = attrs[1:] + attrs[:1]
    words = dict(brand=brand, line=line, model=model)
    template = _pick(lang.titles, d[4])
    tail = f"{template.open}{template.sep.join(attrs)}{template.close}" if attrs else ""
    title = template.text.format(**words, noun=cap(noun), adj=cap(adj), attrs=tail)

    plural = lang.plural(noun)
    other = _pick(leaf.nouns, d[0] + 1)  # a synonym, for variety
    other = other if lang.plural(other) == plural else noun
    a, be = lang.article(adj, noun), lang.be[plural]
    sentences = [_pick(lang.intros, d[5]).format(**words, noun=noun, other=other, adj=adj, a=a, be=be, use=leaf.use)]
    clauses = [f.format(v) for f, v in zip(lang.features, (color, material, size)) if v]
    if clauses:
        if d[5] % 2:
            specs = attrs if lang.specs_in_title_order else [a for a in (size, color, material) if a]
            sentences.append(lang.specs_sentence.format(lang.sep.join(specs)))
        else:
            sentences.append(lang.features_sentence.format(_join(clauses, lang.sep, lang.last_sep)))
    sentences.append(_pick(lang.tier_sentences[tier], d[6]))
    if d[7] % 3:  # two thirds mention a complement
        partner = _pick(_pick(partners, d[7] >> 2).nouns, d[7] >> 4)
        sentences.append(lang.partner_sentences[d[7] % 3 - 1].format(a=lang.article(partner, partner), partner=partner))
    return title, lang.sentence_sep.join(sentences)
