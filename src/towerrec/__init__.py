"""towerrec: two-tower text retrieval for e-commerce, with FAISS export and LM reranking."""

__version__ = "0.1.0"
