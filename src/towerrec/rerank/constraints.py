"""Constrained decoding for explanations: the LM cannot complete a name, attribute word or number that the
grounding check (`towerrec.rerank.grounding`) would flag for this request.

What a request allows (`Allowance.for_request`): the vocabulary's names (brands, categories, products, the
worked example's words) and attribute words found in the shopper's history or the product's fields; inside an
open ownership clause ("Since you bought ...", "your ..."; `grounding.claim_spans`, `CLAIM_KINDS`) only those
of the history; digits only as a prefix of a number or digit-word of the product's fields (or a digit-word of
the history such as "3D", "MK10"; its standalone numbers with `numbers_from_history`). A regeneration adds
the flagged words (`forbid`) and, after a flagged number, bans every digit.

How (`TermConstraint`, a transformers logits processor). The catalog's terms form one word trie, built once
per vocabulary (`TermTrie`); the tokenizer's tokens are indexed once by the word they start or continue
(`TokenIndex`). At each step and row the answer so far is split into its finished words and the word being
written; the trie nodes reached by the last finished words tell which words would complete a term, and only
the tokens that would spell such a word (a word-start token " Boots", or the rest of the word being written:
"ots" after " Bo") are banned, looked up in the indexes, never by scanning thousands of banned sequences. A
term's last word is caught whatever its tokenization, up to the plural fold. Names of common-word brands that
the check counts only in their own case ("Small Parts") are banned in every case (stricter than the check).

Public API:
    TokenIndex.of(tokenizer) (cached per tokenizer) -> .words, .layout_ids, .digit_ids
    TermTrie.of(vocabulary) (cached per vocabulary)
    Allowance.for_request(vocabulary, history, item, numbers_from_history=False, forbid=(), no_digits=False)
    TermConstraint(tokenizer, vocabulary, allowances, start, prefix="")   # one Allowance (and prefix) per row
    AnswerNoRepeat(start, n), SentencesDone(tokenizer, start, n)
"""

from __future__ import annotations

import bisect
import dataclasses
import re
import weakref
from collections.abc import Iterable, Mapping, Sequence

from towerrec.rerank.grounding import CLAIM_KINDS, SENTENCE_END, claim_spans, ngrams
from towerrec.rerank.vocabulary import Vocabulary, fold, item_fields, numbers_in, price_text, term_key, words_of

_RUN = re.compile(r"[A-Za-z0-9]+")
_LAST_WORD = re.compile(r"[A-Za-z0-9]+$")
_LAST_NUMBER_WORD = re.compile(r"(?:[A-Za-z0-9]+[.,])*[A-Za-z0-9]*$")
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _cached(owner, name: str, build):
    """build() once per (owner, name): the owner (tokenizer, vocabulary) keeps it alive."""
    try:
        slot = _CACHE.setdefault(owner, {})
    except TypeError:  # not weak-referenceable: no cache
        return build()
    if name not in slot:
        slot[name] = build()
    return slot[name]


class TokenIndex:
    """A tokenizer's tokens by the word they spell: `start[w]` tokens that begin a word w (after a space or
    punctuation, " Boots"), `cont[r]` tokens that are exactly the letters r (no space, "ots"), `words[w]` both
    (folded lowercase keys for start and words, raw lowercase for cont), plus digit and layout tokens."""

    def __init__(self, tokenizer):
        special = set(tokenizer.all_special_ids)
        self.start: dict[str, list[int]] = {}
        self.cont: dict[str, list[int]] = {}
        self.words: dict[str, list[int]] = {}
        self.digits: list[tuple[int, str]] = []  # (id, text) of tokens holding a digit
        self.exact: dict[str, list[int]] = {}  # lowercase text -> ids
        self.layout_ids: list[int] = []  # tokens holding a newline or a backtick
        for token, i in tokenizer.get_vocab().items():
            if i in special:
                continue
            text = tokenizer.convert_tokens_to_string([token])
            self.exact.setdefault(text.lower(), []).append(i)
            if any(c in "\n\r`" for c in text):
                self.layout_ids.append(i)
            if any(c.isdigit() for c in text):
                self.digits.append((i, text))
            runs = _RUN.findall(text)
            if len(runs) != 1:
                continue
            word, core = runs[0].lower(), re.sub(r"[^A-Za-z0-9]+$", "", text)  # core: trailing punctuation off
            if text.strip().isalpha():
                self.words.setdefault(fold(text.strip().lower()), []).append(i)
            if core == runs[0]:  # "ots", "ots,"
                self.cont.setdefault(word, []).append(i)
            elif core.endswith(runs[0]):  # " Boots", "(Boots", " Boots."
                self.start.setdefault(fold(word), []).append(i)
        self.layout_ids.sort()
        self.digit_ids = sorted(i for i, _ in self.digits)

    @classmethod
    def of(cls, tokenizer) -> TokenIndex:
        return _cached(tokenizer, "token_index", lambda: cls(tokenizer))


class _Node:
    __slots__ = ("children", "key", "kind")

    def __init__(self):
        self.children: dict[str, _Node] = {}
        self.key: tuple[str, ...] | None = None
        self.kind: str | None = None


class TermTrie:
    """The vocabulary's names and attribute words as a trie of folded words; `root_words` lists the
    one-word terms in sorted order (prefix look-ups by bisection)."""

    def __init__(self, vocabulary: Vocabulary):
        self.root = _Node()
        self.max_words = max(vocabulary.max_words, 1)
        entries = [(k, kind) for k, (kind, _) in vocabulary.terms.items()]
        entries += [((w,), "attribute") for w in vocabulary.attributes if (w,) not in vocabulary.terms]
        for key, kind in entries:
            node = self.root
            for word in key:
                node = node.children.setdefault(word, _Node())
            node.key, node.kind = key, kind
        self.root_words = sorted(w for w, n in self.root.children.items() if n.key is not None)

    @classmethod
    def of(cls, vocabulary: Vocabulary) -> TermTrie:
        return _cached(vocabulary, "term_trie", lambda: cls(vocabulary))

    def nodes_after(self, words: Sequence[str]) -> list[_Node]:
        """The root and every node reached by a suffix of `words` (folded): where the next word may go."""
        nodes = [self.root]
        for j in range(max(0, len(words) - self.max_words + 1), len(words)):
            node = self.root
            for word in words[j:]:
                node = node.children.get(word)
                if node is None:
                    break
            else:
                nodes.append(node)
        return nodes


@dataclasses.dataclass(frozen=True)
class Allowance:
    """What one request may name (see the module docstring): term keys and words, everywhere and inside
    ownership clauses; the prefixes digits may spell; extra words forbidden by a regeneration."""

    names: frozenset[tuple[str, ...]]  # term keys of the history and the item
    bought_names: frozenset[tuple[str, ...]]  # of the history only
    words: frozenset[str]  # folded words of the history and the item
    bought_words: frozenset[str]
    digit_prefixes: frozenset[str]  # lowercase prefixes of the numbers and digit-words allowed
    digit_words: frozenset[str]  # the numbers and digit-words themselves
    forbid: frozenset[str] = frozenset()  # folded words never allowed (flagged by an earlier attempt)
    no_digits: bool = False

    @classmethod
    def for_request(cls, vocabulary: Vocabulary, history: Sequence[Mapping], item: Mapping, *,
                    numbers_from_history: bool = False, forbid: Iterable[str] = (),
                    no_digits: bool = False) -> Allowance:
        item_texts = item_fields(item)
        history_texts = [t for h in history for t in item_fields(h, with_price=False)]
        bought = ngrams(history_texts, vocabulary.max_words)
        numbers = {w for t in item_texts for w in re.findall(r"[a-z0-9]+(?:[.,][a-z0-9]+)*", t.lower())
                   if any(c.isdigit() for c in w)}
        numbers |= {n for t in item_texts for n, _ in numbers_in(t)} | {price_text(item.get("price"))}
        for t in history_texts:
            for w in re.findall(r"[a-z0-9]+(?:\.[a-z0-9]+)*", t.lower()):
                if any(c.isdigit() for c in w) and (numbers_from_history or any(c.isalpha() for c in w)):
                    numbers.add(w)
        prefixes = {n[:i] for n in numbers if n for i in range(1, len(n) + 1)}
        forbidden = {w for f in forbid for w in term_key(f)}
        return cls(names=frozenset(ngrams(item_texts, vocabulary.max_words) | bought), bought_names=frozenset(bought),
                   words=frozenset(words_of(" ".join(item_texts + history_texts))) - forbidden,
                   bought_words=frozenset(words_of(" ".join(history_texts))) - forbidden,
                   digit_prefixes=frozenset(prefixes), digit_words=frozenset(n for n in numbers if n),
                   forbid=frozenset(forbidden), no_digits=no_digits)

    def allows(self, key: tuple[str, ...], kind: str, claim: bool | None) -> bool:
        """Whether this request may complete term `key` of `kind`; `claim`: None outside ownership clauses,
        else whether the open clause is strong."""
        if any(w in self.forbid for w in key):
            return False
        if kind == "attribute":
            words = self.bought_words if claim is not None and "attribute" in CLAIM_KINDS[claim] else self.words
            return key[0] in words
        names = self.bought_names if claim is not None and kind in CLAIM_KINDS[claim] else self.names
        return key in names


class TermConstraint:
    """Logits processor: per row, ban the tokens that would complete a term, attribute word or number its
    `Allowance` does not allow (see the module docstring). `start`: where the answers begin in input_ids;
    `prefix`: the answer's fixed opening, already in the prompt ("Since you bought"), one for all rows or one
    per row."""

    def __init__(self, tokenizer, vocabulary: Vocabulary, allowances: Sequence[Allowance], start: int,
                 prefix: str | Sequence[str] = ""):
        self.tokenizer, self.allowances, self.start = tokenizer, list(allowances), start
        self.prefixes = [prefix] * len(self.allowances) if isinstance(prefix, str) else list(prefix)
        self.index, self.trie = TokenIndex.of(tokenizer), TermTrie.of(vocabulary)
        self._finals: dict[tuple[int, bool | None, int], set[str]] = {}  # (row, claim, node id) -> banned words
        self._root_ids: dict[tuple[int, bool, bool | None], list[int]] = {}  # (row, bare, claim) -> tokens banned

    def _banned_finals(self, row: int, node: _Node, claim: bool | None) -> set[str]:
        """Words that would complete a term this row may not name, after `node`."""
        slot = (row, claim, id(node))
        if slot not in self._finals:
            allow = self.allowances[row]
            words = set(allow.forbid) if node is self.trie.root else set()
            words |= {w for w, child in node.children.items()
                      if child.key is not None and not allow.allows(child.key, child.kind, claim)}
            self._finals[slot] = words
        return self._finals[slot]

    def _word_ids(self, words: Iterable[str], bare: bool) -> set[int]:
        """Tokens spelling one of `words` (folded) as a new word: " Boots", and with `bare` also "Boots"."""
        ids = {i for w in words for i in self.index.start.get(w, ())}
        if bare:
            ids.update(i for w in words for r in (w, w + "s") for i in self.index.cont.get(r, ()))
        return ids

    def _root_ids_for(self, row: int, bare: bool, claim: bool | None) -> list[int]:
        """`_word_ids` of the one-word terms (thousands) this row may not name: computed once per row."""
        if (row, bare, claim) not in self._root_ids:
            words = self._banned_finals(row, self.trie.root, claim)
            self._root_ids[(row, bare, claim)] = sorted(self._word_ids(words, bare))
        return self._root_ids[(row, bare, claim)]

    def banned_ids(self, row: int, text: str) -> set[int] | tuple[str, set[int]]:
        """Token ids row `row` may not emit after answer text `text` (the prefix included); or ("only", ids)
        when a number is half written ("9" of "99.00"): only its allowed continuations may follow."""
        index, allow = self.index, self.allowances[row]
        claims = [c for c in claim_spans(text) if c.open]
        claim = None if not claims else any(c.strong for c in claims)
        last = _LAST_WORD.search(text)
        partial = last.group().lower() if last else ""
        done = [fold(w.lower()) for w in _RUN.findall(text[: last.start()] if last else text)]
        banned: set[int] = set()
        # a token that starts a new word (" Boots"; with no partial word, also "Boots")
        after = self.trie.nodes_after(done + [fold(partial)] if partial else done)
        for node in after:
            if node is self.trie.root:
                banned.update(self._root_ids_for(row, not partial, claim))
            else:
                banned.update(self._word_ids(self._banned_finals(row, node, claim), not partial))
        # a token that continues the partial word ("ots" after " Bo")
        if partial:
            for node in self.trie.nodes_after(done):
                words = self._banned_finals(row, node, claim)
                if node is self.trie.root:
                    lo = bisect.bisect_left(self.trie.root_words, partial)
                    hi = bisect.bisect_left(self.trie.root_words, partial + "\uffff")
                    candidates = [w for w in self.trie.root_words[lo:hi] if w in words]
                    candidates += [w for w in allow.forbid if w.startswith(partial)]
                else:
                    candidates = [w for w in words if w.startswith(partial)]
                for w in candidates:
                    rest = w[len(partial) :]
                    for r in ((rest, rest + "s") if rest else ("s",)):
                        banned.update(index.cont.get(r, ()))
        # digits: only as a prefix of an allowed number or digit-word
        if allow.no_digits:
            banned.update(index.digit_ids)
        else:
            stem = _LAST_NUMBER_WORD.search(text).group().lower()
            if any(c.isdigit() for c in stem) and stem.rstrip(".,") not in allow.digit_words:
                return "only", self._number_continuations(allow, stem)
            for i, piece in index.digits:
                joins = piece[:1].isalnum() or (piece[:1] in ".," and stem and piece[1:2].isdigit())
                run = re.match(r"[^A-Za-z0-9.,]*([A-Za-z0-9.,]*)", piece).group(1).lower()
                formed = (stem + run if joins else run).rstrip(".,")
                if formed and any(c.isdigit() for c in formed) and formed not in allow.digit_prefixes:
                    banned.add(i)
        return banned

    def _number_continuations(self, allow: Allowance, stem: str) -> set[int]:
        """Tokens that extend a half-written number `stem` towards one of the allowed numbers."""
        keep: set[int] = set()
        for word in allow.digit_words:
            if word.startswith(stem) and len(word) > len(stem):
                rest = word[len(stem) :]
                for k in range(1, len(rest) + 1):
                    keep.update(self.index.exact.get(rest[:k], ()))
        return keep

    def __call__(self, input_ids, scores):  # input_ids (B, T), scores (B, V)
        texts = self.tokenizer.batch_decode(input_ids[:, self.start :], skip_special_tokens=True)
        for row, text in enumerate(texts):
            banned = self.banned_ids(row, self.prefixes[row] + text)
            if isinstance(banned, tuple) and banned[1]:  # ("only", ids): everything else is banned
                keep = sorted(banned[1])
                kept = scores[row, keep].clone()  # (K,)
                scores[row] = -float("inf")
                scores[row, keep] = kept
            elif banned and not isinstance(banned, tuple):
                scores[row, sorted(banned)] = -float("inf")
        return scores


class AnswerNoRepeat:
    """Logits processor: ban a token that would repeat an n-gram of the answer so far (tokens after `start`).
    Unlike transformers' no_repeat_ngram_size it ignores the prompt, so names can still be copied from it."""

    def __init__(self, start: int, n: int):
        self.start, self.n = start, n

    def __call__(self, input_ids, scores):  # input_ids (B, T), scores (B, V)
        answer = input_ids[:, self.start :].tolist()
        for row, tokens in enumerate(answer):
            if len(tokens) < self.n:
                continue
            prefix = tuple(tokens[len(tokens) - self.n + 1 :])
            banned = {tokens[i + self.n - 1] for i in range(len(tokens) - self.n + 1)
                      if tuple(tokens[i : i + self.n - 1]) == prefix}
            if banned:
                scores[row, list(banned)] = -float("inf")
        return scores


class SentencesDone:
    """Stopping criterion: a row is done once its answer (tokens after `start`) holds `n` complete sentences."""

    def __init__(self, tokenizer, start: int, n: int):
        self.tokenizer, self.start, self.n = tokenizer, start, n

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        texts = self.tokenizer.batch_decode(input_ids[:, self.start :], skip_special_tokens=True)
        return torch.tensor([len(SENTENCE_END.findall(t)) >= self.n for t in texts], device=input_ids.device)
