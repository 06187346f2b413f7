"""Serve recommendations over HTTP: `python serve.py artifacts=PATH [port=8000] [service.rerank.enabled=true]`, the
same as `towerrec-serve`.

The Hydra config is conf/serve.yaml; the service is towerrec.serving (README: "Serving"). SIGHUP, or
POST /admin/reload with the token in TOWERREC_RELOAD_TOKEN, reloads the artifact without downtime. An artifact
whose user pseudonyms came from the development key (no user-id secret at export) is refused unless
`development=true` says this is a development run.
"""

from pathlib import Path

from towerrec.tasks.cli import serve_main

if __name__ == "__main__":
    serve_main(Path(__file__).resolve().parent / "conf")
