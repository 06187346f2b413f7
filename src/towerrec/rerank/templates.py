"""The sentences of template mode (`towerrec.rerank.faithful`): one dict entry per language.

Each entry holds the explanation and product-copy sentences with their slots ({history}: the history item
chosen, {title}: the product's shown title, {fact} / {facts}: fact clauses) and one clause per kind of fact
(same_brand, same_category, brand, category, attribute, price). Every slot is filled from the data only, so
what a template says is grounded by construction; the fixed words are plain prose, left out of the
catalog's attribute words (`template_words`). Adding a language is adding an entry with the same keys
(`rerank.explain.template_language` names it). The grounding check reads Latin letters and digits only, so
for a language such as Chinese it checks the names and numbers, not the ownership clauses.
"""

from __future__ import annotations

import re

FACT_KINDS = ("same_brand", "same_category", "brand", "category", "attribute", "price")

TEMPLATES: dict[str, dict] = {
    "en": {
        "explain": "You bought {history}. Suggested next: {title}, {fact}.",
        "explain_no_history": "Suggested for you: {title}, {fact}.",
        "describe": "{title}: {facts}. Picked because you bought {history}.",
        "describe_no_history": "{title}: {facts}.",
        "facts": {"same_brand": "also from {brand}", "same_category": "also in {category}", "brand": "from {brand}",
                  "category": "in {category}", "attribute": "{attribute}", "price": "at ${price}"},
        "join": ", ",
        "fallback": "Suggested for you from the products you bought.",
    },
    "zh": {
        "explain": "您买过{history}。推荐：{title}，{fact}。",
        "explain_no_history": "为您推荐：{title}，{fact}。",
        "describe": "{title}：{facts}。推荐理由：您买过{history}。",
        "describe_no_history": "{title}：{facts}。",
        "facts": {"same_brand": "同样来自{brand}", "same_category": "同属{category}", "brand": "来自{brand}",
                  "category": "属于{category}", "attribute": "{attribute}", "price": "售价${price}"},
        "join": "，",
        "fallback": "根据您买过的商品为您推荐。",
    },
}


def _strings(entry: dict) -> list[str]:
    out = []
    for value in entry.values():
        out.extend(_strings(value) if isinstance(value, dict) else [value])
    return out


def template_words() -> list[str]:
    """The fixed text of every template, slots removed."""
    return [re.sub(r"\{\w+\}", " ", s) for entry in TEMPLATES.values() for s in _strings(entry)]


def check_templates() -> None:
    """Every language has every key of English (raises ValueError naming what is missing)."""
    keys, facts = set(TEMPLATES["en"]), set(TEMPLATES["en"]["facts"])
    for language, entry in TEMPLATES.items():
        missing = (keys - set(entry)) | {f"facts.{k}" for k in facts - set(entry.get("facts", {}))}
        if missing:
            raise ValueError(f"template language {language!r} lacks {sorted(missing)}")
