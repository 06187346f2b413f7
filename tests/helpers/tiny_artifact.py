"""The tiny artifact the artifact tests build: a random-init BERT's towers over the tiny synthetic world."""

from __future__ import annotations

from pathlib import Path

from towerrec.artifact.export import export_artifact
from towerrec.data.text import TextConfig

ROOT = Path(__file__).resolve().parents[2]
TINY_BERT = {"vocab_size": 300, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 32, "max_position_embeddings": 128}
TEXT = TextConfig(user_max_items=3, user_max_tokens=48)
LENGTHS = {"item_max_length": 32, "user_max_length": 48}


def do_export(out, model, tokenizer, split, index_cfg=None, **kwargs) -> Path:
    train_cfg = {"model": {"encoder": {"random_init": TINY_BERT}}, "data": {"user_id_secret": "s3cret-key"}}
    return export_artifact(out, model, tokenizer, split, TEXT, **LENGTHS, index_cfg=index_cfg, train_cfg=train_cfg,
                           metrics={"test/recall@10": 0.25}, batch_size=32, progress=False, **kwargs)
