"""A learned head over the frozen LM's hidden states (`rerank.scorer=head`).

The listwise prompt (`prompts.listwise_prompt`, candidates in retrieval order, labelled A, B, ...) runs once
per user through the frozen LM. Each candidate's features are the last layer's hidden state at the last token
of its line (the LM has read the shopper's history, the candidates before it and its own text there), the
label log-probability of its letter at the answer position (the listwise scorer's score, here for the
retrieval order, from the same pass) and its retrieval rank as a fraction of the list. `CandidateHead`, a
linear layer over the standardised extras and the hidden states' top principal directions, turns them into
one score; it is trained on CPU in seconds with a listwise softmax loss over lists whose target is among the
candidates (`train_head`), the LM's passes computed once. The head file (`head.pt`) sits in the rerank directory.

    feats = HeadFeatures(model, tokenizer, prompt_cfg).features(histories, candidates)   # list of (C_u, F)
    head = train_head(feats, target_slots)                                            # CandidateHead
    HeadScorer(model, tokenizer, prompt_cfg, head).score(histories, candidates)       # per user (C_u,)
"""

from __future__ import annotations

import bisect
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

from towerrec.rerank import prompts as P
from towerrec.rerank.scoring import _batches, _left_pad, _model_device, _per_user_queries, _positions, _StaticPrefix

EXTRA_FEATURES = 2  # label log-probability, retrieval rank / list length


def _line_ends(text: str, offsets: Sequence[tuple[int, int]], labels: Sequence[str], candidates: Sequence[str]
               ) -> list[int]:
    """Token index of the last token of each candidate's line ("X. text") in `text` (tokens' char `offsets`).

    The candidate block comes last in the prompt, so each line is searched backwards from the end: text the
    shopper controls earlier in the prompt (history, query) cannot be taken for a candidate."""
    starts = [a for a, _ in offsets]
    ends, stop = [], len(text)
    for label, cand in reversed(list(zip(labels, candidates))):
        line = f"\n{label}. {cand}\n"
        begin = text.rindex(line, 0, stop)
        ends.append(bisect.bisect_left(starts, begin + len(line) - 1) - 1)  # the last token before the newline
        stop = begin + 1  # this line's leading newline ends the line before it
    return ends[::-1]


class HeadFeatures:
    """Per candidate: [hidden state (H), label log-probability, rank / C] from one frozen LM pass per user."""

    def __init__(self, model, tokenizer, prompt_cfg: P.PromptConfig | None = None, batch_size: int = 8):
        self.model, self.tokenizer = model, tokenizer
        self.prompt_cfg = prompt_cfg or P.PromptConfig()
        self.batch_size = batch_size
        self.prefix = _StaticPrefix(model, tokenizer, self.prompt_cfg)
        self.dim = model.config.hidden_size + EXTRA_FEATURES

    @torch.inference_mode()
    def features(self, histories: Sequence[Sequence[str]], candidates: Sequence[Sequence[str]],
                 queries: Sequence[str | None] | None = None, progress: bool = False) -> list[np.ndarray]:
        """Per user, (C_u, H + 2) float32 features of its candidates (rendered texts, retrieval order)."""
        queries = _per_user_queries(histories, candidates, queries)
        out = [np.zeros((len(c), self.dim), dtype=np.float32) for c in candidates]
        rows, token_rows, ends = [], [], []
        for u, (history, cands, query) in enumerate(zip(histories, candidates, queries)):
            if len(cands) == 0:
                continue
            prompt = P.listwise_prompt(history, cands, self.prompt_cfg, self.tokenizer, query)
            text = self.prefix.strip(prompt.text)
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            rows.append((u, P.label_token_ids(self.tokenizer, prompt.labels)))
            token_rows.append(enc["input_ids"])
            ends.append(_line_ends(text, enc["offset_mapping"], prompt.labels, cands))
        decoder, head = self.model.get_decoder(), self.model.get_output_embeddings()
        device = _model_device(self.model)
        for batch in tqdm(_batches([len(t) for t in token_rows], self.batch_size), desc="head features",
                          unit="batch", disable=not progress):
            ids, mask = _left_pad([token_rows[i] for i in batch], self.tokenizer.pad_token_id)  # (B, L)
            past, past_mask = self.prefix.expanded(len(batch))
            hidden = decoder(input_ids=ids.to(device), attention_mask=torch.cat([past_mask, mask], 1).to(device),
                             position_ids=_positions(mask, past_mask.sum(1)).to(device),
                             cache=DynamicCache(past), use_cache=False).last_hidden_state.float()  # (B, L, H)
            logits = head(hidden[:, -1].to(head.weight.dtype)).float()  # (B, V)
            for j, i in enumerate(batch):
                u, label_ids = rows[i]
                pad = ids.shape[1] - len(token_rows[i])  # left padding of this row
                pos = torch.tensor(ends[i]) + pad
                n = len(label_ids)
                out[u][:, :-EXTRA_FEATURES] = hidden[j, pos].cpu().numpy()
                out[u][:, -2] = torch.log_softmax(logits[j, label_ids], -1).cpu().numpy()
                out[u][:, -1] = np.arange(n) / n
        return out


class CandidateHead(torch.nn.Module):
    """score = w . [z_h @ basis, z_e] + b, z = (x - mean) / std the standardised features (F,) = hidden state
    (F - EXTRA_FEATURES) and the extras; `basis` (H, r) the top principal directions of the training
    candidates' standardised hidden states, so a few hundred training lists fit r + 2 weights, not H + 2."""

    def __init__(self, dim: int, components: int = 16):
        super().__init__()
        hidden = dim - EXTRA_FEATURES
        if hidden < 1 or components < 1:
            raise ValueError(f"a rerank head needs > {EXTRA_FEATURES} features and >= 1 component, got {dim}, "
                             f"{components}")
        self.dim, self.components = dim, min(components, hidden)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.register_buffer("basis", torch.eye(hidden)[:, : self.components])  # (H, r)
        self.linear = torch.nn.Linear(self.components + EXTRA_FEATURES, 1)

    def fit_inputs(self, x: torch.Tensor) -> None:
        """Standardisation and principal directions from (N, F) training candidates."""
        self.mean.copy_(x.mean(0))
        self.std.copy_(x.std(0).clamp(min=1e-6))
        z = ((x - self.mean) / self.std)[:, :-EXTRA_FEATURES]  # (N, H)
        _, vectors = torch.linalg.eigh(z.T @ z / len(z))  # ascending eigenvalues
        self.basis.copy_(vectors[:, -self.components :].flip(-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., F) -> (...)
        z = (x - self.mean) / self.std
        inputs = torch.cat([z[..., :-EXTRA_FEATURES] @ self.basis, z[..., -EXTRA_FEATURES:]], -1)  # (..., r + 2)
        return self.linear(inputs).squeeze(-1)

    def scores(self, features: Sequence[np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode():
            return [self(torch.from_numpy(f)).double().numpy() if len(f) else np.zeros(0) for f in features]

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"dim": self.dim, "components": self.components, "state": self.state_dict()}, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CandidateHead":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no rerank head file (train one with bench/rerank.py quality "
                                    "--train-head USERS)")
        blob = torch.load(path, map_location="cpu", weights_only=True)
        head = cls(int(blob["dim"]), int(blob["components"]))
        head.load_state_dict(blob["state"])
        return head.eval()


@dataclasses.dataclass(frozen=True)
class HeadTraining:
    components: int = 16  # principal directions of the hidden states the head reads
    epochs: int = 300
    lr: float = 0.01
    weight_decay: float = 0.01
    holdout: float = 0.2  # lists kept out of training; the epoch with the best held-out loss is kept
    seed: int = 0


def train_head(features: Sequence[np.ndarray], targets: Sequence[int], cfg: HeadTraining = HeadTraining()
               ) -> tuple[CandidateHead, dict]:
    """A CandidateHead trained with softmax cross-entropy of the target within its list (lists whose target is
    not a candidate carry no signal and are skipped); full batch, AdamW; returns (head, training log)."""
    keep = [i for i, t in enumerate(targets) if t >= 0 and len(features[i])]
    every = [torch.from_numpy(f) for f in features if len(f)]
    if len(keep) < 10:
        raise ValueError(f"only {len(keep)} training lists have their target among the candidates; need >= 10")
    c = max(len(features[i]) for i in keep)
    dim = features[keep[0]].shape[1]
    x = torch.zeros((len(keep), c, dim))  # (U, C, F), lists padded
    valid = torch.zeros((len(keep), c), dtype=torch.bool)
    for row, i in enumerate(keep):
        x[row, : len(features[i])] = torch.from_numpy(features[i])
        valid[row, : len(features[i])] = True
    y = torch.tensor([targets[i] for i in keep])
    rng = np.random.default_rng(cfg.seed)
    perm = torch.from_numpy(rng.permutation(len(keep)))
    n_hold = max(1, int(cfg.holdout * len(keep)))
    hold, train = perm[:n_hold], perm[n_hold:]
    torch.manual_seed(cfg.seed)
    head = CandidateHead(dim, cfg.components)
    head.fit_inputs(torch.cat(every))  # every candidate, lists without their target too
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def loss_of(rows: torch.Tensor) -> torch.Tensor:
        logits = head(x[rows]).masked_fill(~valid[rows], -torch.inf)  # (R, C)
        return torch.nn.functional.cross_entropy(logits, y[rows])

    best, best_state, history = float("inf"), None, []
    for epoch in range(cfg.epochs):
        head.train()
        opt.zero_grad()
        loss = loss_of(train)
        loss.backward()
        opt.step()
        head.eval()
        with torch.no_grad():
            held = float(loss_of(hold))
        history.append((loss.item(), held))
        if held < best:
            best, best_state = held, {k: v.clone() for k, v in head.state_dict().items()}
    head.load_state_dict(best_state)
    log = {"lists": len(keep), "skipped": len(targets) - len(keep), "holdout": n_hold, "best_holdout_loss": best,
           "best_epoch": int(np.argmin([h for _, h in history])), "final": history[-1]}
    return head.eval(), log


class HeadScorer:
    """`rerank.scorer=head`: the scores of a trained CandidateHead over HeadFeatures (candidates as given)."""

    def __init__(self, model, tokenizer, prompt_cfg: P.PromptConfig | None, head: CandidateHead, batch_size: int = 8):
        self.features = HeadFeatures(model, tokenizer, prompt_cfg, batch_size)
        if head.dim != self.features.dim:
            raise ValueError(f"the rerank head takes {head.dim} features, this LM gives "
                             f"{self.features.dim} (a head trained for another model)")
        self.head = head

    def score(self, histories: Sequence[Sequence[str]], candidates: Sequence[Sequence[str]],
              queries: Sequence[str | None] | None = None, progress: bool = False) -> list[np.ndarray]:
        return self.head.scores(self.features.features(histories, candidates, queries, progress))
