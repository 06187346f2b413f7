"""A tower in an artifact directory: save its weights, encoder config, tokenizer and shape (tower.json), and
rebuild it without the training code. `load_tower` dispatches on tower.json's "kind":

    (absent)        Tower: a text tower (two-tower artifacts); `Tower.encode(texts)` is the one encode path
    sequence        SequenceTower: the sequence user tower; `embed_histories(histories, item_vectors)` reads
                    right-aligned windows of stored product vectors through the causal transformer
    sequence_items  SequenceItemTower: a sequence artifact's product text path, `encode(texts)` = encoder ->
                    pooling -> adapter [-> mlp] -> L2 norm (no id embedding); none for id-only models
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file as load_torch
from safetensors.torch import save_file as save_torch
from torch import nn

from towerrec.artifact.format import (
    SEQUENCE_ITEMS,
    SEQUENCE_USER,
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
from towerrec.data.windows import right_aligned, trim_padding
from towerrec.model.encode import encode_texts
from towerrec.model.sequence import ADAPTERS, ItemEncoder, SequenceUserTower, TextItemTower
from towerrec.model.towers import TextTower
from towerrec.utils.io import write_json

POOLINGS = ("mean", "cls")  # the modes of towerrec.model.towers.pool
QUERY_SLOT = -2  # a window slot holding a free-text query's vector (-1: padding, >= 0: a stored product)


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


@dataclasses.dataclass
class SequenceTower:
    """A sequence artifact's user tower: a history is a right-aligned window of the newest `max_len` stored
    product vectors (padding on the left), read by the causal transformer; its newest slot is the user."""

    module: SequenceUserTower
    meta: dict
    directory: Path

    @property
    def dim(self) -> int:
        return int(self.module.dim)

    @property
    def max_len(self) -> int:
        return int(self.module.max_len)

    def windows(self, histories, queries: Sequence[bool] | None = None) -> np.ndarray:
        """(B, L) int64 windows: a (B, L) array with L <= max_len and no query is taken as ready-made windows
        (negative = padding); else each history is a position list, oldest first (negative positions, i.e.
        unknown, skipped), and its newest max_len items fill a window of max_len. A row with a query keeps its
        newest max_len - 1 items and puts the query (QUERY_SLOT) in the newest slot."""
        if (isinstance(histories, np.ndarray) and histories.ndim == 2 and histories.shape[1] <= self.max_len
                and not (queries is not None and any(queries))):
            return np.where(histories < 0, -1, histories).astype(np.int64)
        rows = []
        for i, h in enumerate(histories):
            h = np.asarray(h, dtype=np.int64).reshape(-1)
            h = h[h >= 0]
            if queries is not None and queries[i]:
                h = np.append(h[max(0, len(h) - (self.max_len - 1)):] if self.max_len > 1 else h[:0], QUERY_SLOT)
            rows.append(h[len(h) - self.max_len:] if len(h) > self.max_len else h)
        return right_aligned(rows, self.max_len)

    @torch.inference_mode()
    def embed_histories(self, histories, item_vectors: np.ndarray, query_vectors=None,
                        batch_size: int = 256) -> np.ndarray:
        """(B, D) float32 unit user vectors of histories (B position lists, or (B, L) windows) over the stored
        product vectors `item_vectors` (N, D). `query_vectors`: None, or one (D,) vector or None per row (a
        free-text query, the newest element). Batches of `batch_size` rows: the datamodule's eval batch size
        reproduces the in-training vectors exactly."""
        n = len(histories)
        queries = None
        if query_vectors is not None:
            if len(query_vectors) != n:
                raise ValueError(f"{len(query_vectors)} query vectors for {n} histories")
            queries = [q is not None for q in query_vectors]
        windows = self.windows(histories, queries)  # (B, L)
        table = torch.from_numpy(np.ascontiguousarray(item_vectors, dtype=np.float32))  # (N, D)
        if table.ndim != 2 or table.shape[1] != self.dim:
            raise ValueError(f"product vectors must have shape (N, {self.dim}), got {tuple(table.shape)}")
        if windows.size and windows.max() >= len(table):
            raise ValueError(f"history position {int(windows.max())} is outside the {len(table)} stored products")
        self.module.eval()
        out = np.empty((n, self.dim), dtype=np.float32)
        for start in range(0, n, batch_size):
            w = torch.from_numpy(trim_padding(windows[start : start + batch_size])[0])  # (b, L'): no all-pad slots
            x = table[w.clamp_min(0)]  # (b, L', D)
            slots = w == QUERY_SLOT
            if slots.any():
                rows = [i for i in range(start, min(start + batch_size, n)) if queries[i]]
                q = np.stack([np.asarray(query_vectors[i], dtype=np.float32).reshape(-1) for i in rows])
                x[slots] = torch.from_numpy(q)  # one query slot per such row, in row order
            out[start : start + len(w)] = self.module.user(x, w != -1).numpy()
        return out


@dataclasses.dataclass
class SequenceItemTower:
    """A sequence artifact's product text path (`module` None for an id-only model: no text path)."""

    module: TextItemTower | None
    tokenizer: object | None
    max_length: int | None
    meta: dict
    directory: Path

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def has_text(self) -> bool:
        return self.module is not None

    def require_text(self, what: str) -> None:
        """ArtifactError (one sentence) when there is no text path to `what` ("embed a free-text query")."""
        if not self.has_text:
            raise ArtifactError(f"{self.directory}: this artifact's model is id-only (model.text=false), so its "
                                f"product tower has no text path and cannot {what}; export a sequence model with "
                                "text (model=sequence or model=sequence_ids) for that")

    def encode(self, texts: Sequence[str], batch_size: int = 256, item_idx=None, progress: bool = False) -> np.ndarray:
        """(B, D) unit vectors of product or query texts; `item_idx` is ignored (no id embedding: unseen)."""
        self.require_text("embed products or free text")
        return encode_texts(self.module, self.tokenizer, texts, self.max_length, batch_size, None, progress)

    def count_tokens(self, text: str) -> int:
        self.require_text("count tokens")
        return count_tokens(self.tokenizer, text)


def _cpu_state(module: nn.Module) -> dict:
    # cloned to CPU: tensors shared with the other tower (a shared encoder) or tied inside this one are
    # written as separate copies, which safetensors requires; each tower directory stands alone
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


def save_sequence_user_tower(tower: SequenceUserTower, out: Path) -> None:
    """user_tower/ of a sequence artifact: tower.json (kind sequence + the shape) and the weights."""
    out.mkdir(parents=True)
    save_torch(_cpu_state(tower), str(out / TOWER_WEIGHTS))
    write_json(out / TOWER_META, {"kind": SEQUENCE_USER, **tower.shape()})


def save_sequence_item_tower(items: ItemEncoder, encoder: nn.Module | None, tokenizer, out: Path, *,
                             pooling: str | None, max_length: int | None) -> None:
    """item_tower/ of a sequence artifact: with text, the text encoder (frozen or fine-tuned; config.json,
    tokenizer) and the adapter [and mlp] weights in one model.safetensors; id-only (no adapter), tower.json
    alone."""
    out.mkdir(parents=True)
    meta = {"kind": SEQUENCE_ITEMS, "text": items.adapter is not None, "dim": int(items.dim),
            "item_ids": items.ids is not None, "pooling": None, "max_length": None, "adapter": None}
    if items.adapter is not None:
        if encoder is None or tokenizer is None:
            raise ValueError("a sequence product tower with text needs the text encoder and tokenizer that "
                             "computed its text vectors")
        tower = TextItemTower.from_items(encoder, pooling, items)
        save_torch(_cpu_state(tower), str(out / TOWER_WEIGHTS))
        encoder.config.save_pretrained(out)  # config.json
        tokenizer.save_pretrained(out)
        meta.update(pooling=pooling, max_length=int(max_length), adapter="mlp" if items.mlp is not None else "linear",
                    hidden=int(encoder.config.hidden_size), encoder_class=type(encoder).__name__,
                    encoder_has_pooler=getattr(encoder, "pooler", None) is not None)
    write_json(out / TOWER_META, meta)


def save_tower(tower: TextTower, tokenizer, out: Path, max_length: int) -> None:
    out.mkdir(parents=True)
    save_torch(_cpu_state(tower), str(out / TOWER_WEIGHTS))
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


TOWER_KINDS = (SEQUENCE_USER, SEQUENCE_ITEMS)


def tower_kind(meta: dict) -> str | None:
    """tower.json's kind: None for a text tower (two-tower artifacts), else one of TOWER_KINDS."""
    return meta.get("kind")


def _pooling(fields: Fields) -> None:
    fields.type("pooling", str, "'mean' or 'cls'")
    if fields.obj["pooling"] not in POOLINGS:
        fields.fail("pooling", "'mean' or 'cls'")


def _check_text_meta(fields: Fields) -> None:
    fields.type("encoder_has_pooler", bool, "true or false")
    fields.type("normalize", bool, "true or false")
    _pooling(fields)
    fields.int("dim", 1)
    fields.int("max_length", 1)
    fields.type("projection_dim", (int, type(None)), "a positive integer or null")
    if fields.obj["projection_dim"] is not None:
        fields.int("projection_dim", 1)
    fields.type("id_embedding", (dict, type(None)), "a mapping {num_items, num_rows} or null")
    if fields.obj["id_embedding"] is not None:
        ids = Fields(fields.f, fields.obj["id_embedding"], "id_embedding.")
        ids.int("num_items", 0)
        ids.int("num_rows", 1)


def _check_sequence_meta(fields: Fields) -> None:
    for key in ("dim", "max_len", "layers", "heads", "ff_mult"):
        fields.int(key, 1)
    fields.type("dropout", (int, float), "a number")
    if fields.obj["dim"] % fields.obj["heads"]:
        fields.fail("heads", f"a divisor of dim {fields.obj['dim']}")


def _check_sequence_items_meta(fields: Fields) -> None:
    fields.type("text", bool, "true or false")
    fields.int("dim", 1)
    if fields.obj["text"]:
        _pooling(fields)
        fields.int("max_length", 1)
        fields.type("adapter", str, f"one of {ADAPTERS}")
        if fields.obj["adapter"] not in ADAPTERS:
            fields.fail("adapter", f"one of {ADAPTERS}")
        fields.type("encoder_has_pooler", bool, "true or false")


def tower_files(meta: dict) -> tuple[str, ...]:
    """The files a tower directory needs besides tower.json (the tokenizer's are listed in the manifest)."""
    kind = tower_kind(meta)
    if kind == SEQUENCE_USER:
        return (TOWER_WEIGHTS,)
    if kind == SEQUENCE_ITEMS and not meta.get("text"):
        return ()
    return (TOWER_CONFIG, TOWER_WEIGHTS)


def check_tower_files(directory: Path) -> dict:
    """tower.json checked, config.json parsed, the weights' header read (no tensor data): cheap checks run
    when an artifact is loaded, before the tower is rebuilt on first use. Returns tower.json."""
    f = directory / TOWER_META
    meta = read_json(f)
    if not isinstance(meta, dict):
        raise ArtifactError(f"{f}: must hold a JSON object, got {type(meta).__name__}")
    fields = Fields(f, meta)
    kind = tower_kind(meta)
    if kind is None:
        _check_text_meta(fields)
    elif kind == SEQUENCE_USER:
        _check_sequence_meta(fields)
    elif kind == SEQUENCE_ITEMS:
        _check_sequence_items_meta(fields)
    else:
        fields.fail("kind", f"one of {', '.join(map(repr, TOWER_KINDS))} (or absent: a text tower)")
    needs = tower_files(meta)
    if TOWER_CONFIG in needs:
        config = read_json(directory / TOWER_CONFIG)
        if not isinstance(config, dict):
            raise ArtifactError(f"{directory / TOWER_CONFIG}: must hold a JSON object, got {type(config).__name__}")
    if TOWER_WEIGHTS in needs:
        weights = directory / TOWER_WEIGHTS
        with reading(weights, "not a readable safetensors file"), safe_open(str(weights), framework="pt") as header:
            header.keys()
    return meta


def _encoder_from_config(directory: Path, meta: dict):
    """The HF encoder described by config.json (random weights: the state dict brings the trained ones)."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(directory, local_files_only=True)
    encoder = AutoModel.from_config(config)
    if not meta["encoder_has_pooler"] and getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None  # trained without one (random_init encoders)
    return encoder


def _load_weights(directory: Path, module: nn.Module) -> None:
    with reading(directory / TOWER_WEIGHTS, "not a readable safetensors file"):
        state = load_torch(str(directory / TOWER_WEIGHTS))
    try:
        module.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError) as e:
        raise ArtifactError(f"{directory / TOWER_WEIGHTS}: weights do not fit the tower described by "
                            f"tower.json ({reason(e)})") from e
    module.eval()


def _tokenizer(directory: Path):
    from transformers import AutoTokenizer

    with reading(directory, "cannot rebuild the tower's tokenizer"):
        return AutoTokenizer.from_pretrained(directory, local_files_only=True)


def load_tower(directory: Path) -> Tower | SequenceTower | SequenceItemTower:
    """Rebuild a tower from its directory, by tower.json's kind (absent: a text tower: HF config -> encoder,
    TextTower, then the safetensors weights). Every failure is an ArtifactError naming the file (or the
    directory, for the encoder and tokenizer)."""
    meta = check_tower_files(directory)
    kind = tower_kind(meta)
    if kind == SEQUENCE_USER:
        with reading(directory, "cannot rebuild the sequence user tower from tower.json"):
            module = SequenceUserTower(meta["dim"], meta["max_len"], layers=meta["layers"], heads=meta["heads"],
                                       dropout=float(meta["dropout"]), ff_mult=meta["ff_mult"])
        _load_weights(directory, module)
        return SequenceTower(module, meta, directory)
    if kind == SEQUENCE_ITEMS:
        if not meta["text"]:
            return SequenceItemTower(None, None, None, meta, directory)
        with reading(directory, "cannot rebuild the tower from config.json and tower.json"):
            module = TextItemTower(_encoder_from_config(directory, meta), meta["pooling"], meta["dim"],
                                   meta["adapter"])
        _load_weights(directory, module)
        return SequenceItemTower(module, _tokenizer(directory), int(meta["max_length"]), meta, directory)
    with reading(directory, "cannot rebuild the tower from config.json and tower.json"):
        encoder = _encoder_from_config(directory, meta)
        counts = None
        if meta["id_embedding"]:  # only the shapes matter here: the state dict brings id_rows and the weights
            counts = np.zeros(meta["id_embedding"]["num_items"])
            counts[: meta["id_embedding"]["num_rows"] - 1] = 1
        tower = TextTower(encoder, meta["pooling"], meta["projection_dim"], meta["normalize"], counts)
    _load_weights(directory, tower)
    return Tower(tower, _tokenizer(directory), int(meta["max_length"]), meta)
