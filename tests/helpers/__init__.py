"""Builders and doubles shared by the tests (servers, fake rerankers, crash callbacks)."""
