"""SequenceModule with a text encoder that trains (model.text_encoder.train top_layers / full): the catalog table
is refreshed from the trained weights when an epoch is evaluated, and at the start of an epoch after steps no
evaluation saw. The tiny sequence setting through the real config, one or two epochs."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from towerrec.data.load import load_split
from towerrec.tasks.train import sequence_from_config
from towerrec.utils.io import to_plain

TINY = ["experiment=tiny", "model.dim=16", "model.max_len=6", "data.num_users=60", "data.num_items=60",
        "data.max_len=12", "model.datamodule.batch_size=16", "model.text_encoder.max_length=24", "logger=none",
        "plots=false"]

pytestmark = pytest.mark.usefixtures("one_thread_faiss")  # tiny models: one thread is faster and steadier


def build(compose_cfg, tmp_path, overrides):
    cfg = compose_cfg([*TINY, *overrides], tmp_path / "run")
    module, datamodule, _ = sequence_from_config(cfg, load_split(to_plain(cfg.data)))
    return module, datamodule


def trainer(**kw) -> L.Trainer:
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, **kw)


@pytest.mark.parametrize("mode", ["top_layers", "full"])
def test_the_catalog_table_is_refreshed_after_a_training_epoch(compose_cfg, tmp_path, mode):
    module, datamodule = build(compose_cfg, tmp_path, [f"model.text_encoder.train={mode}", "loss=full"])
    items = module.model.items
    assert all(m.training for m in items.text_module.modules())  # dropout on while it trains
    before = items.text.clone()  # (N, H): the untrained encoder's vectors
    torch.testing.assert_close(before, items.text_module.all())
    trainer(max_epochs=1).fit(module, datamodule=datamodule)
    assert module.global_step > 0
    assert not torch.allclose(items.text, before)  # refreshed by the epoch's validation
    torch.testing.assert_close(items.text, items.text_module.all())  # = the trained weights' vectors


def test_an_epoch_after_unevaluated_steps_starts_with_a_refresh(compose_cfg, tmp_path, monkeypatch):
    module, datamodule = build(compose_cfg, tmp_path, ["model.text_encoder.train=top_layers"])
    calls = []
    refresh = module.refresh_catalog

    def spy():
        calls.append(module.global_step)
        refresh()

    monkeypatch.setattr(module, "refresh_catalog", spy)
    trainer(max_epochs=2, limit_val_batches=0).fit(module, datamodule=datamodule)  # no validation
    steps = module.global_step // 2
    assert calls == [steps]  # epoch 2 starts from the table of epoch 1's weights; epoch 1 from the built one
    items = module.model.items  # epoch 2's steps are unseen until the next evaluation refreshes the table
    assert not torch.allclose(items.text, items.text_module.all())


def test_an_id_only_model_has_no_text_encoder_to_train(compose_cfg, tmp_path):
    with pytest.raises(ValueError, match=r"model\.text_encoder\.train=top_layers trains the product text encoder, "
                                         r"but model\.text=false \(id-only\) has none"):
        build(compose_cfg, tmp_path, ["model=sasrec", "model.text_encoder.train=top_layers"])
