"""The exported model as a harness scorer (`ArtifactScorer`) and its full-ranking metrics (`evaluate_artifact`)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from towerrec import evaluation
from towerrec.artifact.reader import Artifact
from towerrec.data.splits import Split
from towerrec.retrieval.retriever import Retriever

log = logging.getLogger(__name__)


def as_retriever(artifact: Artifact | Retriever | str | Path) -> Retriever:
    return artifact if isinstance(artifact, Retriever) else Retriever(artifact)


class ArtifactScorer:
    """The exported model (text two-tower or sequence towers) as a harness scorer for one stage of a split.

    The stage's users are embedded once, up front, through `Retriever.embed_histories` (text towers: the stored
    text config, tokenizer and user tower, the text serving renders; sequence towers: windows of the stored
    product vectors through the user tower); calls look users up by id and score them against the stored item
    vectors (full ranking). Split items missing from the artifact score -inf (never recommended).
    `batch_size`: users embedded at a time; the training datamodule's eval batch size reproduces the
    in-training vectors exactly."""

    def __init__(self, artifact: Artifact | Retriever | str | Path, split: Split, stage: str = "test",
                 batch_size: int = 256, progress: bool = False):
        retriever = as_retriever(artifact)
        art = retriever.artifact
        fingerprint = art.manifest.get("data", {}).get("fingerprint")
        if fingerprint and fingerprint != split.fingerprint:
            log.warning("scoring an artifact exported from data %s on data %s", fingerprint, split.fingerprint)
        pos = art.table.positions_of_items(split.catalog.item_ids)  # (N,) split item -> artifact position
        self.missing = torch.from_numpy(pos < 0)  # (N,)
        if self.missing.any():
            log.warning("%d of %d split items are not in the artifact: never recommended", int(self.missing.sum()),
                        len(pos))
        self.item_emb = torch.from_numpy(np.ascontiguousarray(art.embeddings[np.maximum(pos, 0)]))  # (N, D)
        examples = split.examples(stage)
        histories = [pos[h] for h in tqdm(examples.histories, desc=f"user histories {stage}", disable=not progress)]
        self.user_emb = torch.from_numpy(retriever.embed_histories(histories, batch_size=batch_size))  # (U, D)
        self.row_of_user = pd.Index(examples.users)

    def __call__(self, histories: Sequence[np.ndarray], users: np.ndarray) -> torch.Tensor:
        rows = self.row_of_user.get_indexer(list(users))
        if (rows < 0).any():
            raise KeyError(f"user {users[int(np.flatnonzero(rows < 0)[0])]!r} was not embedded for this stage")
        scores = self.user_emb[torch.from_numpy(rows)] @ self.item_emb.T  # (B, N)
        if self.missing.any():
            scores[:, self.missing] = -math.inf
        return scores


def evaluate_artifact(artifact: Artifact | Retriever | str | Path, split: Split,
                      eval_cfg: evaluation.EvalConfig | Mapping | None = None, *, stages: Sequence[str] = ("test",),
                      batch_size: int = 256, progress: bool = False) -> dict[str, float]:
    """Harness metrics of the exported model on `split`, e.g. {'test/recall@10': ...} ('val/' for valid)."""
    retriever = as_retriever(artifact)
    cfg = evaluation.EvalConfig.from_any(eval_cfg)
    metrics: dict[str, float] = {}
    for stage in stages:
        scorer = ArtifactScorer(retriever, split, stage, batch_size, progress)
        metrics.update(evaluation.evaluate_split(scorer, split, cfg, stages=(stage,), progress=progress))
    return metrics
