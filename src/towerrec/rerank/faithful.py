"""Template mode (`rerank.explain.mode=template`): faithful by construction. The LM chooses what to say,
a template (`towerrec.rerank.templates`) says it, and every slot is filled from the data.

For each product:

1. Which purchase supports it. Each of the shopper's newest `history_items` purchases h gets the LM's
   pointwise mutual information with the product, log P(h | "Shoppers who buy {product} also buy") -
   log P(h | "Shoppers also buy") (summed over h's tokens; `scoring.continuation_logprobs`, one batch per
   product over a cached prefix, the baseline once per shopper). The highest wins; ties go to the newest.
2. Which fact to state. The candidate clauses come from the product's fields only: the same brand as h or
   its brand, the same category as h or its category (the category's own name: the last path segment, or for
   flat strings the longest tail that is a catalog category name), an attribute phrase of its title that h's
   title lacks ("Stainless Steel", "Waterproof"), its price. Each is scored by how much the purchase supports
   it: the mean over the clause's tokens of log P(clause | "You bought {h}. Suggested next: {product}, ") -
   log P(clause | "Suggested for you: {product}, "). (Plain likelihood would always pick the price: digits
   copied from a data line are the easiest tokens.) The highest is said; with no history, the first of brand,
   category, attribute, price.
3. The sentence ("You bought {history}. Suggested next: {title}, {fact}.") goes through the grounding check
   like any other text; should a field's own wording trip it (a title that says "your ..."), the next fact,
   then a fixed sentence, is tried, and only if all fail is the explanation refused.

Product copy (`describe`) states every fact (brand, category, the LM's attribute, price) and the purchase
chosen in step 1. Titles are their lead without numbers (`vocabulary.without_numbers`; a history's numbers
are no product's), within the Explainer's token caps; the first variant the check passes on its own is used
(without numbers, cut before the first number, as is), and a purchase with none is left out. Free mode opens
with the purchase of step 1 (`purchases`).

Public API: TemplateWriter(explainer).explain_many(history, items) / .describe(history, item) -> Explanations;
    .purchases(history, items) -> [(history item, shown title)]; category_leaf, attribute_phrases
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from towerrec.data.schema import CATEGORY_SEP
from towerrec.rerank.grounding import Explanation, check_grounded
from towerrec.rerank.scoring import continuation_logprobs
from towerrec.rerank.templates import TEMPLATES, check_templates
from towerrec.rerank.vocabulary import (
    field_text,
    price_text,
    short_title,
    term_key,
    title_lead,
    without_numbers,
    words_of,
)

_SEGMENT = re.compile(r"\s*(?:[,(){}\[\]/|;:]|\s[-–—]\s)\s*")


def category_leaf(category: str, vocabulary) -> str:
    """A category's own name: the last segment of a path, or the longest tail of a flat string that the
    vocabulary knows as a category (else its last three words)."""
    category = " ".join(field_text(category).split())
    if CATEGORY_SEP.strip() in category:
        return category.split(CATEGORY_SEP.strip())[-1].strip()
    words = category.split()
    for n in range(len(words), 0, -1):
        tail = " ".join(words[-n:])
        if vocabulary.terms.get(term_key(tail), ("",))[0] == "category" and n < len(words):
            return tail
    return " ".join(words[-3:])


def attribute_phrases(title: str, vocabulary, exclude: set[str] = frozenset(), limit: int = 3) -> list[str]:
    """Title segments after its lead ("Stainless Steel" in "Saucepan Lite - Stainless Steel / 2 L": the lead is
    shown anyway) of up to 4 letter-only words holding an attribute word not in `exclude`."""
    title = field_text(title)
    lead = title_lead(title)
    found = []
    for segment in _SEGMENT.split(title[len(lead) :]):
        segment = " ".join(segment.split())
        words = segment.split()
        if 1 <= len(words) <= 4 and all(re.fullmatch(r"[A-Za-z][A-Za-z&'-]*", w) for w in words):
            if any(w in vocabulary.attributes and w not in exclude for w in term_key(segment)):
                found.append(segment)
    return list(dict.fromkeys(found))[:limit]


class TemplateWriter:
    """Explanations and product copy in template mode for an `Explainer` (its LM, config and vocabulary)."""

    def __init__(self, explainer):
        check_templates()
        self.ex = explainer
        self.lang = TEMPLATES[explainer.cfg.template_language]

    # ---- the data, as shown -------------------------------------------------------------------------------
    def _pick(self, variants: list[str], sentence: str, history: Sequence[Mapping], item: Mapping) -> str:
        """The first variant of a title that the check passes in `sentence` (its {} the title), else ''."""
        for v in dict.fromkeys(v.strip(" ,;:-(").rstrip(".") for v in variants):  # the template ends sentences
            if term_key(v) and check_grounded(sentence.format(v), history, item, self.ex.vocabulary,
                                              numbers_from_history=self.ex.cfg.numbers_from_history).grounded:
                return v
        return ""

    def _history(self, history: Sequence[Mapping]) -> list[tuple[Mapping, str]]:
        """(item, shown title) of the newest purchases, newest first. A title loses its words holding digits
        (or is cut before the first), its numbers being no product's; one the check would still flag is left
        out."""
        cfg = self.ex.cfg
        out = []
        for h in reversed(list(history)[-max(cfg.history_items, 1) :]):
            title = short_title(self.ex._safe(field_text(h.get("title"))))
            cut = re.split(r"\s\S*\d", " " + title)[0].strip()
            variants = [title] if cfg.numbers_from_history else [without_numbers(title), cut]
            variants = [self.ex._cap_words(v, cfg.history_title_tokens) for v in variants]
            title = self._pick(variants, "You bought {}.", [h], {})
            if title:
                out.append((h, title))
        return out

    def _fields(self, item: Mapping) -> dict[str, str]:
        title = short_title(self.ex._safe(field_text(item.get("title"))))
        variants = [self.ex._cap_words(v, self.ex.cfg.title_tokens) for v in (without_numbers(title), title)]
        return {"title": self._pick(variants, "{}.", [], item) or variants[-1],
                "brand": self.ex._safe(field_text(item.get("brand"))) if field_text(item.get("brand")) else "",
                "category": category_leaf(item.get("category"), self.ex.vocabulary),
                "price": price_text(item.get("price"))}

    def _facts(self, h: Mapping | None, item: Mapping, fields: dict[str, str]) -> list[tuple[str, dict]]:
        """(fact kind, slot values) of the candidate clauses, see the module docstring."""
        facts = []
        if fields["brand"]:
            same = h is not None and field_text(h.get("brand")).lower() == field_text(item.get("brand")).lower()
            facts.append(("same_brand" if same else "brand", {"brand": fields["brand"]}))
        if fields["category"]:
            same = h is not None and field_text(h.get("category")) == field_text(item.get("category"))
            facts.append(("same_category" if same else "category", {"category": fields["category"]}))
        seen = words_of(field_text(h.get("title"))) if h is not None else set()
        for phrase in attribute_phrases(field_text(item.get("title")), self.ex.vocabulary, seen):
            facts.append(("attribute", {"attribute": phrase}))
        if fields["price"]:
            facts.append(("price", {"price": fields["price"]}))
        return facts

    def _clause(self, kind: str, slots: dict) -> str:
        return self.lang["facts"][kind].format(**slots)

    # ---- the LM's choices ---------------------------------------------------------------------------------
    def _logprobs(self, prefix: str, continuations: list[str]):
        return continuation_logprobs(self.ex.model, self.ex.tokenizer, prefix, continuations)

    def _choose_history(self, options: list[tuple[Mapping, str]], title: str, baseline: list[float]) -> int:
        """Index of the purchase with the highest PMI with the product (see the module docstring)."""
        if len(options) < 2:
            return 0
        given = self._logprobs(f"Shoppers who buy {title} also buy", [f" {t}." for _, t in options])
        pmi = [float(g.sum()) - b for g, b in zip(given, baseline)]
        return max(range(len(options)), key=lambda i: (pmi[i], -i))

    def _baseline(self, options: list[tuple[Mapping, str]]) -> list[float]:
        if len(options) < 2:
            return [0.0] * len(options)
        return [float(x.sum()) for x in self._logprobs("Shoppers also buy", [f" {t}." for _, t in options])]

    def _rank_facts(self, lead: str, bare: str, tail: str, clauses: list[str]) -> list[int]:
        """Clause indices, best first: how much the purchase supports each clause, the mean over its tokens of
        log P(clause | `lead`, which names the purchase) - log P(clause | `bare`, the same without it)."""
        if len(clauses) < 2:
            return list(range(len(clauses)))
        with_h = self._logprobs(lead, [c + tail for c in clauses])
        without = self._logprobs(bare, [c + tail for c in clauses]) if bare != lead else [0 * x for x in with_h]
        scores = [float((a - b).mean()) for a, b in zip(with_h, without)]
        return sorted(range(len(clauses)), key=lambda i: (-scores[i], i))

    # ---- explanations and copy ----------------------------------------------------------------------------
    def _first_grounded(self, texts: list[str], history: Sequence[Mapping], item: Mapping) -> Explanation:
        """The first of `texts` that passes the check (flagged: what the ones before it tripped), else refused."""
        flagged: list[str] = []
        for text in texts:
            report = check_grounded(text, history, item, self.ex.vocabulary,
                                    numbers_from_history=self.ex.cfg.numbers_from_history)
            if report.grounded:
                return Explanation(text, True, list(dict.fromkeys(flagged)), 1)
            flagged.extend(report.flagged)
        return Explanation(None, False, list(dict.fromkeys(flagged)), 1)

    def purchases(self, history: Sequence[Mapping], items: Sequence[Mapping]) -> list[tuple[Mapping | None, str]]:
        """Per item, the purchase that best supports it (step 1): (history item, shown title), or (None, "")
        when nothing was bought."""
        options = self._history(history)
        if not options:
            return [(None, "")] * len(items)
        baseline = self._baseline(options)
        return [options[self._choose_history(options, self._fields(item)["title"], baseline)] for item in items]

    def _leads(self, h_title: str, title: str) -> tuple[str, str, str]:
        """The explanation sentence before its fact, with and without the purchase, and after it."""
        key = "explain" if h_title else "explain_no_history"
        lead, _, tail = self.lang[key].format(history=h_title, title=title, fact="\x00").partition("\x00")
        bare = self.lang["explain_no_history"].format(title=title, fact="\x00").partition("\x00")[0]
        return lead, bare, tail

    def explain_many(self, history: Sequence[Mapping], items: Sequence[Mapping]) -> list[Explanation]:
        out = []
        for item, (h, h_title) in zip(items, self.purchases(history, items)):
            fields = self._fields(item)
            lead, bare, tail = self._leads(h_title, fields["title"])
            clauses = [self._clause(kind, slots) for kind, slots in self._facts(h, item, fields)]
            texts = [lead + clauses[i] + tail for i in self._rank_facts(lead, bare, tail, clauses)]
            out.append(self._first_grounded(texts + [self.lang["fallback"]], history, item))
        return out

    def describe(self, history: Sequence[Mapping], item: Mapping) -> Explanation:
        ((h, h_title),) = self.purchases(history, [item])
        fields = self._fields(item)
        facts = self._facts(None, item, fields)
        attributes = [i for i, (kind, _) in enumerate(facts) if kind == "attribute"]
        if len(attributes) > 1:  # the LM picks one attribute phrase, scored as the explanation's fact
            lead, bare, tail = self._leads(h_title, fields["title"])
            clauses = [self._clause(*facts[i]) for i in attributes]
            best = attributes[self._rank_facts(lead, bare, tail, clauses)[0]]
            facts = [f for i, f in enumerate(facts) if i not in attributes or i == best]
        key = "describe" if h is not None else "describe_no_history"
        joined = self.lang["join"].join(self._clause(kind, slots) for kind, slots in facts)
        texts = [self.lang[key].format(history=h_title, title=fields["title"], facts=joined)] if joined else []
        texts.append(self.lang["explain_no_history"].format(title=fields["title"], fact=self._clause(*facts[0]))
                     if facts else self.lang["fallback"])
        return self._first_grounded(texts + [self.lang["fallback"]], history, item)
