"""The grounding check of explanations: does a text name, claim and describe only what the shopper's history
and the product's own fields hold?

`check_grounded(text, history, item, vocabulary)` is a pure function over a catalog `Vocabulary`
(`towerrec.rerank.vocabulary`). It flags:

- names: a brand, category or product of the vocabulary found in neither the history nor the product's fields
  ("brand: X", "category: Y", "product: Z"; "example: W" for the worked example's names an Explainer adds);
- numbers: a number absent from the product's fields (a price must be the product's; a number inside a word
  such as "3D" may also come from the history), "number: 12.99";
- attributes: an attribute word of the catalog ("LED", "waterproof", "premium") that is not in the product's
  fields nor in a history item the text cites, "attribute: LED". A history item is cited when it shares a
  content word with one of the text's ownership clauses ("Since you bought the trail shoes", "your shoes");
- ownership claims (`claim_spans`): what a text says the shopper bought, owns or has must be in the history.
  In a strong clause ("since you bought X", "you own X", "the X you bought") every name and attribute word of
  X must come from the history items' fields, so the recommended product cannot be cited as a purchase; in a
  weak one ("your X") only product names and brands must. "claim: Soltek Pro Trekking Boots".

Matching is on lowercased, plural-folded word sequences (`term_key`). The check is lexical: it cannot tell a
true sentence from a false one made of grounded words ("this hiking boot is red" for a red-soled boot whose
title says red), only that every name, number and attribute word has a source.

Public API:
    check_grounded(text, history, item, vocabulary, numbers_from_history=False) -> GroundingReport
    claim_spans(text) -> list[ClaimSpan]; CLAIM_KINDS (kinds a strong / weak clause checks against the history)
    find_mentions(text, vocabulary), ngrams(texts, max_n), content_words(text), cited_history(...)
    postprocess(text, max_sentences=2, max_chars=280) -> str | None
    (re-exported from towerrec.rerank.vocabulary: Vocabulary and its helpers)
History and item dicts are `Retriever.recommend`'s (item_id, title, brand, category, price, ...; extra keys
ignored, a `description` is used when present), history oldest first.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence

from towerrec.rerank.vocabulary import (
    COMMON_WORDS,
    CURRENCY_AFTER,
    NUMBER,
    STOPWORDS,
    WORD,
    Vocabulary,
    attribute_words,
    canonical_number,
    category_names,
    field_text,
    fold,
    item_fields,
    model_codes,
    numbers_in,
    price_text,
    shared_category_terms,
    term_key,
    title_lead,
    without_numbers,
    words_of,
)

__all__ = ["COMMON_WORDS", "STOPWORDS", "Vocabulary", "attribute_words", "canonical_number", "category_names",
           "field_text", "fold", "item_fields", "model_codes", "numbers_in", "price_text", "shared_category_terms",
           "term_key", "title_lead", "without_numbers", "words_of", "Explanation", "GroundingReport", "ClaimSpan",
           "CLAIM_KINDS", "check_grounded", "claim_spans", "find_mentions", "ngrams", "content_words",
           "cited_history", "postprocess", "SENTENCE_END"]


@dataclasses.dataclass(frozen=True)
class GroundingReport:
    grounded: bool
    flagged: list[str]  # "brand: X", "category: Y", "product: Z", "number: 12.99", "attribute: LED", "claim: X"
    # ("example: ..." for the worked example's names, which an Explainer adds to its vocabulary)
    mentions: list[str]  # every vocabulary term the text names (grounded or not)


@dataclasses.dataclass(frozen=True)
class Explanation:
    """An explainer's answer (`towerrec.rerank.explain`, `towerrec.rerank.faithful`)."""

    text: str | None  # None: refused (every attempt was ungrounded or malformed)
    grounded: bool
    flagged: list[str]  # what the rejected attempts named without grounds ("malformed" for unusable output)
    attempts: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def ngrams(texts: Iterable[str], max_n: int) -> set[tuple[str, ...]]:
    """Every term key of up to `max_n` words found in `texts`, or in them once their numbers are dropped
    ("Gorilla Tape" in "Gorilla 6100101 Tape": the prompt shows titles so): the names these texts ground."""
    grams: set[tuple[str, ...]] = set()
    for text in texts:
        for key in {term_key(text), term_key(without_numbers(text))}:
            for n in range(1, max_n + 1):
                grams.update(key[i : i + n] for i in range(len(key) - n + 1))
    return grams


def content_words(text: str) -> set[str]:
    """Folded words of 3+ letters that are neither stopwords nor common English words."""
    return {w for w in words_of(text) if len(w) >= 3 and w not in STOPWORDS and w not in COMMON_WORDS}


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


# ------------------------------------------------------------------------------------------ ownership claims

# "you bought", "you've purchased", "you already own", "you recently got"
_STRONG = re.compile(r"\byou(?:'ve|\s+have|\s+already|\s+recently|\s+just)*\s+"
                     r"(?:bought|purchased|ordered|owned|own|got)\b", re.IGNORECASE)
_WEAK = re.compile(r"\byour\b", re.IGNORECASE)
_BOUNDARY = re.compile(r"[;:!?()\[\]\"—–]|[.,](?=\s|$)|\s-\s")  # "Dr.Meter", "0.01" and "Bottle,32" do not end one
_SUBORDINATORS = frozenset("since because as if when now once after that which who".split())
_CLAUSE_STOP = frozenset("this these that those it its we so which here there then now you our because since while "
                         "when if is are was were will can".split())
_WEAK_STOP = _CLAUSE_STOP | frozenset("for with to on in at by and or from into of as like".split())
_BACK_STOP = _WEAK_STOP - {"of", "and"}
# the kinds of names an ownership clause must take from the history: strong clauses also check attribute words
CLAIM_KINDS = {True: frozenset({"brand", "category", "product", "example", "attribute"}),
               False: frozenset({"brand", "product"})}


@dataclasses.dataclass(frozen=True)
class ClaimSpan:
    """Characters [start, end) of `text` that a clause says the shopper bought/owns (strong) or has (weak);
    `open`: the clause runs to the end of the text (decoding is inside it)."""

    start: int
    end: int
    strong: bool
    open: bool = False


def _forward(text: str, pos: int, stop: frozenset[str], max_words: int, soft_commas: bool = False
             ) -> tuple[int, int, bool]:
    """The clause after `pos`: up to a boundary, a stop word or `max_words` words; (start, end, runs to the end).
    `soft_commas`: a comma ends it only before a stop word ("a light, waterproof boot, this ...")."""
    start = end = pos
    n, at = 0, pos
    while True:
        limit = _BOUNDARY.search(text, at)
        cut = limit.start() if limit else len(text)
        for m in WORD.finditer(text.lower(), at, cut):
            if m.group() in stop or n >= max_words:
                return start, end, False
            start = m.start() if end == pos else start
            end, n = m.end(), n + 1
        if limit is None:
            return start, end, True
        nxt = WORD.search(text.lower(), limit.end())
        if soft_commas and limit.group() == "," and not text[limit.end() :].strip():
            return start, end, True  # the comma ends the text: the next word decides
        if not (soft_commas and limit.group() == "," and nxt and nxt.group() not in stop):
            return start, end, False
        at = limit.end()


def _backward(text: str, pos: int) -> tuple[int, int]:
    """The noun phrase before `pos` ("the Soltek boots" in "goes with the Soltek boots you bought")."""
    limit = max((m.end() for m in _BOUNDARY.finditer(text, 0, pos)), default=0)
    words = list(WORD.finditer(text.lower(), limit, pos))
    start = pos
    for m in reversed(words[-6:]):
        if m.group() in _BACK_STOP:
            break
        start = m.start()
    return start, (words[-1].end() if words and start < pos else pos)


def claim_spans(text: str) -> list[ClaimSpan]:
    """The ownership clauses of `text` (see the module docstring), in order of their trigger."""
    spans = []
    for m in _STRONG.finditer(text):
        before = re.findall(r"[a-z']+", text[: m.start()].lower().split(".")[-1])
        prev = before[-1] if before else None
        start, end, is_open = _forward(text, m.end(), _CLAUSE_STOP, 10, soft_commas=True)
        if prev is not None and prev not in _SUBORDINATORS and not _BOUNDARY.search(text[m.start() - 2 : m.start()]):
            b_start, b_end = _backward(text, m.start())
            if b_end > b_start:
                spans.append(ClaimSpan(b_start, b_end, True))
        if end > start or is_open:
            spans.append(ClaimSpan(start, end, True, is_open))
    for m in _WEAK.finditer(text):
        start, end, is_open = _forward(text, m.end(), _WEAK_STOP, 5)
        if end > start or is_open:
            spans.append(ClaimSpan(start, end, False, is_open))
    return sorted(spans, key=lambda s: s.start)


def cited_history(text: str, history: Sequence[Mapping], claims: Sequence[ClaimSpan]) -> list[Mapping]:
    """History items sharing a content word with one of the text's ownership clauses."""
    said = set().union(*(content_words(text[c.start : c.end]) for c in claims)) if claims else set()
    return [h for h in history if said & content_words(" ".join(item_fields(h, with_price=False)))]


# ----------------------------------------------------------------------------------------------- the check


def _word_at(text: str, start: int, end: int) -> str:
    """The whole word around text[start:end] (letters, digits, dots inside): '3D' around '3', 'MK10' around '10'."""
    while start > 0 and (text[start - 1].isalnum() or (text[start - 1] == "." and start > 1 and text[start - 2].isalnum())):
        start -= 1
    while end < len(text) and (text[end].isalnum() or (text[end] == "." and end + 1 < len(text) and text[end + 1].isalnum())):
        end += 1
    return text[start:end].lower()


def _inside(span: tuple[int, int], spans: Iterable[tuple[int, int]]) -> bool:
    return any(a <= span[0] and span[1] <= b for a, b in spans)


def check_grounded(text: str, history: Sequence[Mapping], item: Mapping, vocabulary: Vocabulary, *,
                   numbers_from_history: bool = False) -> GroundingReport:
    """Flag the names, numbers, attribute words and ownership claims of `text` that neither the history nor
    the item grounds (see the module docstring).

    A number fused into a word ("3D", "MK10", "1.75mm") is grounded when that word is in the item's or the
    history's text, or when it is part of a known name the text mentions; a standalone number must be one
    of the item's (`numbers_from_history`: or, unless it is a price, one of the history's).
    """
    item_texts = item_fields(item)
    history_texts = [t for h in history for t in item_fields(h, with_price=False)]
    known = ngrams(item_texts + history_texts, vocabulary.max_words)
    bought = ngrams(history_texts, vocabulary.max_words)
    claims = claim_spans(text)
    flagged, mentions, mentioned_spans = [], [], []
    for key, kind, display, span in find_mentions(text, vocabulary):
        mentions.append(f"{kind}: {display}")
        mentioned_spans.append(span)
        if key not in known:
            flagged.append(f"{kind}: {display}")
        elif key not in bought and any(kind in CLAIM_KINDS[c.strong] and _inside(span, [(c.start, c.end)])
                                       for c in claims):
            flagged.append(f"claim: {display}")
    # attribute words: the item's own, or (outside ownership clauses) a cited history item's
    facts = words_of(" ".join(item_texts))
    bought_words = words_of(" ".join(history_texts))
    cited = words_of(" ".join(t for h in cited_history(text, history, claims) for t in item_fields(h, False)))
    strong = [(c.start, c.end) for c in claims if c.strong]
    for m in _TOKEN_SPAN.finditer(text):
        word = fold(m.group().lower())
        if word not in vocabulary.attributes or _inside(m.span(), mentioned_spans):
            continue
        if _inside(m.span(), strong):
            if word not in bought_words:
                flagged.append(f"claim: {m.group()}")
        elif word not in facts and word not in cited:
            flagged.append(f"attribute: {m.group()}")
    item_numbers = {n for t in item_texts for n, _ in numbers_in(t)}
    history_numbers = {n for t in history_texts for n, _ in numbers_in(t)} if numbers_from_history else set()
    source_words = {w for t in item_texts + history_texts for w in re.findall(r"[a-z0-9]+(?:\.[a-z0-9]+)*", t.lower())}
    for m in NUMBER.finditer(text):
        number = canonical_number(m.group(2))
        currency = bool(m.group(1)) or bool(CURRENCY_AFTER.match(text, m.end()))
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


def postprocess(text: str, max_sentences: int = 2, max_chars: int = 280, prefix: str = "") -> str | None:
    """The model's answer as at most `max_sentences` complete sentences within `max_chars`, or None when it
    has no complete sentence, leaks prompt markup, is mostly one repeated word or says a phrase twice (in what
    follows `prefix`, the fixed opening `text` starts with: naming the purchase again is fine), or its first
    sentence is too long."""
    text = re.sub(r"\s+", " ", text).strip()
    text = _LEADING_LABEL.sub("", text).strip().strip("*_#>-• ").strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    if not text or "```" in text or "<|" in text:
        return None
    opening = len(WORD.findall(prefix.lower()))
    all_words = WORD.findall(text.lower())[opening:]
    words = [w for w in all_words if w not in STOPWORDS and len(w) > 2]
    top = collections.Counter(words).most_common(1)
    if top and top[0][1] >= 3 and top[0][1] >= 0.4 * len(words):
        return None  # degenerate: one word over and over ("this ermine is an ermine, ermine")
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


