"""Fixtures of the artifact tests: the tiny model, one export per module (`base`) and private copies of it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from helpers.tiny_artifact import TEXT, TINY_BERT, do_export

from towerrec.data.text import render_items
from towerrec.model.encoders import load_encoder
from towerrec.model.towers import TwoTower


@pytest.fixture(scope="module")
def split(tiny_split):
    return tiny_split


@pytest.fixture(scope="module")
def encoder_and_tokenizer(split):
    torch.manual_seed(0)
    return load_encoder({"random_init": dict(TINY_BERT)}, corpus=render_items(split.catalog, TEXT))


@pytest.fixture(scope="module")
def model(encoder_and_tokenizer):
    return TwoTower(encoder_and_tokenizer[0]).eval()


@pytest.fixture(scope="module")
def tokenizer(encoder_and_tokenizer):
    return encoder_and_tokenizer[1]


@pytest.fixture(scope="module")
def base(tmp_path_factory, model, tokenizer, split) -> Path:
    return do_export(tmp_path_factory.mktemp("base") / "artifact", model, tokenizer, split)


@pytest.fixture
def art_dir(base, tmp_path) -> Path:
    """A private copy of the shared export."""
    return Path(shutil.copytree(base, tmp_path / "artifact"))
