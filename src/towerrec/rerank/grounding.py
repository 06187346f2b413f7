"""The lexical grounding check of explanations: the catalog's known names, and whether a text names only
what the shopper's history or the product's own fields hold.

`check_grounded(text, history, item, vocabulary)` is a pure function. The vocabulary (`Vocabulary.from_items`,
built from the artifact's items table) holds the catalog's brands, category names (path segments; for flat
category strings like Amazon's, a category's name is what it adds to its longest parent category in the
catalog) and product names (title leads such as "Anycubic Kobra" and model codes such as "MK10"); an
Explainer (`towerrec.rerank.explain`) adds the worked example's names and subject words. An explanation that
names a vocabulary term found in neither the shopper's history nor the candidate's own fields is ungrounded,
and so is a number absent from the candidate's fields (a price must be the candidate's; a number inside a
word such as "3D" may also come from the history). Matching is on lowercased word sequences with a light
plural fold ("printers" = "printer"); brands made of common words ("Small Parts") count only when written
with the brand's own capitalisation. Names too generic to check are left out of the vocabulary: the
`ignore_terms` given, and, with `ignore_category_share`, every name found in the category of more than that
share of the catalog's items (a top-level category most items share, such as Amazon's "Industrial &
Scientific", names nothing in particular).

Public API:
    Vocabulary.from_items(items, ignore_terms=(), ignore_category_share=None, ...) -> Vocabulary
    shared_category_terms(categories, share, max_words=5) -> set of term keys
    check_grounded(text, history, item, vocabulary, numbers_from_history=False) -> GroundingReport
    postprocess(text, max_sentences=2, max_chars=280) -> str | None
    term_key, fold, numbers_in, canonical_number, item_fields, field_text, price_text, category_names,
    title_lead, model_codes, find_mentions
History and item dicts are `Retriever.recommend`'s (item_id, title, brand, category, price, ...; extra keys
ignored, a `description` is used when present), history oldest first.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence

import pandas as pd

from towerrec.data.schema import CATEGORY_SEP

# ------------------------------------------------------------------------------------------ normalisation

_WORD = re.compile(r"[a-z0-9]+")
# a number with an optional currency sign before it: "$12.99", "1,200", "0.4" (from "0.4mm"), "10" (from "MK10")
_NUMBER = re.compile(r"([$€£]\s?)?(\d+(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)")
_CURRENCY_AFTER = re.compile(r"\s*(?:dollars?|usd|eur|euros?|gbp|pounds?|bucks)\b", re.IGNORECASE)
# tokens that carry a number but name a size or count, not a product: 1.75mm, 12v, 10pcs, 3d, 2x
_UNIT_TOKEN = re.compile(r"^\d+(?:\.\d+)?[a-z]{0,4}$|^[a-z]\d{1,2}$|^[a-z]?\d+(?:\.\d+)?x\d")
STOPWORDS = frozenset(
    "a an and are as at be by for from in into is it its of on or our the this that to with your you all new "
    "pack set kit piece pcs size one two three use used using high quality".split()
)


def fold(word: str) -> str:
    """A light plural fold: 'printers' -> 'printer', 'glass' stays."""
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def term_key(text: str) -> tuple[str, ...]:
    """Lowercased, plural-folded word sequence of `text` (punctuation dropped): the unit of matching."""
    return tuple(fold(w) for w in _WORD.findall(str(text).lower()))


def canonical_number(text: str) -> str:
    """'1,200.50' -> '1200.5', '007' -> '7', '12.0' -> '12'."""
    s = text.replace(",", "")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s.lstrip("0") or "0"


def numbers_in(text: str) -> list[tuple[str, bool]]:
    """(canonical number, is a currency amount) for every number written in `text`."""
    out = []
    for m in _NUMBER.finditer(text):
        currency = bool(m.group(1)) or bool(_CURRENCY_AFTER.match(text, m.end()))
        out.append((canonical_number(m.group(2)), currency))
    return out


def field_text(value) -> str:
    """A dict/table field as text; None, NaN and empty values become ''."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def price_text(price) -> str:
    p = field_text(price)
    if not p:
        return ""
    try:
        return f"{float(p):.2f}"
    except ValueError:
        return p


def item_fields(item: Mapping, with_price: bool = True) -> list[str]:
    """The fields of a product dict the prompt shows and the check accepts as its data."""
    fields = [field_text(item.get(k)) for k in ("title", "brand", "category", "description")]
    if with_price:
        fields.append(price_text(item.get("price")))
    return [f for f in fields if f]


# --------------------------------------------------------------------------------------------- vocabulary


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """Known names of the catalog: term key -> (kind, display name); kind is brand | category | product."""

    terms: Mapping[tuple[str, ...], tuple[str, str]]
    exact_case: frozenset[tuple[str, ...]] = frozenset()  # terms counted only when written as `display`
    max_words: int = 1

    def __len__(self) -> int:
        return len(self.terms)

    def with_terms(self, kind: str, names: Iterable[str]) -> Vocabulary:
        """A copy that also knows `names` (as `kind`); existing terms keep their kind."""
        terms = dict(self.terms)
        for name in names:
            key = term_key(name)
            if key:
                terms.setdefault(key, (kind, name))
        return dataclasses.replace(self, terms=terms, max_words=max((len(k) for k in terms), default=1))

    def kinds(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for kind, _ in self.terms.values():
            counts[kind] = counts.get(kind, 0) + 1
        return counts

    @classmethod
    def from_items(cls, items: pd.DataFrame | Sequence[Mapping], *, ignore_terms: Iterable[str] = (),
                   ignore_category_share: float | None = None, max_term_words: int = 5,
                   title_lead_words: tuple[int, int] = (2, 6), common_word_share: float = 0.005) -> Vocabulary:
        """Brands, category names and product names of a catalog table (title, brand, category columns).

        `ignore_terms`: generic names never checked ("tools", "supplies"); `ignore_category_share`: names
        found in the category of more than this share of the items are not checked either (see
        `shared_category_terms`; None: no such rule); `max_term_words`: longer category names are left out
        (they are never written verbatim); `title_lead_words`: a title's lead (the text before its first
        comma, bracket or dash) is a product name when it has this many words;
        `common_word_share`: a brand whose every word occurs in at least this share of other brands' titles
        (or is a stopword) must match case-sensitively.
        """
        table = items if isinstance(items, pd.DataFrame) else pd.DataFrame(list(items))
        for col in ("title", "brand", "category"):
            if col not in table.columns:
                raise ValueError(f"the items table has no {col!r} column (columns: {list(table.columns)})")
        categories = table["category"].map(field_text).tolist()
        ignored = {term_key(t) for t in ignore_terms}
        if ignore_category_share is not None:
            ignored |= shared_category_terms(categories, ignore_category_share, max_term_words)
        titles = table["title"].map(field_text).tolist()
        brands = table["brand"].map(field_text).tolist()
        terms: dict[tuple[str, ...], tuple[str, str]] = {}

        def add(kind: str, name: str) -> tuple[str, ...] | None:
            key = term_key(name)
            if not key or key in ignored or len(key) > max_term_words or all(w in STOPWORDS for w in key):
                return None
            if len(key) == 1 and len(key[0]) < 2:
                return None
            terms.setdefault(key, (kind, name))
            return key

        for name in sorted(category_names(categories)):
            add("category", name)
        lo, hi = title_lead_words
        for title in titles:
            lead = title_lead(title)
            lead_words = [w for w in term_key(lead) if w.isalpha() and len(w) > 2 and w not in STOPWORDS]
            if lo <= len(term_key(lead)) <= hi and len(lead_words) >= 2:
                add("product", lead)
            for code in model_codes(title):
                add("product", code)
        # brands last so that they win only where no category/product has the same key; then brand kind wins
        word_titles: dict[str, set[int]] = {}
        for i, title in enumerate(titles):
            for w in set(term_key(title)):
                word_titles.setdefault(w, set()).add(i)
        exact: set[tuple[str, ...]] = set()
        threshold = max(2, common_word_share * len(titles))
        for name in sorted(set(b for b in brands if b)):
            key = term_key(name)
            if not key or key in ignored or len(key) > max_term_words:
                continue
            own = {i for i, b in enumerate(brands) if b == name}
            common = all(w in STOPWORDS or len(word_titles.get(w, set()) - own) >= threshold for w in key)
            if common or len("".join(key)) <= 2:
                exact.add(key)
            terms[key] = ("brand", name)
        return cls(terms=terms, exact_case=frozenset(exact),
                   max_words=max((len(k) for k in terms), default=1))


def shared_category_terms(categories: Sequence[str], share: float, max_words: int = 5) -> set[tuple[str, ...]]:
    """Term keys (word sequences of up to `max_words` words) found in the category of more than `share` of
    the items; `categories` holds one string per item ('' for none). Most of Amazon's Industrial_and_Scientific
    catalog sits under "Industrial & Scientific ...": a name every candidate's category holds tells nothing
    about the candidate, so it is not checked."""
    counts: collections.Counter[tuple[str, ...]] = collections.Counter()
    for category, times in collections.Counter(categories).items():
        key = term_key(category)
        for gram in {key[i : i + n] for n in range(1, max_words + 1) for i in range(len(key) - n + 1)}:
            counts[gram] += times
    limit = share * len(categories)
    return {gram for gram, count in counts.items() if count > limit}


def category_names(categories: Sequence[str]) -> set[str]:
    """Names of categories: path segments ("A > B > C" -> A, B, C); for flat strings (no separator), what a
    category adds to its longest parent category present in the list ("X Y Z" with parent "X Y" -> "Z")."""
    names: set[str] = set()
    flat = [c for c in categories if c and CATEGORY_SEP not in c]
    for c in categories:
        if c and CATEGORY_SEP in c:
            names.update(p.strip() for p in c.split(CATEGORY_SEP.strip()) if p.strip())
    words = {tuple(c.split()) for c in flat}
    for c in sorted(words):
        parent = next((p for p in range(len(c) - 1, 0, -1) if c[:p] in words), 0)
        names.add(" ".join(c[parent:]))
    return names


_LEAD_END = re.compile(r"\s*(?:[,(\[|;:]|\s[-–—]\s|\bfor\b|\bwith\b)")


def title_lead(title: str) -> str:
    """The product name at the head of a title: the text before its first comma, bracket, dash, 'for' or 'with'."""
    m = _LEAD_END.search(title)
    return (title[: m.start()] if m else title).strip()


def model_codes(title: str) -> list[str]:
    """Model-code-like tokens of a title: letters and digits mixed, 3+ characters, not a size ("MK10", "CR-10S")."""
    codes = []
    for raw in re.findall(r"[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*", title):
        parts = raw.lower().split("-")
        mixed = [p for p in parts if re.search(r"[a-z]", p) and re.search(r"\d", p) and not _UNIT_TOKEN.match(p)]
        # "CR-10S", "ITC-100VH": letters, then a part with digits
        lettered = len(parts) > 1 and parts[0].isalpha() and any(re.search(r"\d", p) for p in parts[1:])
        if (mixed or lettered) and len("".join(parts)) >= 3:
            codes.append(raw)
    return codes


# ----------------------------------------------------------------------------------------------- the check


@dataclasses.dataclass(frozen=True)
class GroundingReport:
    grounded: bool
    flagged: list[str]  # "brand: X", "category: Y", "product: Z", "number: 12.99" ("example: ..." for the
    # worked example's names, which an Explainer adds to its vocabulary)
    mentions: list[str]  # every vocabulary term the text names (grounded or not)


def _ngrams(texts: Iterable[str], max_n: int) -> set[tuple[str, ...]]:
    grams: set[tuple[str, ...]] = set()
    for text in texts:
        key = term_key(text)
        for n in range(1, max_n + 1):
            grams.update(key[i : i + n] for i in range(len(key) - n + 1))
    return grams


_TOKEN_SPAN = re.compile(r"[A-Za-z0-9]+")


def find_mentions(text: str, vocabulary: Vocabulary) -> list[tuple[tuple[str, ...], str, str, tuple[int, int]]]:
    """Vocabulary terms named in `text`, longest match first, left to right: (key, kind, display, char span)."""
    spans = [(m.start(), m.end()) for m in _TOKEN_SPAN.finditer(text)]
    words = tuple(fold(text[a:b].lower()) for a, b in spans)  # == term_key(text)
    found, i = [], 0
    while i < len(words):
        for n in range(min(vocabulary.max_words, len(words) - i), 0, -1):
            key = words[i : i + n]
            hit = vocabulary.terms.get(key)
            if hit is None:
                continue
            kind, display = hit
            if key in vocabulary.exact_case and not re.search(rf"(?<!\w){re.escape(display)}(?!\w)", text):
                continue
            found.append((key, kind, display, (spans[i][0], spans[i + n - 1][1])))
            i += n
            break
        else:
            i += 1
    return found


def _word_at(text: str, start: int, end: int) -> str:
    """The whole word around text[start:end] (letters, digits, dots inside): '3D' around '3', 'MK10' around '10'."""
    while start > 0 and (text[start - 1].isalnum() or (text[start - 1] == "." and start > 1 and text[start - 2].isalnum())):
        start -= 1
    while end < len(text) and (text[end].isalnum() or (text[end] == "." and end + 1 < len(text) and text[end + 1].isalnum())):
        end += 1
    return text[start:end].lower()


def check_grounded(text: str, history: Sequence[Mapping], item: Mapping, vocabulary: Vocabulary, *,
                   numbers_from_history: bool = False) -> GroundingReport:
    """Flag every known brand/category/product named in `text` that is in neither the history nor the item,
    and every number not in the item's fields.

    A number fused into a word ("3D", "MK10", "1.75mm") is grounded when that word is in the item's or the
    history's text, or when it is part of a known name the text mentions; a standalone number must be one
    of the item's (`numbers_from_history`: or, unless it is a price, one of the history's).
    """
    item_texts = item_fields(item)
    history_texts = [t for h in history for t in item_fields(h, with_price=False)]
    known = _ngrams(item_texts + history_texts, vocabulary.max_words)
    flagged, mentions = [], []
    mentioned_spans = []
    for key, kind, display, span in find_mentions(text, vocabulary):
        mentions.append(f"{kind}: {display}")
        mentioned_spans.append(span)
        if key not in known:
            flagged.append(f"{kind}: {display}")
    item_numbers = {n for t in item_texts for n, _ in numbers_in(t)}
    history_numbers = {n for t in history_texts for n, _ in numbers_in(t)} if numbers_from_history else set()
    source_words = {w for t in item_texts + history_texts for w in re.findall(r"[a-z0-9]+(?:\.[a-z0-9]+)*", t.lower())}
    for m in _NUMBER.finditer(text):
        number = canonical_number(m.group(2))
        currency = bool(m.group(1)) or bool(_CURRENCY_AFTER.match(text, m.end()))
        if number in item_numbers or (not currency and number in history_numbers):
            continue
        word = _word_at(text, m.start(2), m.end(2))
        if not currency and re.search(r"[a-z]", word):
            if word in source_words or any(a <= m.start(2) and m.end(2) <= b for a, b in mentioned_spans):
                continue
        flagged.append(f"number: {'$' if currency else ''}{number}")
    flagged = list(dict.fromkeys(flagged))
    return GroundingReport(grounded=not flagged, flagged=flagged, mentions=list(dict.fromkeys(mentions)))


# ----------------------------------------------------------------------------------------- post-processing

_LEADING_LABEL = re.compile(r"^\s*(?:explanation|answer|reason|why|copy|description)\s*:\s*", re.IGNORECASE)
# a sentence ends at . ! ? after a word of 2+ characters or a closing quote/bracket ("D.H.S." does not end one)
SENTENCE_END = re.compile(r"(?:(?<=\w\w[.!?])|(?<=[)\"'][.!?]))[\"')\]]*\s+")


def postprocess(text: str, max_sentences: int = 2, max_chars: int = 280) -> str | None:
    """The model's answer as at most `max_sentences` complete sentences within `max_chars`, or None when it
    has no complete sentence, leaks prompt markup, is mostly one repeated word, or its first sentence is too
    long."""
    text = re.sub(r"\s+", " ", text).strip()
    text = _LEADING_LABEL.sub("", text).strip().strip("*_#>-• ").strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    if not text or "```" in text or "<|" in text:
        return None
    words = [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS and len(w) > 2]
    top = collections.Counter(words).most_common(1)
    if top and top[0][1] >= 3 and top[0][1] >= 0.4 * len(words):
        return None  # degenerate: one word over and over ("this ermine is an ermine, ermine")
    all_words = _WORD.findall(text.lower())
    grams = [tuple(all_words[i : i + 4]) for i in range(len(all_words) - 3)]
    if len(grams) != len(set(grams)):
        return None  # degenerate: a phrase said twice ("a six sided metal rod, a six sided metal rod")
    kept: list[str] = []
    for sentence in SENTENCE_END.split(text):
        sentence = sentence.strip()
        if not sentence or sentence.rstrip("\"')]")[-1:] not in (".", "!", "?"):
            break  # the first incomplete sentence (cut by max_new_tokens) ends the answer
        if len(" ".join(kept + [sentence])) > max_chars or len(kept) == max_sentences:
            break
        kept.append(sentence)
    return " ".join(kept) or None


