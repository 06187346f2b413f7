"""The catalog's vocabulary for the grounding check (`towerrec.rerank.grounding`) and constrained decoding
(`towerrec.rerank.constraints`): its names (brands, categories, products) and its attribute words.

Names. `Vocabulary.from_items` (built from the artifact's items table) holds the catalog's brands, category
names (path segments; for flat category strings like Amazon's, a category's name is what it adds to its
longest parent category in the catalog) and product names (title leads such as "Anycubic Kobra" and model
codes such as "MK10"). Matching is on lowercased word sequences with a light plural fold ("printers" =
"printer"); brands made of common words ("Small Parts") count only when written with the brand's own
capitalisation. Names too generic to check are left out: the `ignore_terms` given, and, with
`ignore_category_share`, every name found in the category of more than that share of the catalog's items (a
top-level category most items share, such as Amazon's "Industrial & Scientific", names nothing in particular).

Attribute words (`attribute_words`): the words a product's facts can hold and another product's facts do not
("LED", "waterproof", "stainless", "suede", "premium"): words of the catalog's titles and descriptions (the
fields an explanation may draw on, `item_fields`), lowercased and plural-folded, at least 3 letters, no digits (numbers
have their own check). Left out, so that ordinary prose is never flagged: stopwords; `COMMON_WORDS`, a few
hundred frequent English words and the words shopping prose is made of ("great", "perfect", "designed",
"use", "home", "gift"); the `prose` given (an Explainer passes the words of its own prompt, so that instruction
words are not attributes); the `ignore_terms`; and words in more than `attribute_max_share` of the items (10%
by default: a word most products carry, such as Scientific's "pack", says nothing about one product). Brand
and category words are names, checked as such.

Public API:
    Vocabulary.from_items(items, ignore_terms=(), ignore_category_share=None, attribute_max_share=0.1, prose=(),
                          ...) -> Vocabulary (.terms, .attributes, .exact_case, .with_terms, .kinds)
    attribute_words(texts_per_item, max_share, exclude=()) -> frozenset of folded words
    shared_category_terms(categories, share, max_words=5) -> set of term keys
    term_key, fold, words_of, without_numbers, numbers_in, canonical_number, item_fields, field_text, price_text,
    category_names, title_lead, short_title, model_codes, STOPWORDS, COMMON_WORDS
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

WORD = re.compile(r"[a-z0-9]+")
# a number with an optional currency sign before it: "$12.99", "1,200", "0.4" (from "0.4mm"), "10" (from "MK10")
NUMBER = re.compile(r"([$€£]\s?)?(\d+(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)")
CURRENCY_AFTER = re.compile(r"\s*(?:dollars?|usd|eur|euros?|gbp|pounds?|bucks)\b", re.IGNORECASE)
# tokens that carry a number but name a size or count, not a product: 1.75mm, 12v, 10pcs, 3d, 2x
_UNIT_TOKEN = re.compile(r"^\d+(?:\.\d+)?[a-z]{0,4}$|^[a-z]\d{1,2}$|^[a-z]?\d+(?:\.\d+)?x\d")
STOPWORDS = frozenset(
    "a an and are as at be by for from in into is it its of on or our the this that to with your you all new "
    "pack set kit piece pcs size one two three use used using high quality".split()
)


def fold(word: str) -> str:
    """A light plural fold: 'printers' -> 'printer', 'glass' stays."""
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


# frequent English words and the words of shopping prose: never attribute words (see the module docstring)
COMMON_WORDS = frozenset(fold(w) for w in """
about above across after again against ago ahead allow almost alone along already also although always among
amount another answer anyone anything anywhere appear apply area around away back base basic because become been
before begin behind being below best better between beyond big both bring build built but buy buyer bought call
came can care carry case cause certain chance change check choice choose chosen clear close come comes coming
common complete could customer customers daily day days deal decide deliver design designed designs did
different do does doing done down during each easily easy either else end enjoy enough even ever every everyday
everyone everything exactly example expect experience extra fact far favorite favourite feel few find fine
first fit fits fitting follow following found free friend friends full fully further gear get gets getting gift
gifts give given gives go goes going good got great group had half hand handy happen hard has have having help
helpful helps her here high him his hold home how however idea ideal if important include included includes
including inside instead item items job just keep keeps kind know large last later least less let life like
likely line little live long longer look looking looks lot lots love made main make makes making many match
matches may maybe mean meet might mind more most move much must need needed needs never next nice none nor not
nothing now number off offer offers often old once only open option options order other others otherwise out
over own part people perfect perfectly perhaps pick picked place plan plus point possible pretty probably
product products project provide provides purchase purchased put quality quick quickly quite rather reach ready
real really reason recent recently recommend recommended reliable right room run same save say second see seem
seen sell send several shall she shop shopper should show side simple simply since small solid some someone
something sometimes soon sort start stay still stuff such suit suitable suits sure take takes than thank thanks
their them themselves then there these they thing things think those though through thus time times today
together too top total toward towards try trying turn type under unique until upon useful user users uses
using usual usually value various very want way ways well went were what whatever when where whether which while
who whole why will within without work works world would year years yet
""".split())


def term_key(text: str) -> tuple[str, ...]:
    """Lowercased, plural-folded word sequence of `text` (punctuation dropped): the unit of matching."""
    return tuple(fold(w) for w in WORD.findall(str(text).lower()))


def canonical_number(text: str) -> str:
    """'1,200.50' -> '1200.5', '007' -> '7', '12.0' -> '12'."""
    s = text.replace(",", "")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s.lstrip("0") or "0"


def numbers_in(text: str) -> list[tuple[str, bool]]:
    """(canonical number, is a currency amount) for every number written in `text`."""
    out = []
    for m in NUMBER.finditer(text):
        currency = bool(m.group(1)) or bool(CURRENCY_AFTER.match(text, m.end()))
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
    attributes: frozenset[str] = frozenset()  # folded attribute words (see `attribute_words`)

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
                   title_lead_words: tuple[int, int] = (2, 6), common_word_share: float = 0.005,
                   attribute_max_share: float | None = 0.1, prose: Iterable[str] = ()) -> Vocabulary:
        """Brands, category names, product names and attribute words of a catalog table (title, brand,
        category columns; a description column is read when present).

        `ignore_terms`: generic names never checked ("tools", "supplies"); `ignore_category_share`: names
        found in the category of more than this share of the items are not checked either (see
        `shared_category_terms`; None: no such rule); `max_term_words`: longer category names are left out
        (they are never written verbatim); `title_lead_words`: a title's lead (the text before its first
        comma, bracket or dash) is a product name when it has this many words;
        `common_word_share`: a brand whose every word occurs in at least this share of other brands' titles
        (or is a stopword) must match case-sensitively; `attribute_max_share` and `prose`: see
        `attribute_words` (None: no attribute words).
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
        attributes: frozenset[str] = frozenset()
        if attribute_max_share is not None:
            columns = [c for c in ("title", "description") if c in table.columns]
            texts = [" ".join(field_text(v) for v in row) for row in table[columns].itertuples(index=False)]
            exclude = {w for t in ignore_terms for w in term_key(t)} | {w for p in prose for w in words_of(p)}
            attributes = attribute_words(texts, attribute_max_share, exclude)
        return cls(terms=terms, exact_case=frozenset(exact), max_words=max((len(k) for k in terms), default=1),
                   attributes=attributes)


_UNITS = frozenset("mm cm m kg g mg l ml oz lb lbs in inch ft v w a mah gb tb pcs pc pack x".split())


_LINKS = frozenset("by x of no no. # - / & and to".split())


def without_numbers(title: str) -> str:
    """`title` without its words holding digits, the unit word after one, and the joining word between or
    before them ("Daypack 20 L" -> "Daypack", "DEWALT 4-Inch by 2-Inch Wheel" -> "DEWALT Wheel", "No. 2MT")."""
    words = title.split()
    has_digit = [any(c.isdigit() for c in w) for w in words]
    kept = []
    for i, word in enumerate(words):
        low = word.lower().strip(",;:()")
        after = i > 0 and has_digit[i - 1]
        before = i + 1 < len(words) and has_digit[i + 1]
        if has_digit[i] or (after and low in _UNITS) or ((after or before) and low in _LINKS):
            continue
        kept.append(word)
    return " ".join(kept)


def words_of(text: str) -> set[str]:
    """The folded, lowercase words of `text` (letters and digits)."""
    return set(term_key(text))


def attribute_words(texts: Sequence[str], max_share: float, exclude: Iterable[str] = ()) -> frozenset[str]:
    """Folded words of `texts` (one string per item) that can name an attribute: 3+ letters, no digits, not a
    stopword, not in `COMMON_WORDS` or `exclude`, in at most `max_share` of the items (see the module docstring)."""
    if not 0 < max_share <= 1:
        raise ValueError(f"attribute_max_share must be in (0, 1], got {max_share}")
    counts: collections.Counter[str] = collections.Counter()
    for text in texts:
        counts.update(w for w in words_of(text) if len(w) >= 3 and w.isalpha())
    limit = max_share * max(len(texts), 1)
    skip = STOPWORDS | COMMON_WORDS | {fold(w.lower()) for w in exclude}
    return frozenset(w for w, n in counts.items() if n <= limit and w not in skip)


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


def short_title(title: str) -> str:
    """The title's lead when it has 2+ words, else the title."""
    lead = title_lead(title)
    return lead if len(lead.split()) >= 2 else title


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
