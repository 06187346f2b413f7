"""LM reranking of retrieved candidates: a small causal LM (default SmolLM2-135M-Instruct) scores the
retriever's top-N listwise or pointwise (`scoring`), the score is fused with the retrieval score (`fusion`),
and the result is evaluated with the full-ranking harness (`evaluate`). `Reranker` is the serving API.

Modules: lm (load the LM), prompts (sanitised product text, prompts), scoring, fusion, reranker (Reranker,
rerank directory), evaluate; explanations: vocabulary, grounding (the check), constraints (constrained
decoding), templates and faithful (template mode), explain (the Explainer). Heavy imports (torch,
transformers) happen when these names are first used.
"""

from __future__ import annotations

__all__ = ["Reranker", "RerankSettings", "load_lm", "save_rerank_dir"]


def __getattr__(name: str):
    if name in ("Reranker", "RerankSettings", "save_rerank_dir"):
        from towerrec.rerank import reranker

        return getattr(reranker, name)
    if name == "load_lm":
        from towerrec.rerank.lm import load_lm

        return load_lm
    raise AttributeError(f"module 'towerrec.rerank' has no attribute {name!r}")
