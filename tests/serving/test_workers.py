"""`service.workers=N`: several server processes on one port under uvicorn's supervisor (`python serve.py`).

Both workers answer; POST /admin/reload to one of them reaches every worker (a rolling restart) while requests
keep being answered; a reload of a corrupt artifact, or of another directory, is refused and restarts nothing
(by SIGHUP: the replacement fails to start and the restart is abandoned);
a first load that fails stops the server with status 1. Also: the memory-mapped index the service loads
answers like the copied one."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import faiss
import httpx
import numpy as np
import pandas as pd
import pytest
from helpers.serve import export_tiny_artifact

from towerrec.artifact import Artifact
from towerrec.artifact.format import ITEMS_FILE
from towerrec.artifact.update import remove_items
from towerrec.serving import ServeConfig

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "workers-token-123"


@pytest.fixture(scope="module")
def artifact_dir(tiny_split, tmp_path_factory) -> Path:
    return export_tiny_artifact(tmp_path_factory.mktemp("workers") / "artifact", tiny_split)


class Served:
    """`python serve.py` with service.workers=2 on a free port; its output kept in `lines`."""

    def __init__(self, artifacts: Path, run_dir: Path, *extra: str):
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "TOWERREC_RELOAD_TOKEN": TOKEN}
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "serve.py"), f"artifacts={artifacts}", "port=0",
                                      "service.workers=2", f"hydra.run.dir={run_dir}", *extra], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.url = None
        deadline = time.monotonic() + 120
        while self.url is None and time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                break
            self.lines.append(line)
            m = re.search(r"Uvicorn running on (http://\S+)", line)
            self.url = m and m.group(1)
        threading.Thread(target=lambda: [self.lines.append(x) for x in self.proc.stdout], daemon=True).start()

    def output(self) -> str:
        return "".join(self.lines)

    def readiness(self) -> dict:
        return httpx.get(self.url + "/readyz", timeout=30).json()  # a new connection: any worker may answer

    def workers(self, version: str, replaced: set[int] = frozenset(), timeout: float = 120) -> set[int]:
        """The pids answering once 30 readiness checks in a row all report `version`, from >= 2 pids, none of them
        in `replaced` (workers a rolling restart is to replace)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answers = [self.readiness() for _ in range(30)]
            pids = {a["pid"] for a in answers}
            if all(a["ready"] and a["artifact"]["version"] == version for a in answers) and len(pids) >= 2 and \
                    not pids & replaced:
                return pids
            time.sleep(0.5)
        raise AssertionError(f"the workers never all served {version} (replacing {replaced}):\n{self.output()}")

    def close(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


@pytest.mark.slow
def test_two_workers_serve_and_a_reload_reaches_both_under_load(artifact_dir, tmp_path):
    served_dir = Path(shutil.copytree(artifact_dir, tmp_path / "artifact"))
    removed = pd.read_parquet(served_dir / ITEMS_FILE)["item_id"].iloc[0]
    srv = Served(served_dir, tmp_path / "run")
    try:
        assert srv.url, srv.output()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if srv.readiness()["ready"]:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        old = srv.readiness()["artifact"]["version"]
        old_pids = srv.workers(old)
        assert httpx.get(f"{srv.url}/items/{removed}").status_code == 200

        statuses: list[int | str] = []
        stop = threading.Event()

        def hammer():  # new connections: the requests spread over the workers, old and new
            while not stop.is_set():
                try:
                    statuses.append(httpx.post(srv.url + "/recommend", json={"k": 3}, timeout=30).status_code)
                except httpx.HTTPError as e:  # a connection refused or dropped by a restarting worker
                    statuses.append(type(e).__name__)

        thread = threading.Thread(target=hammer)
        thread.start()
        try:
            auth = {"Authorization": f"Bearer {TOKEN}"}
            other = tmp_path / "elsewhere"
            r = httpx.post(srv.url + "/admin/reload", json={"path": str(other)}, headers=auth, timeout=60)
            assert r.status_code == 422 and "every worker serves" in r.json()["detail"][0]["msg"]
            (served_dir / ITEMS_FILE).write_bytes(b"not parquet")  # corrupt: refused, nothing restarts
            r = httpx.post(srv.url + "/admin/reload", headers=auth, timeout=60)
            assert r.status_code == 422 and ITEMS_FILE in r.json()["detail"][0]["msg"]
            assert srv.workers(old) == old_pids
            shutil.rmtree(served_dir)
            shutil.copytree(artifact_dir, served_dir)
            remove_items(served_dir, [removed])  # a new version in place
            r = httpx.post(srv.url + "/admin/reload", headers=auth, timeout=60)
            assert r.status_code == 200, r.text
            new = r.json()["artifact"]["version"]
            assert new != old and r.json()["workers"] == 2
            new_pids = srv.workers(new, replaced=old_pids)  # every worker replaced, the new version served
            time.sleep(1)  # requests during and after the restart
        finally:
            stop.set()
            thread.join(60)
        assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
        assert httpx.get(f"{srv.url}/items/{removed}").status_code == 404

        srv.proc.send_signal(signal.SIGHUP)  # the supervisor's own reload signal: a rolling restart again
        restarted = srv.workers(new, replaced=new_pids)
        (served_dir / ITEMS_FILE).write_bytes(b"not parquet")  # SIGHUP with a corrupt artifact: the replacement
        srv.proc.send_signal(signal.SIGHUP)  # fails to start, the restart is abandoned, the workers stay
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "aborting the restart" not in srv.output():
            time.sleep(0.5)
        assert "aborting the restart" in srv.output()
        assert srv.workers(new) == restarted
        assert srv.close() in (0, -signal.SIGTERM)
    finally:
        srv.close()


@pytest.mark.slow
def test_a_first_load_that_fails_stops_the_workers_with_status_1(tmp_path):
    srv = Served(tmp_path / "missing", tmp_path / "run")
    try:
        assert srv.proc.wait(180) == 1, srv.output()
        assert "manifest.json: missing" in srv.output()
    finally:
        srv.close()


def test_workers_setting_is_validated(tmp_path):
    with pytest.raises(ValueError, match="service.workers"):
        ServeConfig(artifacts=str(tmp_path), workers=0)
    with pytest.raises(ValueError, match="service.worker_timeout_s"):
        ServeConfig(artifacts=str(tmp_path), worker_timeout_s=0)


def test_the_memory_mapped_index_answers_like_the_copied_one(artifact_dir):
    copied, mapped = Artifact.load(artifact_dir), Artifact.load(artifact_dir, mmap=True)
    queries = np.ascontiguousarray(copied.embeddings[:5])
    faiss.omp_set_num_threads(1)
    for a, b in zip(copied.index.search(queries, 10), mapped.index.search(queries, 10)):
        np.testing.assert_array_equal(a, b)
