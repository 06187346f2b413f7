"""Build untrained towers from the plain values of the `model` config: the text TwoTower, the sequence towers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from towerrec.model.encoders import load_encoder
from towerrec.model.sequence import ItemEncoder, SequenceRecommender, SequenceUserTower
from towerrec.model.towers import TwoTower


def build_two_tower(params: Mapping, corpus: Sequence[str], item_counts: np.ndarray | None = None):
    """(TwoTower, tokenizer) with weights as `params["encoder"]` says (pretrained or random init).

    `corpus`: product texts (a locally built tokenizer is trained on them for random-init encoders);
    `item_counts` (N,): training counts, needed when `item_id_embedding` is on."""
    encoder, tokenizer = load_encoder(params["encoder"], corpus=corpus)
    projection_dim = params.get("projection_dim") or (encoder.config.hidden_size if params.get("projection") else None)
    model = TwoTower(encoder, pooling=params["pooling"], projection_dim=projection_dim,
                     shared_encoder=params["shared_encoder"], freeze_layers=params["freeze_layers"],
                     dropout=params.get("dropout"),
                     item_id_counts=item_counts if params.get("item_id_embedding") else None)
    return model, tokenizer


def build_sequence(params: Mapping, text_vectors: np.ndarray | None, num_items: int,
                   item_counts: np.ndarray | None = None, text_module=None) -> SequenceRecommender:
    """The sequence towers; `text_vectors` (N, H) product text vectors, or None when `params["text"]` is false
    (id-only); `text_module`: the TrainableText whose layers train with the towers (None: frozen vectors)."""
    dim = int(params["dim"])
    items = ItemEncoder(text_vectors if params.get("text", True) else None, dim, num_items=num_items,
                        adapter=params.get("adapter", "linear"), item_ids=bool(params.get("item_ids")),
                        item_counts=item_counts, text_module=text_module)
    users = SequenceUserTower(dim, int(params["max_len"]), layers=int(params["layers"]), heads=int(params["heads"]),
                              dropout=float(params["dropout"]))
    return SequenceRecommender(items, users)
