"""Serve recommendations over HTTP: `python serve.py artifacts=PATH [port=8000] [service.rerank.enabled=true]`.

The Hydra config is conf/serve.yaml; the service is towerrec.serving (README: "Serving"). SIGHUP, or
POST /admin/reload with the token in TOWERREC_RELOAD_TOKEN, reloads the artifact without downtime. An artifact
whose user pseudonyms came from the development key (no user-id secret at export) is refused unless
`development=true` says this is a development run.
"""

import sys

import hydra
from omegaconf import DictConfig

from towerrec.serving.config import ServeConfig
from towerrec.serving.server import run


@hydra.main(version_base="1.3", config_path="conf", config_name="serve")
def main(cfg: DictConfig) -> None:
    status = run(ServeConfig.from_cfg(cfg), access_log=bool(cfg.get("access_log", False)))
    if status:
        sys.exit(status)


if __name__ == "__main__":
    main()
