"""`Reranker`: the serving API of the LM rerank stage, and the rerank artifact directory it loads from.

    reranker = Reranker.from_config(cfg.rerank)       # or Reranker.from_dir("<run_dir>/rerank")
    hits = retriever.recommend(history_ids, k=20)
    result = reranker.rank(history_dicts, hits, query="nitrile gloves")
    best_first = [hits[i] for i in result.order]      # result.lm_score[i], result.fused_score[i]: hits[i]'s

`rank` takes the user's history (dicts with title, brand, ... oldest first, like `Retriever.recommend`
output) and the retrieved candidates (that output: item_id, score, title, brand, category, price, row_id),
scores the first `top_n` candidates with the LM (`scoring.py`), fuses the LM score with the retrieval
`score` (`fusion.py`, weight `fusion.weight`) and returns a `RerankResult`: `order`, indices into the
candidates, best first (those `top_n` by fused score, then the rest in their given order), and the LM and
fused scores in candidate order (NaN beyond `top_n`). `rerank` is the same as dicts: copies of the
candidates in that order with `lm_score` and `fused_score` added (None beyond `top_n`).

A rerank artifact is a directory holding `rerank.json` (written by `save_rerank_dir`: model source, scorer,
prompt settings, tuned fusion weight, validation/test metrics) and optionally `adapter/`, LoRA weights (peft)
merged into the base model on load. Options in `overrides` (device, dtype, batch sizes, ...) replace those
stored, e.g. to serve on another device.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from towerrec.rerank import fusion
from towerrec.rerank import prompts as P
from towerrec.rerank.apply import RERANK_FILE
from towerrec.rerank.head import CandidateHead, HeadScorer
from towerrec.rerank.lm import load_lm, model_source
from towerrec.rerank.scoring import SCORERS, make_scorer
from towerrec.utils.io import to_plain

log = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
HEAD_FILE = "head.pt"  # scorer=head: the trained CandidateHead (towerrec.rerank.head)
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class RerankSettings:
    """The scoring part of the `rerank` config group (conf/rerank/default.yaml documents every key)."""

    model_path: str = "smollm2"
    device: str = "auto"
    dtype: str = "auto"
    cache_dir: str | None = None
    random_init: dict | None = None
    adapter: str | None = None
    head: str | None = None  # scorer=head: a trained head file (towerrec.rerank.head)
    scorer: str = "listwise"
    top_n: int = 20
    permutations: int = 1
    seed: int = 0
    batch_size: int = 8
    user_batch_size: int = 4
    prompt: P.PromptConfig = P.PromptConfig()
    normalize: str = "zscore"
    weight: float = 0.0

    @classmethod
    def from_config(cls, cfg) -> "RerankSettings":
        d = to_plain(cfg)
        fusion_cfg = dict(d.get("fusion") or {})
        known = {f.name for f in dataclasses.fields(cls)} - {"prompt", "normalize", "weight"}
        s = cls(**{k: d[k] for k in known if d.get(k) is not None},
                prompt=P.PromptConfig.from_dict(d.get("prompt")),
                normalize=str(fusion_cfg.get("normalize", "zscore")),
                weight=float(fusion_cfg["weight"]) if fusion_cfg.get("weight") is not None else 0.0)
        if s.scorer not in SCORERS:
            raise ValueError(f"rerank.scorer must be one of {SCORERS}, got {s.scorer!r}")
        if not 1 <= s.top_n <= len(P.LABELS):
            raise ValueError(f"rerank.top_n must be between 1 and {len(P.LABELS)}, got {s.top_n}")
        if s.normalize not in fusion.NORMALIZERS:
            raise ValueError(f"rerank.fusion.normalize must be one of {fusion.NORMALIZERS}, got {s.normalize!r}")
        if not 0.0 <= s.weight <= 1.0:
            raise ValueError(f"rerank.fusion.weight must be in [0, 1], got {s.weight}")
        return s

    def lm_config(self) -> dict:
        return {"model_path": self.model_path, "device": self.device, "dtype": self.dtype,
                "cache_dir": self.cache_dir, "random_init": self.random_init, "adapter": self.adapter}


@dataclasses.dataclass(frozen=True)
class RerankResult:
    """`Reranker.rank` of C candidates: `order` (C,) int64 candidate indices, best first (a permutation of
    range(C)); `lm_score`, `fused_score` (C,) float64 in candidate order, NaN for those not scored (beyond
    top_n, which keep their given order after the scored ones)."""

    order: np.ndarray
    lm_score: np.ndarray
    fused_score: np.ndarray

    def __len__(self) -> int:
        return len(self.order)


class Reranker:
    """LM reranking of retrieved candidates with score fusion (see the module docstring)."""

    def __init__(self, model, tokenizer, settings: RerankSettings | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.settings = settings or RerankSettings()
        s = self.settings
        if s.scorer == "head":
            if not s.head:
                raise ValueError("rerank.scorer=head needs rerank.head, a trained head file (a rerank directory's "
                                 "head.pt is found on its own)")
            self.scorer = HeadScorer(model, tokenizer, s.prompt, CandidateHead.load(s.head), batch_size=s.batch_size)
        else:
            self.scorer = make_scorer(s.scorer, model, tokenizer, s.prompt, permutations=s.permutations, seed=s.seed,
                                      batch_size=s.batch_size, user_batch_size=s.user_batch_size)
        P.label_token_ids(tokenizer, P.candidate_labels(s.top_n))  # fail at load time, not on the first request

    @classmethod
    def from_config(cls, cfg, **overrides) -> "Reranker":
        """From the `rerank` config group (DictConfig or dict); `adapter`: a LoRA directory to merge."""
        settings = RerankSettings.from_config({**to_plain(cfg), **overrides})
        model, tokenizer = load_lm(settings.lm_config())  # the adapter merged in
        return cls(model, tokenizer, settings)

    @classmethod
    def from_dir(cls, path: str | os.PathLike, **overrides) -> "Reranker":
        """From a rerank artifact directory: rerank.json, plus adapter/ when present."""
        path = Path(path)
        file = path / RERANK_FILE
        if not file.is_file():
            raise FileNotFoundError(f"{path}: not a rerank directory (no {RERANK_FILE})")
        try:
            stored = json.loads(file.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{file}: not valid JSON ({e})") from e
        if stored.get("version") != FORMAT_VERSION:
            raise ValueError(f"{file}: format version {stored.get('version')!r}, expected {FORMAT_VERSION}")
        cfg = dict(stored["config"])
        if (path / ADAPTER_DIR).is_dir():
            cfg["adapter"] = str(path / ADAPTER_DIR)
        if (path / HEAD_FILE).is_file():
            cfg["head"] = str(path / HEAD_FILE)
        return cls.from_config(cfg, **overrides)

    # ---- scoring -----------------------------------------------------------------------------------------
    def render(self, items: Sequence[Mapping]) -> list[str]:
        return P.render_items(items, self.settings.prompt, self.tokenizer)

    def lm_scores(self, histories: Sequence[Sequence[Mapping]], candidates: Sequence[Sequence[Mapping]],
                  queries: Sequence[str | None] | None = None, progress: bool = False) -> list[np.ndarray]:
        """LM score of every candidate of every user (batched over users), candidates as given."""
        return self.scorer.score([self.render(h) for h in histories], [self.render(c) for c in candidates],
                                 queries, progress=progress)

    def rank(self, history: Sequence[Mapping], candidates: Sequence[Mapping], query: str | None = None
             ) -> RerankResult:
        """The first `top_n` candidates ordered by fused score, then the rest as given (see RerankResult)."""
        for i, c in enumerate(candidates):
            if not isinstance(c, Mapping):
                raise TypeError(f"candidates[{i}] must be a dict (Retriever.recommend output), got {type(c).__name__}")
            if not isinstance(c.get("score"), (int, float)) or not np.isfinite(c["score"]):
                raise ValueError(f"candidates[{i}]['score'] must be a finite retrieval score, got {c.get('score')!r}")
        for i, h in enumerate(history):
            if not isinstance(h, Mapping):
                raise TypeError(f"history[{i}] must be a dict with product fields, got {type(h).__name__}")
        n, head = len(candidates), min(self.settings.top_n, len(candidates))
        order = np.arange(n, dtype=np.int64)
        lm, fused = np.full(n, np.nan), np.full(n, np.nan)
        if head:
            lm[:head] = self.lm_scores([history], [list(candidates[:head])], [query])[0]
            fused[:head] = self.fuse(np.array([c["score"] for c in candidates[:head]], dtype=np.float64), lm[:head])
            order[:head] = fusion.order(fused[:head])
        return RerankResult(order, lm, fused)

    def rerank(self, history: Sequence[Mapping], candidates: Sequence[Mapping], query: str | None = None
               ) -> list[dict]:
        """`rank` as dicts: copies of the candidates best first, lm_score and fused_score added (None beyond
        top_n)."""
        r = self.rank(history, candidates, query)
        return [{**candidates[i], "lm_score": _optional(r.lm_score[i]), "fused_score": _optional(r.fused_score[i])}
                for i in r.order.tolist()]

    def fuse(self, retrieval: np.ndarray, lm: np.ndarray, weight: float | None = None) -> np.ndarray:
        w = self.settings.weight if weight is None else weight
        return fusion.fuse(retrieval, lm, w, self.settings.normalize)


def _optional(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


# ------------------------------------------------------------------------------------------------- artifact


def settings_record(settings: RerankSettings) -> dict:
    """The settings as stored in rerank.json (the model's source resolved; no device-specific adapter path)."""
    d = dataclasses.asdict(settings)
    d["model_path"] = model_source(settings.lm_config())
    d["prompt"] = dataclasses.asdict(settings.prompt)
    d["fusion"] = {"normalize": d.pop("normalize"), "weight": d.pop("weight")}
    d.pop("adapter")
    d.pop("head")
    return d


def save_rerank_dir(path: str | os.PathLike, settings: RerankSettings, *, metrics: Mapping | None = None,
                    extra: Mapping | None = None) -> Path:
    """Write `path/rerank.json` atomically (the directory is created; an adapter/ inside is left as is)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    record = {"version": FORMAT_VERSION, "config": settings_record(settings), "metrics": dict(metrics or {}),
              **dict(extra or {})}
    fd, tmp = tempfile.mkstemp(prefix=".rerank.", suffix=".json", dir=path)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path / RERANK_FILE)
    return path
