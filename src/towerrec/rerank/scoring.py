"""Score a user's retrieved candidates with a causal LM: listwise (one forward pass per candidate order) or
pointwise (one "Yes"/"No" question per candidate over a shared, cached prompt prefix).

Listwise (LlamaRec-style). The prompt (`prompts.listwise_prompt`) lists the candidates labelled A, B, ...;
a candidate's score is the log-softmax, over the labels shown, of the next-token logit of its label. Only
these logits are read, so nothing but a candidate can be scored. LMs prefer some positions (often the first
labels), so `permutations` > 1 averages the scores over several seeded random orders. Each user's orders
are seeded by `seed` and the user's candidate texts (a stable hash), never by batch position, so scoring a
user alone or in a batch gives the same orders.

Pointwise. Every candidate gets the score log P("Yes") with P renormalised over {"Yes", "No"}, i.e. the
log-sigmoid of logit(Yes) - logit(No): how much more likely the model answers Yes than No. The user's part of
the prompt (system, history, query) is the same for all candidates: it runs once per user and its KV cache
is copied over that user's candidates, so each candidate costs only its own suffix tokens.

Shared prefix. Every prompt starts with the same system turn (`prompts.static_prefix`); its KV cache is
computed once per scorer and expanded over each batch, so no forward pass repeats it.

Batching over users. Sequences of different lengths are left-padded (the last position is then real for
every row), with an attention mask and position ids counted over real tokens only, so a padded row computes
what it computes alone (up to floating-point rounding; tests compare in float32). Sequences are sorted by
length before batching to keep padding low. Forward passes run under `torch.inference_mode()` and ask the
model for the last position's logits only (`logits_to_keep=1`).

Continuations. `continuation_logprobs(model, tokenizer, prefix, continuations)` gives the log-probability of
each continuation's tokens after one prefix, whose KV cache all of them share (explanations' template mode
scores its options with it, `towerrec.rerank.faithful`).

Inputs are rendered texts (`prompts.render_items`): `histories[u]` oldest first, `candidates[u]` in
retrieval order; outputs are one float64 array of scores per user, aligned with `candidates[u]`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

from towerrec.rerank import prompts as P

SCORERS = ("listwise", "pointwise", "head")


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _left_pad(rows: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), both (B, L) long: rows right-aligned, padded on the left."""
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, length - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[i, length - len(r) :] = 1
    return ids, mask


def _positions(mask: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
    """(B, L) position ids counting real tokens only (pads get 0), plus a per-row offset (B,) if given."""
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, L)
    return pos if offset is None else pos + offset[:, None]


def _batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Row indices grouped `batch_size` at a time in order of length (less padding per batch)."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def stable_seed(*parts) -> int:
    """A 63-bit seed from any strings/ints, stable across processes (unlike hash())."""
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        h.update(str(part).encode("utf-8", "surrogatepass") + b"\x1f")
    return int.from_bytes(h.digest(), "little") >> 1


def _forward_last(model, ids: torch.Tensor, mask: torch.Tensor, past: list[tuple[torch.Tensor, torch.Tensor]] | None,
                  past_mask: torch.Tensor | None, keep_cache: bool = False):
    """Next-token logits (B, V) float32 after each row of left-padded `ids` (B, L), continuing `past` (per layer
    (keys, values), (B, H, Lp, Dh)) whose real tokens are `past_mask` (B, Lp); also the new cache when asked."""
    device = _model_device(model)
    if past is None:
        full_mask, positions, cache = mask, _positions(mask), None
    else:
        full_mask = torch.cat([past_mask, mask], dim=1)  # (B, Lp + L)
        positions = _positions(mask, past_mask.sum(1))  # (B, L) continuing after each row's real prefix tokens
        cache = DynamicCache(past)
    out = model(input_ids=ids.to(device), attention_mask=full_mask.to(device), position_ids=positions.to(device),
                cache=cache, use_cache=keep_cache, logits_to_keep=1)
    logits = out.logits[:, -1, :].float()  # (B, V)
    if not keep_cache:
        return logits, None
    return logits, [(layer.keys, layer.values) for layer in out.cache.layers]


class _StaticPrefix:
    """The KV cache of `prompts.static_prefix` (system turn, start of the user turn), computed on first use;
    the model's weights must not change afterwards (build a new scorer after training)."""

    def __init__(self, model, tokenizer, prompt_cfg: P.PromptConfig):
        self.model, self.tokenizer = model, tokenizer
        self.text = P.static_prefix(prompt_cfg, tokenizer)
        self.ids = tokenizer.encode(self.text, add_special_tokens=False)
        self._kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def strip(self, text: str) -> str:
        """The part of a prompt after the static prefix."""
        if not text.startswith(self.text):
            raise ValueError("prompt does not start with the static prefix (chat template not prefix-stable)")
        return text[len(self.text) :]

    def expanded(self, rows: int) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        """(cache, mask) of the prefix for `rows` rows: per layer (rows, H, S, Dh) views, mask (rows, S)."""
        if self._kv is None:
            ids = torch.tensor([self.ids], dtype=torch.long)
            _, self._kv = _forward_last(self.model, ids, torch.ones_like(ids), None, None, keep_cache=True)
        kv = [(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in self._kv]
        return kv, torch.ones((rows, len(self.ids)), dtype=torch.long)


class ListwiseScorer:
    """Listwise LM scores of candidates: the label logits of one prompt per (user, candidate order)."""

    def __init__(self, model, tokenizer, prompt_cfg: P.PromptConfig | None = None, *, permutations: int = 1,
                 seed: int = 0, batch_size: int = 8):
        if permutations < 1:
            raise ValueError(f"rerank.permutations must be >= 1, got {permutations}")
        if batch_size < 1:
            raise ValueError(f"rerank.batch_size must be >= 1, got {batch_size}")
        self.model, self.tokenizer = model, tokenizer
        self.prompt_cfg = prompt_cfg or P.PromptConfig()
        self.permutations, self.seed, self.batch_size = permutations, seed, batch_size
        self.prefix = _StaticPrefix(model, tokenizer, self.prompt_cfg)

    def orders(self, candidate_texts: Sequence[str]) -> list[np.ndarray]:
        """The `permutations` orders the candidates are shown in: order[j] = candidate shown with label j."""
        n = len(candidate_texts)
        rng = np.random.default_rng(stable_seed(self.seed, n, *candidate_texts))
        return [rng.permutation(n) for _ in range(self.permutations)]

    def prompts(self, history: Sequence[str], candidates: Sequence[str], query: str | None = None
                ) -> list[tuple[np.ndarray, P.ListwisePrompt]]:
        """(order, prompt) for each candidate order of one user."""
        return [(order, P.listwise_prompt(history, [candidates[i] for i in order], self.prompt_cfg, self.tokenizer,
                                          query)) for order in self.orders(candidates)]

    @torch.inference_mode()
    def score(self, histories: Sequence[Sequence[str]], candidates: Sequence[Sequence[str]],
              queries: Sequence[str | None] | None = None, progress: bool = False) -> list[np.ndarray]:
        """Per user, (C_u,) float64 mean over orders of the log-softmax of the candidate label logits."""
        queries = _per_user_queries(histories, candidates, queries)
        rows: list[tuple[int, np.ndarray, list[int]]] = []  # (user, order, label token ids) per sequence
        token_rows: list[list[int]] = []  # each prompt after the static prefix
        for u, (history, cands, query) in enumerate(zip(histories, candidates, queries)):
            if len(cands) == 0:
                continue
            for order, prompt in self.prompts(history, cands, query):
                rows.append((u, order, P.label_token_ids(self.tokenizer, prompt.labels)))
                token_rows.append(self.tokenizer.encode(self.prefix.strip(prompt.text), add_special_tokens=False))
        sums = [np.zeros(len(c), dtype=np.float64) for c in candidates]
        batches = _batches([len(t) for t in token_rows], self.batch_size)
        for batch in tqdm(batches, desc="listwise", unit="batch", disable=not progress):
            ids, mask = _left_pad([token_rows[i] for i in batch], self.tokenizer.pad_token_id)  # (B, L)
            last, _ = _forward_last(self.model, ids, mask, *self.prefix.expanded(len(batch)))  # (B, V)
            for j, i in enumerate(batch):
                u, order, label_ids = rows[i]
                lp = torch.log_softmax(last[j, label_ids], dim=-1).double().cpu().numpy()  # (C,) by label
                sums[u][order] += lp
        return [s / self.permutations for s in sums]


def _per_user_queries(histories: Sequence, candidates: Sequence, queries: Sequence | None) -> list:
    """`queries` as a list with one entry per user (None when not given); the three lengths must agree."""
    queries = list(queries) if queries is not None else [None] * len(histories)
    if not len(histories) == len(candidates) == len(queries):
        raise ValueError(f"{len(histories)} histories, {len(candidates)} candidate lists, {len(queries)} queries")
    return queries


class PointwiseScorer:
    """Pointwise LM scores: log P(Yes | Yes or No) for each candidate, the user's prefix computed once."""

    def __init__(self, model, tokenizer, prompt_cfg: P.PromptConfig | None = None, *, batch_size: int = 32,
                 user_batch_size: int = 4):
        if batch_size < 1 or user_batch_size < 1:
            raise ValueError(f"batch sizes must be >= 1, got batch_size={batch_size}, "
                             f"user_batch_size={user_batch_size}")
        self.model, self.tokenizer = model, tokenizer
        self.prompt_cfg = prompt_cfg or P.PromptConfig()
        self.batch_size, self.user_batch_size = batch_size, user_batch_size
        self.yes_id, self.no_id = P.answer_token_ids(tokenizer)
        self.prefix = _StaticPrefix(model, tokenizer, self.prompt_cfg)

    @torch.inference_mode()
    def score(self, histories: Sequence[Sequence[str]], candidates: Sequence[Sequence[str]],
              queries: Sequence[str | None] | None = None, progress: bool = False) -> list[np.ndarray]:
        """Per user, (C_u,) float64 log-sigmoid(logit(Yes) - logit(No)) of each candidate."""
        queries = _per_user_queries(histories, candidates, queries)
        tok = self.tokenizer
        user_parts, suffixes = [], []
        for history, cands, query in zip(histories, candidates, queries):
            prompt = P.pointwise_prompt(history, cands, self.prompt_cfg, tok, query)
            user_parts.append(tok.encode(self.prefix.strip(prompt.prefix), add_special_tokens=False))
            suffixes.append([tok.encode(s, add_special_tokens=False) for s in prompt.suffixes])
        out = [np.zeros(len(c), dtype=np.float64) for c in candidates]
        users = [u for u in range(len(candidates)) if len(candidates[u])]
        groups = [[users[i] for i in g] for g in _batches([len(user_parts[u]) for u in users], self.user_batch_size)]
        for group in tqdm(groups, desc="pointwise", unit="batch", disable=not progress):
            self._score_group(group, user_parts, suffixes, out)
        return out

    def _score_group(self, group: list[int], user_parts, suffixes, out: list[np.ndarray]) -> None:
        pad = self.tokenizer.pad_token_id
        # the users' part of the prompt, once per user, after the static prefix
        ids, mask = _left_pad([user_parts[u] for u in group], pad)  # (G, Lu)
        static_kv, static_mask = self.prefix.expanded(len(group))
        _, kv = _forward_last(self.model, ids, mask, static_kv, static_mask, keep_cache=True)  # (G, H, S + Lu, Dh)
        past_mask = torch.cat([static_mask, mask], dim=1)  # (G, S + Lu)
        rows = [(g, c) for g, u in enumerate(group) for c in range(len(suffixes[u]))]  # (row in group, candidate)
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            of = torch.tensor([g for g, _ in chunk], dtype=torch.long)  # (R,) each row's user
            s_ids, s_mask = _left_pad([suffixes[group[g]][c] for g, c in chunk], pad)  # (R, Ls)
            past = [(k[of.to(k.device)], v[of.to(v.device)]) for k, v in kv]  # copies of the users' caches
            last, _ = _forward_last(self.model, s_ids, s_mask, past, past_mask[of])  # (R, V)
            margin = (last[:, self.yes_id] - last[:, self.no_id]).double()  # (R,)
            scores = torch.nn.functional.logsigmoid(margin).cpu().numpy()
            for (g, c), s in zip(chunk, scores):
                out[group[g]][c] = s


def make_scorer(method: str, model, tokenizer, prompt_cfg: P.PromptConfig, *, permutations: int = 1, seed: int = 0,
                batch_size: int = 8, user_batch_size: int = 4):
    """The scorer named by `rerank.scorer` ('listwise' | 'pointwise'; 'head' is built by the Reranker)."""
    if method == "listwise":
        return ListwiseScorer(model, tokenizer, prompt_cfg, permutations=permutations, seed=seed, batch_size=batch_size)
    if method == "pointwise":
        return PointwiseScorer(model, tokenizer, prompt_cfg, batch_size=batch_size * 4, user_batch_size=user_batch_size)
    raise ValueError(f"rerank.scorer must be one of {SCORERS}, got {method!r}")


@torch.inference_mode()
def continuation_logprobs(model, tokenizer, prefix: str, continuations: Sequence[str]) -> list[np.ndarray]:
    """Per continuation, the (L_c,) float64 log-probabilities of its tokens after `prefix`: the prefix runs once
    and its KV cache is shared by every continuation (one batch, right-padded)."""
    pre = tokenizer.encode(prefix, add_special_tokens=False)
    rows = [tokenizer.encode(c, add_special_tokens=False) for c in continuations]
    if not rows:
        return []
    ids = torch.tensor([pre], dtype=torch.long)  # (1, P)
    first, kv = _forward_last(model, ids, torch.ones_like(ids), None, None, keep_cache=True)  # (1, V), cache
    n, length = len(rows), max(1, max(len(r) for r in rows))
    c_ids = torch.full((n, length), tokenizer.pad_token_id, dtype=torch.long)  # (N, L) right-padded
    c_mask = torch.zeros((n, length), dtype=torch.long)
    for i, r in enumerate(rows):
        c_ids[i, : len(r)], c_mask[i, : len(r)] = torch.tensor(r, dtype=torch.long), 1
    device = _model_device(model)
    past = DynamicCache([(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in kv])  # (N, H, P, Dh)
    out = model(input_ids=c_ids.to(device), attention_mask=torch.cat([torch.ones((n, len(pre)), dtype=torch.long),
                                                                      c_mask], 1).to(device),
                position_ids=(len(pre) + torch.arange(length)).expand(n, -1).to(device), cache=past,
                use_cache=False)
    logits = torch.cat([first.expand(n, -1)[:, None, :], out.logits[:, :-1, :].float()], 1)  # (N, L, V): before each
    logp = torch.log_softmax(logits, dim=-1).gather(-1, c_ids.to(device)[:, :, None])[:, :, 0]  # (N, L)
    return [logp[i, : len(r)].double().cpu().numpy() for i, r in enumerate(rows)]
