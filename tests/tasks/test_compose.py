"""The default model and the presets compose; experiment=tiny composes with every model, and the baselines run on
it through `train(cfg)`; the GPU recipe experiment=scientific_finetune composes, and runs on the CPU with tiny
overrides."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

MODELS = ["sequence", "two_tower", "popularity", "itemknn", "zeroshot"]
BASELINES = ["popularity", "itemknn", "zeroshot"]


@pytest.mark.parametrize("model", MODELS)
def test_tiny_experiment_composes_with_every_model(compose_cfg, tmp_path, model):
    cfg = compose_cfg(["experiment=tiny", f"model={model}"], tmp_path / "run")
    assert cfg.model.kind == model
    assert (cfg.data.num_items, cfg.data.num_users, list(cfg.tags)) == (300, 400, ["tiny"])
    assert cfg.trainer.max_epochs == 2
    if model in ("sequence", "two_tower", "zeroshot"):  # the tiny random-init encoder replaces MiniLM
        assert set(cfg.model.encoder) == {"random_init"}
        assert cfg.model.encoder.random_init.hidden_size == 32


def test_the_sequence_towers_are_the_default_model(compose_cfg, tmp_path):
    for base in ([], ["experiment=tiny"]):
        default = compose_cfg(base, tmp_path / "run")
        explicit = compose_cfg([*base, "model=sequence"], tmp_path / "run")
        assert OmegaConf.to_yaml(default) == OmegaConf.to_yaml(explicit)
        assert default.model.kind == "sequence" and default.trainer.precision == "32-true"
    assert compose_cfg(["experiment=tiny"], tmp_path / "run").model.dim == 32


@pytest.mark.parametrize("experiment, model, epochs, precision", [
    ("two_tower", "two_tower", 1, "bf16-mixed"),
    ("tiny_two_tower", "two_tower", 2, "32-true"),
    ("scientific", "sequence", 40, "32-true"),
    ("scientific_two_tower", "two_tower", 1, "bf16-mixed"),
])
def test_two_tower_and_scientific_presets(compose_cfg, tmp_path, experiment, model, epochs, precision):
    cfg = compose_cfg([f"experiment={experiment}"], tmp_path / "run")
    assert (cfg.model.kind, cfg.trainer.max_epochs, cfg.trainer.precision) == (model, epochs, precision)
    if experiment == "tiny_two_tower":  # the two-tower's own tiny token windows
        assert cfg.model.freeze_layers == 0 and cfg.model.datamodule.item_max_length == 32
    if experiment.startswith("scientific"):
        assert cfg.data.kind == "recbole" and "scientific" in cfg.tags


@pytest.mark.parametrize("search, experiment, swept", [
    ("optuna", "scientific", {"model.layers", "model.max_len", "model.dropout", "loss.temperature"}),
    ("optuna_two_tower", "two_tower", {"model.freeze_layers", "loss.temperature"}),
])
def test_each_search_space_names_keys_of_its_model(compose_cfg, tmp_path, search, experiment, swept):
    from hydra.core.hydra_config import HydraConfig

    cfg = compose_cfg([f"hparams_search={search}", f"experiment={experiment}"], tmp_path / "run")
    params = HydraConfig.get().sweeper.params  # the task config has no hydra node; the sweeper's is here
    assert swept <= set(params)
    for key in params:  # every swept key exists in the composed config (a typo would sweep nothing)
        assert OmegaConf.select(cfg, key) is not None, key
    if search == "optuna":  # a trial is a short proxy run of the experiment
        assert (cfg.trainer.max_epochs, cfg.export.enabled, cfg.plots) == (6, False, False)
        assert cfg.model.datamodule.length_pool == 50


@pytest.mark.parametrize("model", BASELINES)
def test_baselines_train_on_the_tiny_experiment(compose_cfg, tmp_path, model):
    from towerrec.tasks.train import train

    run_dir = tmp_path / "run"
    metrics, objects = train(compose_cfg(["experiment=tiny", f"model={model}", "logger=none", "plots=false"], run_dir))
    assert json.loads((run_dir / "metrics.json").read_text()) == pytest.approx(metrics)
    assert metrics["test/num_users"] == len(objects["split"].users) > 0
    assert objects["split"].num_items == 300
    assert 0.0 <= metrics["test/ndcg@10"] <= 1.0 and 0.0 < metrics["test/coverage@10"] <= 1.0
    assert not (run_dir / "checkpoints").exists()  # nothing is trained


def test_the_gpu_fine_tuning_recipe_composes(compose_cfg, tmp_path):
    cfg = compose_cfg(["experiment=scientific_finetune"], tmp_path / "run")
    assert (cfg.data.name, cfg.model.kind, cfg.model.item_ids, cfg.loss.kind) == ("Scientific", "sequence", True, "full")
    assert (cfg.trainer.accelerator, cfg.trainer.precision) == ("gpu", "bf16-mixed")
    assert cfg.model.text_encoder.train == "full" and cfg.model.text_encoder.lr < cfg.model.optimizer.lr
    assert cfg.model.encoder.name_or_path == "minilm" and cfg.model.dim == 384


@pytest.mark.parametrize("mode", ["full", "top_layers"])
def test_the_gpu_fine_tuning_recipe_runs_on_the_cpu_with_tiny_overrides(compose_cfg, tmp_path, mode, one_thread_faiss):
    from towerrec.tasks.train import train

    tiny = ["data=synthetic", "text=default", "model/encoder=tiny", "trainer=cpu", "trainer.precision=bf16-mixed",
            "data.num_items=60", "data.num_users=60", "data.max_len=12", "model.dim=16", "model.max_len=6",
            "model.text_encoder.max_length=24", "model.datamodule.batch_size=16", "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false", "logger=none", "plots=false", "export.progress=false"]
    cfg = compose_cfg(["experiment=scientific_finetune", *tiny, f"model.text_encoder.train={mode}"], tmp_path / "run")
    metrics, objects = train(cfg)
    assert objects["module"].text_module.mode == mode
    assert 0.0 <= metrics["test/ndcg@10"] <= 1.0 and metrics["train/epochs"] == 1
    assert json.loads((objects["artifact"] / "manifest.json").read_text())["encoder"]["train"] == mode
