"""The sequence towers' product text encoder, by `model.text_encoder.train`:

    frozen      text vectors computed once and cached (towerrec.model.text_vectors); nothing here trains
    top_layers  the top N encoder layers train. The token states entering layer L-N (the output of the
                embeddings and the frozen lower layers) and each text's token count are computed once and
                cached on disk (`<cache_dir>/lowerstates-<key>.npz`, keyed like the text vectors, plus N and the
                stored dtype); a trainable copy of the top N layers + pooling reads them
    full        every encoder layer trains over the tokenized texts

`TrainableText(idx)` gives the pooled (U, H) text vectors of catalog positions `idx` with grad (a batch's distinct
items); `TrainableText.all()` the whole catalog's without grad (the table refreshed each epoch, as in Recformer's
first stage). `export_encoder` puts the trained layers back into a whole encoder: what an exported artifact
embeds products added later and free-text queries with.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from towerrec.data.tokens import pad_batch, tokenize
from towerrec.model.text_vectors import cache_key, compute_text_vectors, load_text_encoder, text_vectors
from towerrec.model.towers import layer_stack, pool
from towerrec.utils.io import save_arrays

log = logging.getLogger(__name__)

TRAIN_MODES = ("frozen", "top_layers", "full")
CACHE_DTYPES = {"float16": np.float16, "float32": np.float32}
KEY = "model.text_encoder"


@dataclasses.dataclass(frozen=True)
class TextEncoderSettings:
    """`model.text_encoder`: how the product text encoder runs and trains (validated by `from_dict`)."""

    train: str = "frozen"            # one of TRAIN_MODES
    top_layers: int = 1              # top_layers: how many of the encoder's top layers train
    lr: float | None = None          # learning rate of the encoder's trained layers (None: the optimizer's)
    cache_dtype: str = "float16"     # top_layers: how the cached lower-layer token states are stored
    pooling: str = "mean"
    max_length: int = 64
    batch_size: int = 128            # texts per encoder forward pass (catalog refresh, and chunks with grad)

    @classmethod
    def from_dict(cls, d: Mapping | None) -> TextEncoderSettings:
        d = dict(d or {})
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown {KEY} option(s) {sorted(unknown)}")
        s = cls(**d)
        if s.train not in TRAIN_MODES:
            raise ValueError(f"{KEY}.train must be one of {', '.join(TRAIN_MODES)}, got {s.train!r}")
        for name in ("top_layers", "max_length", "batch_size"):
            value = getattr(s, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{KEY}.{name} must be a positive integer, got {value!r}")
        if s.lr is not None and (isinstance(s.lr, bool) or not isinstance(s.lr, (int, float)) or not s.lr > 0):
            raise ValueError(f"{KEY}.lr must be a positive number or null, got {s.lr!r}")
        if s.cache_dtype not in CACHE_DTYPES:
            raise ValueError(f"{KEY}.cache_dtype must be one of {', '.join(CACHE_DTYPES)}, got {s.cache_dtype!r}")
        if s.pooling not in ("mean", "cls"):
            raise ValueError(f"{KEY}.pooling must be 'mean' or 'cls', got {s.pooling!r}")
        return s

    @property
    def trains(self) -> bool:
        return self.train != "frozen"


def stack_of(encoder: nn.Module) -> tuple[nn.Module, str]:
    """(parent, attribute) of the encoder's layer stack, or a ValueError naming the setting."""
    found = layer_stack(encoder)
    if found is None:
        raise ValueError(f"{KEY}.train=top_layers cannot find the transformer layers of {type(encoder).__name__}; "
                         f"use {KEY}.train=full")
    return found


def first_trained_layer(encoder: nn.Module, top_layers: int) -> int:
    """L - N: the index of the lowest trained layer, with `top_layers` N checked against the depth L."""
    depth = len(getattr(*stack_of(encoder)))
    if not 1 <= top_layers <= depth:
        raise ValueError(f"{KEY}.top_layers must be from 1 to the encoder's depth {depth}, got {top_layers}")
    return depth - top_layers


@contextlib.contextmanager
def lower_layers_only(encoder: nn.Module, first: int):
    """The encoder with its layer stack cut to the layers below `first` (restored after)."""
    parent, name = stack_of(encoder)
    layers = getattr(parent, name)
    setattr(parent, name, nn.ModuleList(layers[:first]))
    try:
        yield encoder
    finally:
        setattr(parent, name, layers)


def _batches(lengths: np.ndarray, idx: np.ndarray, batch_size: int):
    """(positions into idx, idx rows) per batch of similar length (stable sort by token count)."""
    order = np.argsort(lengths[idx], kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size], idx[order[start : start + batch_size]]


@torch.no_grad()
def lower_states(encoder: nn.Module, tokenizer, texts: Sequence[str], max_length: int, first: int, *,
                 batch_size: int = 128, dtype=np.float16, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """((N, T, H) token states entering layer `first`, zero past each text's end; (N,) int32 token counts), T the
    longest text's count: the embeddings and the `first` lowest layers of `encoder`, in eval mode, on its device."""
    tokens = tokenize(tokenizer, list(texts), max_length)
    lengths = np.array([len(t) for t in tokens], dtype=np.int32)
    hidden = encoder.config.hidden_size
    out = np.zeros((len(tokens), int(lengths.max(initial=1)), hidden), dtype=dtype)  # (N, T, H)
    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    batches = list(_batches(lengths, np.arange(len(tokens)), batch_size))
    try:
        with lower_layers_only(encoder, first):
            for _, rows in tqdm(batches, desc="lower-layer states", disable=not progress, leave=False):
                batch = pad_batch([tokens[i] for i in rows], tokenizer.pad_token_id or 0)
                states = encoder(input_ids=batch["input_ids"].to(device),
                                 attention_mask=batch["attention_mask"].to(device)).last_hidden_state  # (b, t, H)
                states = states.float().cpu().numpy()
                for j, i in enumerate(rows):
                    out[i, : lengths[i]] = states[j, : lengths[i]]
    finally:
        encoder.train(was_training)
    return out, lengths


def cached_lower_states(encoder: nn.Module, tokenizer, texts: Sequence[str], settings: TextEncoderSettings, *,
                        encoder_cfg: Mapping, cache_dir: str | os.PathLike | None = None, seed: int = 0,
                        progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """`lower_states` for `settings.top_layers`, from `<cache_dir>/lowerstates-<key>.npz` when an earlier run
    computed them (the key: encoder, pooling, max length, texts, seed for random-init encoders, N, dtype)."""
    first = first_trained_layer(encoder, settings.top_layers)
    key = cache_key(encoder_cfg, settings.pooling, settings.max_length, texts, seed,
                    extra={"top_layers": settings.top_layers, "dtype": settings.cache_dtype})
    path = Path(cache_dir) / f"lowerstates-{key}.npz" if cache_dir else None
    hidden = encoder.config.hidden_size
    if path is not None and path.is_file():
        with np.load(path, allow_pickle=False) as z:
            states, lengths = z["states"], z["lengths"]
        if states.shape[0] == len(texts) == len(lengths) and states.shape[2] == hidden:
            log.info("lower-layer token states from %s", path)
            return states, lengths
        log.warning("%s has shape %s, expected (%d, T, %d): recomputing", path, states.shape, len(texts), hidden)
    states, lengths = lower_states(encoder, tokenizer, texts, settings.max_length, first,
                                   batch_size=settings.batch_size, dtype=CACHE_DTYPES[settings.cache_dtype],
                                   progress=progress)
    if path is not None:
        save_arrays(path, {"states": states, "lengths": lengths})
    return states, lengths


class TrainableText(nn.Module):
    """The trained part of the product text encoder (`top_layers`: copies of the top N layers; `full`: the
    whole encoder) + pooling: catalog positions -> pooled (U, H) text vectors.

    Its inputs are attached after construction, outside the state dict (a checkpoint holds weights only):
    `attach_states` (top_layers: the cached lower-layer states) or `attach_tokens` (full)."""

    def __init__(self, encoder: nn.Module, settings: TextEncoderSettings):
        super().__init__()
        if not settings.trains:
            raise ValueError(f"{KEY}.train=frozen trains no encoder layers")
        self.mode, self.pooling, self.batch_size = settings.train, settings.pooling, settings.batch_size
        self.hidden = int(encoder.config.hidden_size)
        self.config = encoder.config  # what the attention mask is built for
        self.encoder: nn.Module | None = None
        self.layers: nn.ModuleList | None = None
        if self.mode == "full":
            self.encoder = encoder
        else:
            self.first = first_trained_layer(encoder, settings.top_layers)
            self.layers = nn.ModuleList(copy.deepcopy(layer) for layer in getattr(*stack_of(encoder))[self.first:])
        self._lengths: np.ndarray | None = None  # (N,) token counts
        self._states: torch.Tensor | None = None  # top_layers: (N, T, H) on the CPU
        self._tokens: list[np.ndarray] | None = None  # full
        self._pad_id = 0
        self.train()  # encoders load in eval mode; Lightning keeps whatever mode it finds (dropout off)

    def attach_states(self, states: np.ndarray, lengths: np.ndarray) -> TrainableText:
        if self.mode != "top_layers":
            raise ValueError("lower-layer states are the inputs of model.text_encoder.train=top_layers")
        if states.ndim != 3 or states.shape[2] != self.hidden or len(states) != len(lengths):
            raise ValueError(f"lower-layer states of shape {states.shape} for {len(lengths)} texts and "
                             f"{self.hidden}-dim layers")
        self._states, self._lengths = torch.from_numpy(np.ascontiguousarray(states)), np.asarray(lengths)
        return self

    def attach_tokens(self, tokens: Sequence[np.ndarray], pad_id: int) -> TrainableText:
        if self.mode != "full":
            raise ValueError("token ids are the inputs of model.text_encoder.train=full")
        self._tokens, self._pad_id = list(tokens), int(pad_id)
        self._lengths = np.array([len(t) for t in self._tokens], dtype=np.int32)
        return self

    @property
    def num_items(self) -> int:
        if self._lengths is None:
            raise RuntimeError("TrainableText has no inputs: call attach_states or attach_tokens first")
        return len(self._lengths)

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _chunk(self, rows: np.ndarray) -> torch.Tensor:
        """(b,) catalog positions of similar length -> (b, H) pooled text vectors."""
        device = self._device()
        lengths = torch.from_numpy(self._lengths[rows].astype(np.int64))  # (b,)
        if self.mode == "full":
            batch = pad_batch([self._tokens[i] for i in rows], self._pad_id)
            mask = batch["attention_mask"].to(device)  # (b, t)
            hidden = self.encoder(input_ids=batch["input_ids"].to(device), attention_mask=mask).last_hidden_state
            return pool(hidden, mask, self.pooling)  # (b, H)
        from transformers.masking_utils import create_bidirectional_mask

        t = int(lengths.max())
        hidden = self._states[torch.from_numpy(rows), :t].to(device, torch.float32)  # (b, t, H)
        mask = (torch.arange(t)[None] < lengths[:, None]).long().to(device)  # (b, t)
        attention = create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=mask)
        for layer in self.layers:
            hidden = layer(hidden, attention)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden  # older transformers return tuples
        return pool(hidden, mask, self.pooling)  # (b, H)

    def _embed(self, idx: np.ndarray, progress: bool = False) -> torch.Tensor:
        """(U,) catalog positions -> (U, H), in batches of similar length, rows in the order of `idx`."""
        parts, where = [], []
        batches = list(_batches(self._lengths, idx, self.batch_size))
        for pos, rows in tqdm(batches, desc="catalog text vectors", disable=not progress, leave=False):
            parts.append(self._chunk(rows))
            where.append(pos)
        out = torch.cat(parts)  # (U, H) in batch order
        order = torch.from_numpy(np.concatenate(where)).to(out.device)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order), device=out.device)
        return out[inverse]

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """(U,) catalog positions -> (U, H) pooled text vectors with grad through the trained layers."""
        return self._embed(idx.detach().cpu().numpy())

    @torch.no_grad()
    def all(self, progress: bool = False) -> torch.Tensor:
        """(N, H) the whole catalog's text vectors, in eval mode (no dropout), without grad."""
        was_training = self.training
        self.eval()
        try:
            return self._embed(np.arange(self.num_items), progress)
        finally:
            self.train(was_training)

    def export_encoder(self, base: nn.Module | None) -> nn.Module:
        """The whole fine-tuned encoder (eval mode, on the CPU): `full`, a CPU copy of the trained encoder;
        `top_layers`, a copy of `base` (the encoder whose lower layers computed the cached states) with the
        trained top layers in place of its own."""
        if self.mode == "full":
            return copy.deepcopy(self.encoder).cpu().eval()
        if base is None:
            raise ValueError("exporting top_layers needs the encoder whose lower layers computed the cached states")
        encoder = copy.deepcopy(base).cpu()
        for target, trained in zip(getattr(*stack_of(encoder))[self.first:], self.layers):
            target.load_state_dict(trained.state_dict())
        return encoder.eval()


@dataclasses.dataclass
class ProductText:
    """What the sequence towers' product tower reads text with (`load_product_text`)."""

    vectors: np.ndarray | None  # (N, H) initial text vectors (None when built without inputs)
    encoder: nn.Module  # as loaded (top_layers: untrained, its lower layers computed the cache; full: trains in place)
    tokenizer: object
    trainable: TrainableText | None  # None for train=frozen


def load_product_text(encoder_cfg: Mapping, texts: Sequence[str], settings: TextEncoderSettings, *,
                      cache_dir: str | os.PathLike | None = None, seed: int = 0, progress: bool = True,
                      with_inputs: bool = True) -> ProductText:
    """The text encoder of the product tower and its initial text vectors. frozen: the cached text vectors;
    top_layers: the cached lower-layer states, and the vectors through the (still untrained) top layers;
    full: the cached text vectors (the whole encoder's outputs) and the tokenized texts. `with_inputs=False`
    (rebuilding a checkpoint, which holds the vectors): no vectors, states or tokens are computed."""
    if with_inputs and settings.train in ("frozen", "full"):
        vectors, encoder, tokenizer = text_vectors(encoder_cfg, texts, max_length=settings.max_length,
                                                   pooling=settings.pooling, batch_size=settings.batch_size,
                                                   cache_dir=cache_dir, seed=seed, progress=progress)
    else:
        (encoder, tokenizer), vectors = load_text_encoder(encoder_cfg, texts, seed), None
    if not settings.trains:
        return ProductText(vectors, encoder, tokenizer, None)
    trainable = TrainableText(encoder, settings)
    if with_inputs and settings.train == "full":
        trainable.attach_tokens(tokenize(tokenizer, list(texts), settings.max_length), tokenizer.pad_token_id or 0)
    elif with_inputs:
        states, lengths = cached_lower_states(encoder, tokenizer, texts, settings, encoder_cfg=encoder_cfg,
                                              cache_dir=cache_dir, seed=seed, progress=progress)
        trainable.attach_states(states, lengths)
        check_split(trainable, encoder, tokenizer, texts, settings)
        vectors = trainable.all(progress).numpy()
    return ProductText(vectors, encoder, tokenizer, trainable)


PROBE_TEXTS = 8


def same_vectors(got: np.ndarray, expected: np.ndarray, settings: TextEncoderSettings) -> bool:
    """Whether text vectors agree to the precision the settings compute them with: 1e-3 of their scale, 2e-2 when
    train=top_layers reads float16 lower-layer states (which round to ~5e-4 of their size)."""
    tol = 2e-2 if settings.train == "top_layers" and settings.cache_dtype == "float16" else 1e-3
    return bool(np.allclose(got, expected, rtol=tol, atol=tol * max(1.0, float(np.abs(expected).max()))))


def check_split(trainable: TrainableText, encoder: nn.Module, tokenizer, texts: Sequence[str],
                settings: TextEncoderSettings) -> None:
    """Refuse (ValueError) an encoder whose forward pass is not its embeddings and layer stack alone (a final
    norm, say), which the cached lower states + top layers would not reproduce: checked on a few texts."""
    rows = np.arange(min(PROBE_TEXTS, len(texts)))
    expected = compute_text_vectors(encoder, tokenizer, [texts[i] for i in rows], settings.max_length,
                                    settings.pooling, progress=False)  # (P, H)
    was_training = trainable.training
    trainable.eval()
    with torch.no_grad():
        got = trainable._embed(rows).float().cpu().numpy()
    trainable.train(was_training)
    if not same_vectors(got, expected, settings):
        raise ValueError(f"{KEY}.train=top_layers: the cached lower-layer states through the top layers do not "
                         f"reproduce {type(encoder).__name__}'s own forward pass; use {KEY}.train=full")
