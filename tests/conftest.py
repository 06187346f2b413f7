"""Shared fixtures: a tiny hand-built dataset, a tiny random-init BERT encoder, and `compose_cfg` (the real
Hydra config of `python train.py`, composed for a run directory under tmp_path).

The dataset (item index in brackets):
    [0] sku-a  Trail running shoe     Stridex     Sports > Running > Shoes   $89.50   color blue, material mesh
    [1] sku-b  Running socks          Stridex     Sports > Running           $12.00   (no attributes)
    [2] sku-c  Espresso machine       Brewmaster  Home > Kitchen > Coffee    $249.99  color silver
    [3] sku-d  Coffee grinder         (no brand)  Home > Kitchen > Coffee    (no price) color black
    [4] sku-e  Paperback novel        Inkwell     Books                      $9.99    (no attributes)
    [5] sku-f  Reading lamp           Lumo        Home > Lighting            $34.00   color white
    [6] sku-g  Yoga mat               Stridex     Sports > Fitness           $25.00   color green, material rubber
    [7] sku-h  Water bottle           (none)      (none)                     (none)   (none)

Events (timestamps), time-ordered sequences and their leave-last-out parts:
    u_ann: a@100 b@200 c@300 d@400              -> [0, 1, 2, 3]     train [0, 1]     valid 2  test 3
    u_bob: e@50 f@60 g@60 a@70 (f, g tie)       -> [4, 6, 5, 0]     train [4, 6]     valid 5  test 0
           the tie-break hash puts sku-g before sku-f although id order would not
    u_cat: a@10 b@20                            -> dropped (fewer than 3 events)
    u_dan: g@1 a@2 g@3 b@4 h@5 (g repeats)      -> [6, 0, 6, 1, 7]  train [6, 0, 6]  valid 1  test 7
The event rows are deliberately not in time order.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.data import EVENT_ROWS, ROOT, TINY_BERT, make_catalog, make_events, run_paths

from towerrec.data.schema import Catalog, Dataset
from towerrec.model.encoders import load_encoder


@pytest.fixture
def catalog() -> Catalog:
    return make_catalog()


@pytest.fixture
def dataset(catalog) -> Dataset:
    return Dataset("tiny", catalog, make_events(EVENT_ROWS))


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    """Texts to train the tiny encoder's tokenizer on."""
    return [
        "trail running shoe | brand: stridex | category: sports > running > shoes",
        "running socks | brand: stridex",
        "espresso machine | brand: brewmaster | category: home > kitchen > coffee",
        "coffee grinder | category: home > kitchen > coffee | color: black",
        "paperback novel | brand: inkwell | category: books",
        "reading lamp | brand: lumo | category: home > lighting",
        "yoga mat | brand: stridex | category: sports > fitness | color: green",
        "water bottle",
    ]


@pytest.fixture
def tiny_encoder(corpus):
    """(encoder, tokenizer): a 2-layer, 16-dim random BERT with a tokenizer trained on `corpus`; seeded."""
    torch.manual_seed(0)
    return load_encoder({"random_init": dict(TINY_BERT)}, corpus=corpus)


@pytest.fixture(scope="module")
def one_thread_faiss():
    """Torch and FAISS on one thread for the module: tiny models run faster and steadier that way."""
    import faiss
    import torch

    threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(faiss_threads)


@pytest.fixture(scope="module")
def tiny_split():
    """A small synthetic world split leave-last-out (80 items, 60 users)."""
    from towerrec.data import synthetic
    from towerrec.data.splits import leave_last_out

    return leave_last_out(synthetic.generate(num_items=80, num_users=60, max_len=8, user_id_secret="test-secret"))


@pytest.fixture(scope="module")
def sequence_artifacts(tiny_split, tmp_path_factory) -> dict[str, Path]:
    """Tiny untrained sequence artifacts over `tiny_split` (helpers.serve.export_tiny_sequence_artifact):
    {"text": with the product text path (free-text queries), "ids": id-only (no text path)}."""
    from helpers.serve import export_tiny_sequence_artifact

    root = tmp_path_factory.mktemp("sequence")
    return {name: export_tiny_sequence_artifact(root / name, tiny_split, text=name == "text")
            for name in ("text", "ids")}


@pytest.fixture
def compose_cfg(tmp_path):
    """compose(overrides, run_dir) -> the task config, as `python train.py` would see it in run_dir."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    def _compose(overrides: list[str], run_dir: Path):
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("train", overrides=[*run_paths(tmp_path), *overrides], return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(run_dir)
        HydraConfig.instance().set_config(cfg)  # resolves ${hydra:runtime.output_dir}
        with open_dict(cfg):
            del cfg["hydra"]  # the task function never sees the hydra node
        return cfg

    yield _compose
    HydraConfig.instance().cfg = None
