"""Retrieval over an exported artifact: the Retriever (search with exclusions and filter masks) and the
artifact as a harness scorer."""

from towerrec.retrieval.evaluate import ArtifactScorer, evaluate_artifact
from towerrec.retrieval.retriever import Retriever

__all__ = ["ArtifactScorer", "Retriever", "evaluate_artifact"]
