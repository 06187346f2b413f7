"""A tower in an artifact directory: save its weights, encoder config, tokenizer and shape (tower.json), and
rebuild it without the training code (`Tower.encode` is the one encode path)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from safetensors.torch import load_file as load_torch
from safetensors.torch import save_file as save_torch

from towerrec.artifact.format import TOWER_META, TOWER_WEIGHTS, ArtifactError, read_json
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
            "num_items": int(len(tower.id_rows)), "num_rows": int(tower.id_embedding.num_embeddings)},
    }
    write_json(out / TOWER_META, meta)


def load_tower(directory: Path) -> Tower:
    """Rebuild a tower from its directory: HF config -> encoder, TextTower, then the safetensors weights."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    meta = read_json(directory / TOWER_META)
    config = AutoConfig.from_pretrained(directory, local_files_only=True)
    encoder = AutoModel.from_config(config)
    if not meta["encoder_has_pooler"] and getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None  # trained without one (random_init encoders)
    counts = None
    if meta["id_embedding"]:  # only the shapes matter here: the state dict brings id_rows and the weights
        counts = np.zeros(meta["id_embedding"]["num_items"])
        counts[: meta["id_embedding"]["num_rows"] - 1] = 1
    tower = TextTower(encoder, meta["pooling"], meta["projection_dim"], meta["normalize"], counts)
    try:
        tower.load_state_dict(load_torch(str(directory / TOWER_WEIGHTS)), strict=True)
    except (RuntimeError, KeyError) as e:
        raise ArtifactError(f"{directory / TOWER_WEIGHTS}: weights do not fit the tower described by "
                            f"tower.json: {e}") from e
    tower.eval()
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    return Tower(tower, tokenizer, int(meta["max_length"]), meta)

