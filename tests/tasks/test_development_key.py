"""The development user-id key (no data.user_id_secret, no $TOWERREC_USER_SECRET), from the run config to the
served artifact: real data is refused at export unless the run says it is a development one, synthetic data
(fake users) exports and records the fact in the manifest, and serving refuses such an artifact unless
`development=true`."""

from __future__ import annotations

import pytest
from helpers.data import ROOT

from towerrec.artifact import Artifact, ArtifactError
from towerrec.data.privacy import ENV_VAR
from towerrec.data.schema import DataError
from towerrec.serving.config import ServeConfig
from towerrec.serving.state import ServiceState, StateHolder
from towerrec.tasks.export import development_key, export_checkpoint, export_run

REFUSAL = ("set data.user_id_secret or $TOWERREC_USER_SECRET, or pass +development=true / "
           "export.allow_development_key=true for a development run")
REAL_DATA = ["data=scientific", "data=recbole", "data=table", "data=amazon2023"]
TINY_RUN = ["experiment=tiny", "data.num_users=120", "data.num_items=100", "model.datamodule.batch_size=16",
            "model.datamodule.eval_batch_size=64", "debug=fast", "logger=none", "plots=false"]


@pytest.fixture(autouse=True)
def no_env_secret(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)


@pytest.mark.parametrize("data", REAL_DATA)
def test_real_data_without_a_secret_is_refused_at_export(compose_cfg, tmp_path, data):
    cfg = compose_cfg([data], tmp_path / "run")
    with pytest.raises(DataError, match="development key") as refused:
        development_key(cfg)
    message = str(refused.value)
    assert message.endswith(REFUSAL) and message.count(". ") == 0  # one sentence
    # both export paths refuse before anything is read or written
    with pytest.raises(DataError, match="development key"):
        export_checkpoint(cfg, tmp_path / "no-such.ckpt", out_dir=tmp_path / "artifact")
    with pytest.raises(DataError, match="development key"):
        export_run(cfg, {"datamodule": None}, {}, out_dir=tmp_path / "artifact")
    assert not (tmp_path / "artifact").exists()


@pytest.mark.parametrize("overrides, expected", [
    (["+development=true"], True),
    (["export.allow_development_key=true"], True),
    (["data.user_id_secret=s3cret"], False),
])
def test_a_development_flag_or_a_secret_lets_real_data_export(compose_cfg, tmp_path, overrides, expected):
    assert development_key(compose_cfg(["data=table", *overrides], tmp_path / "run")) is expected


def test_the_secret_may_come_from_the_environment(compose_cfg, tmp_path, monkeypatch):
    cfg = compose_cfg(["data=table"], tmp_path / "run")
    monkeypatch.setenv(ENV_VAR, "s3cret")
    assert development_key(cfg) is False


def test_synthetic_run_exports_with_the_development_key_and_serving_needs_the_flag(compose_cfg, tmp_path,
                                                                                 monkeypatch):
    from towerrec.tasks.train import train

    assert development_key(compose_cfg([], tmp_path / "default")) is True  # `python train.py`: no refusal
    cfg = compose_cfg(TINY_RUN, tmp_path / "run")
    _, objects = train(cfg)
    path = objects["artifact"]
    assert Artifact.load(path).manifest["data"]["development_key"] is True

    with pytest.raises(ArtifactError, match=r"manifest\.json: .*development key.*pass development=true"):
        ServiceState.load(path, warm=False)
    holder = StateHolder(path)
    with pytest.raises(ArtifactError, match="development key"):
        holder.reload()
    assert holder.current is None
    assert ServiceState.load(path, warm=False, development=True).num_items == 100
    assert StateHolder(path, development=True).reload().num_items == 100

    # the same checkpoint exported with a secret is served without the flag
    monkeypatch.setenv(ENV_VAR, "s3cret")
    keyed = export_checkpoint(cfg, objects["best_ckpt"], out_dir=tmp_path / "keyed", evaluate=False)
    assert Artifact.load(keyed).manifest["data"]["development_key"] is False
    assert ServiceState.load(keyed, warm=False).num_items == 100


def test_serve_config_reads_the_development_flag(tmp_path):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        default = compose("serve", overrides=[f"artifacts={tmp_path}"])
        flagged = compose("serve", overrides=[f"artifacts={tmp_path}", "development=true"])
    assert ServeConfig.from_cfg(default).development is False
    assert ServeConfig.from_cfg(flagged).development is True
