"""A tower in an artifact directory: save its weights, encoder config, tokenizer and shape (tower.json), and
rebuild it without the training code (`Tower.encode` is the one encode path)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.torch import load_file as load_torch
from safetensors.torch import save_file as save_torch

from towerrec.artifact.format import (
    TOWER_CONFIG,
    TOWER_META,
    TOWER_WEIGHTS,
    ArtifactError,
    Fields,
    read_json,
    reading,
    reason,
)
from towerrec.data.tokens import count_tokens
from towerrec.model.encode import encode_texts
from towerrec.model.towers import TextTower
from towerrec.utils.io import write_json


@dataclasses.dataclass
class Tower:
    """A rebuilt tower with its tokenizer and input length."""

    module: TextTower
    tokenizer: object
    max_length: int
    meta: dict

    @property
    def dim(self) -> int:
        return self.module.dim

    def encode(self, texts: Sequence[str], batch_size: int = 256, item_idx=None, progress: bool = False) -> np.ndarray:
        return encode_texts(self.module, self.tokenizer, texts, self.max_length, batch_size, item_idx, progress)

    def count_tokens(self, text: str) -> int:
        """Token count without special tokens: the budget measure of `render_user` in training."""
        return count_tokens(self.tokenizer, text)


def save_tower(tower: TextTower, tokenizer, out: Path, max_length: int) -> None:
    out.mkdir(parents=True)
    # cloned to CPU: tensors shared with the other tower (a shared encoder) or tied inside this one are
    # written as separate copies, which safetensors requires; each tower directory stands alone
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tower.state_dict().items()}
    save_torch(state, str(out / TOWER_WEIGHTS))
    tower.encoder.config.save_pretrained(out)  # config.json
    tokenizer.save_pretrained(out)
    meta = {
        "encoder_class": type(tower.encoder).__name__,
        "encoder_has_pooler": getattr(tower.encoder, "pooler", None) is not None,
        "pooling": tower.pooling,
        "projection_dim": None if tower.projection is None else int(tower.projection.out_features),
        "normalize": bool(tower.normalize),
        "dim": int(tower.dim),
        "max_length": int(max_length),
        "id_embedding": None if tower.id_embedding is None else {
            "num_items": len(tower.id_rows), "num_rows": int(tower.id_embedding.num_embeddings)},
    }
    write_json(out / TOWER_META, meta)


def check_tower_files(directory: Path) -> dict:
    """tower.json checked, config.json parsed, the weights' header read (no tensor data): cheap checks run
    when an artifact is loaded, before the tower is rebuilt on first use. Returns tower.json."""
    f = directory / TOWER_META
    meta = read_json(f)
    if not isinstance(meta, dict):
        raise ArtifactError(f"{f}: must hold a JSON object, got {type(meta).__name__}")
    fields = Fields(f, meta)
    fields.type("encoder_has_pooler", bool, "true or false")
    fields.type("normalize", bool, "true or false")
    fields.type("pooling", str, "'mean' or 'cls'")
    if meta["pooling"] not in ("mean", "cls"):  # the modes of towerrec.model.towers.pool
        fields.fail("pooling", "'mean' or 'cls'")
    fields.int("dim", 1)
    fields.int("max_length", 1)
    fields.type("projection_dim", (int, type(None)), "a positive integer or null")
    if meta["projection_dim"] is not None:
        fields.int("projection_dim", 1)
    fields.type("id_embedding", (dict, type(None)), "a mapping {num_items, num_rows} or null")
    if meta["id_embedding"] is not None:
        ids = Fields(f, meta["id_embedding"], "id_embedding.")
        ids.int("num_items", 0)
        ids.int("num_rows", 1)
    config = read_json(directory / TOWER_CONFIG)
    if not isinstance(config, dict):
        raise ArtifactError(f"{directory / TOWER_CONFIG}: must hold a JSON object, got {type(config).__name__}")
    weights = directory / TOWER_WEIGHTS
    with reading(weights, "not a readable safetensors file"), safe_open(str(weights), framework="pt") as header:
        header.keys()
    return meta


def load_tower(directory: Path) -> Tower:
    """Rebuild a tower from its directory: HF config -> encoder, TextTower, then the safetensors weights.
    Every failure is an ArtifactError naming the file (or the directory, for the encoder and tokenizer)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    meta = check_tower_files(directory)
    with reading(directory, "cannot rebuild the tower from config.json and tower.json"):
        config = AutoConfig.from_pretrained(directory, local_files_only=True)
        encoder = AutoModel.from_config(config)
        if not meta["encoder_has_pooler"] and getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None  # trained without one (random_init encoders)
        counts = None
        if meta["id_embedding"]:  # only the shapes matter here: the state dict brings id_rows and the weights
            counts = np.zeros(meta["id_embedding"]["num_items"])
            counts[: meta["id_embedding"]["num_rows"] - 1] = 1
        tower = TextTower(encoder, meta["pooling"], meta["projection_dim"], meta["normalize"], counts)
    with reading(directory / TOWER_WEIGHTS, "not a readable safetensors file"):
        state = load_torch(str(directory / TOWER_WEIGHTS))
    try:
        tower.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError) as e:
        raise ArtifactError(f"{directory / TOWER_WEIGHTS}: weights do not fit the tower described by "
                            f"tower.json ({reason(e)})") from e
    tower.eval()
    with reading(directory, "cannot rebuild the tower's tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    return Tower(tower, tokenizer, int(meta["max_length"]), meta)
