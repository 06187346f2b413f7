"""End-to-end tests of the training entry point: `towerrec.tasks.train.train(cfg)` and `python train.py`.

In-process tests compose the real config (conf/train.yaml, experiment=tiny on a smaller world) with every
output under tmp_path. The `slow` tests run `python train.py` in subprocesses: resume after SIGKILL, DDP on
two CPU processes, multirun sweeps (Optuna included) and their crash tolerance.

The tiny encoder's matrices are far too small for intra-op threads to pay off, and on a shared machine
they cost 10x in contention, so every run here is single-threaded.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import cli_command, cli_env, explain, run_cli
from helpers.data import run_paths

ROOT = Path(__file__).resolve().parents[2]


# A smaller world than experiment=tiny alone: 37 training batches of 16, about 2 s an epoch on one core.
SMALL = [
    "experiment=tiny",
    "data.num_users=120",
    "data.num_items=100",
    "model.datamodule.batch_size=16",
    "model.datamodule.eval_batch_size=64",
    "trainer.enable_progress_bar=false",
]
FAST = [*SMALL, "debug=fast"]  # one epoch of 3 batches, full evaluation


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _read_metrics(run_dir: Path) -> dict[str, float]:
    path = run_dir / "metrics.json"
    assert path.is_file(), f"no metrics.json in {run_dir}: {sorted(p.name for p in run_dir.iterdir())}"
    return json.loads(path.read_text())


def _check_metrics(metrics: dict[str, float]) -> None:
    """Flat slash keys for both stages, the harness metrics among them, every value a finite number."""
    for key in ("val/ndcg@10", "val/recall@10", "val/mrr@10", "test/ndcg@10", "test/recall@10",
                "test/recall@50", "test/coverage@10", "test/gini@10", "time/seconds"):
        assert key in metrics, f"{key} missing from {sorted(metrics)}"
    for key, value in metrics.items():
        assert re.fullmatch(r"[a-z_]+/[a-z_]+(@\d+)?", key), f"not a flat slash key: {key!r}"
        assert isinstance(value, (int, float)) and math.isfinite(value), f"{key} = {value!r}"
    for key in ("val/ndcg@10", "test/recall@10", "test/coverage@10"):
        assert 0.0 <= metrics[key] <= 1.0


# ------------------------------------------------------------------------------------------------------
# The pipeline in-process
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("experiment", ["tiny", "tiny_two_tower"])  # the sequence towers, the text two-tower
def test_tower_run_writes_metrics_checkpoint_and_csv(compose_cfg, tmp_path, one_thread, experiment):
    from towerrec.tasks.train import train
    from towerrec.utils.hydra import metric_value

    run_dir = tmp_path / "run"
    cfg = compose_cfg([*FAST, f"experiment={experiment}", "logger=csv"], run_dir)
    metrics, objects = train(cfg)

    saved = _read_metrics(run_dir)
    _check_metrics(saved)
    assert saved == pytest.approx(metrics)
    assert metric_value(metrics, cfg.optimized_metric) == metrics["val/ndcg@10"]
    assert metrics["train/epochs"] == 1
    assert metrics["val/num_users"] == metrics["test/num_users"] == len(objects["split"].users)

    # the best checkpoint is the one evaluated, and it sits in the run dir next to last.ckpt
    best = Path(objects["best_ckpt"])
    assert best.is_file() and best.parent == run_dir / "checkpoints"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    ckpt = torch.load(best, map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 0 and any(k.startswith("model.") for k in ckpt["state_dict"])

    # CSV logger: training loss per step (debug=fast logs every step), validation metrics per epoch
    lines = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert {"train/loss", "val/ndcg@10", "step"} <= set(header)
    losses = [row.split(",")[header.index("train/loss")] for row in lines[1:]]
    assert sum(1 for v in losses if v and math.isfinite(float(v))) == 3  # limit_train_batches: 3
    assert (run_dir / "tokenizer" / "tokenizer.json").is_file()


@pytest.mark.parametrize("model", ["popularity", "itemknn"])
def test_baseline_run_writes_metrics(compose_cfg, tmp_path, model):
    from towerrec.tasks.train import train
    from towerrec.utils.hydra import metric_value

    run_dir = tmp_path / "run"
    # the default experiment on a smaller world (tests/tasks/test_compose.py runs them under experiment=tiny)
    cfg = compose_cfg([f"model={model}", "data.num_users=120", "data.num_items=100", "logger=csv"], run_dir)
    metrics, objects = train(cfg)

    saved = _read_metrics(run_dir)
    _check_metrics(saved)
    assert saved == pytest.approx(metrics)
    assert metric_value(metrics, cfg.optimized_metric) == metrics["val/ndcg@10"]
    assert not (run_dir / "checkpoints").exists()  # nothing is trained
    assert "val/ndcg@10" in (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0]
    if model == "popularity":
        # one global top list (minus each user's history): at most 10 + longest history items are shown
        longest = max(len(s) for s in objects["split"].sequences)
        assert metrics["test/coverage@10"] <= (10 + longest) / objects["split"].num_items


def test_an_unknown_stage_is_an_error_not_a_training_run(compose_cfg, tmp_path):
    from towerrec.tasks.train import train

    run_dir = tmp_path / "run"
    cfg = compose_cfg(["stage=exprot"], run_dir)
    with pytest.raises(ValueError, match=r"stage='exprot' is not a stage; choose one of train, export, rerank"):
        train(cfg)
    assert not run_dir.exists()


def test_missing_optimized_metric_is_an_error():
    from towerrec.utils.hydra import metric_value

    assert metric_value({"val/ndcg@10": 0.5}, None) is None
    with pytest.raises(KeyError, match="val/nope"):
        metric_value({"val/ndcg@10": 0.5}, "val/nope")


# ------------------------------------------------------------------------------------------------------
# Privacy: raw user ids never reach a file the run writes
# ------------------------------------------------------------------------------------------------------

RAW_PREFIX = "RAWUSER"
NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "niaj",
         "olivia", "peggy", "rupert", "sybil", "trent", "victor", "walter", "yolanda"]
WORDS = ["trail", "running", "shoe", "coffee", "grinder", "yoga", "mat", "lamp", "novel", "bottle", "kettle",
         "tent", "jacket", "backpack", "socks"]


def write_table_fixture(root: Path) -> tuple[Path, Path, list[str]]:
    """items.csv and events.csv with our own column names (mapped by data.columns), and the raw user ids.

    40 users with 6 to 9 purchases each among 60 products; one event row names an unknown product so that
    the skip-bad-rows report is exercised too. Seeded: the same files every time.
    """
    rng = np.random.default_rng(7)
    root.mkdir(parents=True, exist_ok=True)
    item_rows = ["sku,name,maker,dept,cost"]
    for i in range(60):
        words = rng.choice(WORDS, size=2, replace=False)
        dept = ["Sports > Running", "Home > Kitchen", "Books", "Outdoors > Camping"][i % 4]
        item_rows.append(f"P{i:03d},{words[0].title()} {words[1]} {i},Maker{i % 7},{dept},{5 + i * 1.5:.2f}")
    event_rows = ["customer,sku,ts"]
    raw_ids = [f"{RAW_PREFIX}-{NAMES[u % len(NAMES)]}-{100 + u}" for u in range(40)]
    for u, user in enumerate(raw_ids):
        start = int(rng.integers(0, 60))
        for t in range(int(rng.integers(6, 10))):
            item = (start + 3 * t + int(rng.integers(0, 3))) % 60
            event_rows.append(f"{user},P{item:03d},{1_700_000_000 + 1000 * u + 10 * t}")
    event_rows.append(f"{raw_ids[0]},NOT-A-PRODUCT,1700000999")
    items, events = root / "items.csv", root / "events.csv"
    items.write_text("\n".join(item_rows) + "\n")
    events.write_text("\n".join(event_rows) + "\n")
    return items, events, raw_ids


def table_overrides(items: Path, events: Path) -> list[str]:
    return [
        "data=table", f"data.catalog_path={items}", f"data.interactions_path={events}", "data.on_bad_rows=skip",
        "data.user_id_secret=test-secret",  # real (non-synthetic) data: the export refuses the development key
        "+data.columns.item_id=sku", "+data.columns.title=name", "+data.columns.brand=maker",
        "+data.columns.category=dept", "+data.columns.price=cost", "+data.columns.user_id=customer",
        "+data.columns.timestamp=ts",
        "experiment=tiny", "~data.num_items", "~data.num_users",  # tiny sizes a synthetic world
        "model.datamodule.batch_size=16", "trainer.enable_progress_bar=false", "debug=fast",
    ]


def assert_no_raw_ids(root: Path, raw_ids: list[str], skip: tuple[Path, ...] = ()) -> int:
    """Grep every file under root, as bytes (checkpoints, npz, logs), for the raw ids; returns files read."""
    needles = [RAW_PREFIX.encode(), *(u.encode() for u in raw_ids)]
    needles += [n.decode().encode("utf-16-le") for n in needles[:1]]  # also as UTF-16 text
    checked = 0
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path in skip:
            continue
        data = path.read_bytes()
        leaks = [n for n in needles if n in data]
        assert not leaks, f"raw user id {leaks[0]!r} found in {path.relative_to(root)}"
        checked += 1
    return checked


def test_raw_user_ids_never_reach_run_outputs(compose_cfg, tmp_path, one_thread, caplog, capsys):
    from towerrec.tasks.train import train

    items, events, raw_ids = write_table_fixture(tmp_path / "input")
    run_dir = tmp_path / "run"
    cfg = compose_cfg([*table_overrides(items, events), "logger=csv"], run_dir)
    with caplog.at_level("INFO"):
        metrics, objects = train(cfg)

    _check_metrics(_read_metrics(run_dir))
    users = objects["split"].users
    assert len(users) == 40 and all(str(u).startswith("u_") for u in users)  # pseudonyms, not raw ids
    assert "skipped 1 bad rows" in caplog.text  # the unknown-product row: reported without its user
    assert "RAWUSER" not in caplog.text + capsys.readouterr().out
    # run dir (metrics, csv logs and hparams, checkpoints, tokenizer) and the token cache
    checked = assert_no_raw_ids(tmp_path, raw_ids, skip=(items, events))
    assert checked >= 8
    assert RAW_PREFIX.encode() in events.read_bytes()  # the needle does find raw ids where they are


# ------------------------------------------------------------------------------------------------------
# wandb, offline, with no account and no network
# ------------------------------------------------------------------------------------------------------

_BLOCK = 32768  # the .wandb transaction log: LevelDB log format, 32 KiB blocks of (crc, length, type) records


def wandb_records(path: Path):
    """Decoded `Record` protos of an offline run's run-<id>.wandb file."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb transaction log"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # block trailer padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 2):  # full / first fragment
            pending = chunk
        else:  # middle / last fragment
            pending += chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


class _Tripwire:
    """A local TCP listener that counts connections: wandb's base URL and the HTTP(S) proxies point here."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _accept(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self):
        self._stop.set()
        self._thread.join()
        self.sock.close()


def test_wandb_offline_run_logs_config_metrics_and_artifact(compose_cfg, tmp_path, monkeypatch, one_thread):
    import wandb

    from towerrec.tasks.cli import _finish_wandb
    from towerrec.tasks.train import train

    tripwire = _Tripwire()
    for var in ("WANDB_API_KEY", "WANDB_ENTITY", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(var, raising=False)
    # unset during the run (the pipeline sets it from logger.wandb.offline), and removed again at teardown
    monkeypatch.setenv("WANDB_MODE", "unset")
    monkeypatch.delenv("WANDB_MODE")
    for var, sub in (("WANDB_DIR", "wandb_dir"), ("WANDB_DATA_DIR", "wandb_data"),
                     ("WANDB_CACHE_DIR", "wandb_cache"), ("WANDB_CONFIG_DIR", "wandb_config")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    for var in ("WANDB_BASE_URL", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(var, tripwire.url)
    monkeypatch.setenv("NO_PROXY", "")
    monkeypatch.setenv("WANDB_SILENT", "true")

    run_dir = tmp_path / "run"
    cfg = compose_cfg([*FAST, "logger=wandb", "trainer.max_epochs=1"], run_dir)
    try:
        metrics, _ = train(cfg)
        assert os.environ.get("WANDB_MODE") in ("offline", "dryrun")  # set by the pipeline / WandbLogger
        run_id = wandb.run.id
        _finish_wandb(failed=False)  # what train.py does after every job
        assert wandb.run is None
    finally:
        if wandb.run is not None:
            wandb.finish(exit_code=1)
        wandb.teardown()
        tripwire.close()
    assert tripwire.connections == 0, "wandb tried to reach a server in offline mode"

    runs = list((run_dir / "wandb").glob("offline-run-*"))  # save_dir is the run dir
    assert len(runs) == 1 and runs[0].name.endswith(run_id)
    records = list(wandb_records(runs[0] / f"run-{run_id}.wandb"))

    config = {u.key: json.loads(u.value_json) for r in records if r.HasField("config") for u in r.config.update}
    assert config["model"]["kind"] == "sequence" and config["loss"]["temperature"] == cfg.loss.temperature
    assert config["optimized_metric"] == "val/ndcg@10"

    def key(item):
        return item.key or "/".join(item.nested_key)

    history = {key(i) for r in records if r.HasField("history") for i in r.history.item}
    assert {"train/loss", "val/ndcg@10"} <= history
    summary = {key(u): json.loads(u.value_json) for r in records if r.HasField("summary") for u in r.summary.update}
    assert summary["test/ndcg@10"] == pytest.approx(metrics["test/ndcg@10"])
    assert summary["val/ndcg@10"] == pytest.approx(metrics["val/ndcg@10"])

    artifacts = [r.artifact for r in records if r.HasField("artifact")]
    assert [(a.name, a.type) for a in artifacts] == [(f"metrics-{run_id}", "metrics")]
    (entry_,) = artifacts[0].manifest.contents
    assert entry_.path == "metrics.json"
    md5 = base64.b64encode(hashlib.md5((run_dir / "metrics.json").read_bytes()).digest()).decode()
    assert entry_.digest == md5  # the artifact holds this run's metrics.json, byte for byte
    assert any(r.HasField("exit") and r.exit.exit_code == 0 for r in records)


# ------------------------------------------------------------------------------------------------------
# DDP: in-batch negatives gathered across ranks (2 gloo processes)
# ------------------------------------------------------------------------------------------------------

NUM_ITEMS, DIM, PER_RANK, WORLD = 12, 8, 4, 2


def _ddp_problem(uniform: int):
    """Deterministic toy batch for WORLD ranks: features, ids (with cross-rank repeats), a shared tower."""
    g = torch.Generator().manual_seed(3)
    users = torch.randn(WORLD * PER_RANK, DIM, generator=g)
    rows = PER_RANK + uniform
    items = torch.randn(WORLD * rows, DIM, generator=g)
    ids = torch.randint(0, NUM_ITEMS, (WORLD * rows,), generator=g)
    ids[rows + 1] = ids[0]  # rank 1's second positive is rank 0's first: an accidental hit across ranks
    weight = torch.randn(DIM, DIM, generator=g)
    counts = np.arange(1, NUM_ITEMS + 1)
    return users, items, ids, weight, counts


def _module(counts, world: int, rank: int):
    """A real RetrievalModule (only its loss is used) that believes it runs as `rank` of `world`."""
    from types import SimpleNamespace

    from towerrec.model.module import RetrievalModule

    module = RetrievalModule(torch.nn.Identity(), optimizer=lambda params: None, temperature=0.1,
                             log_q_correction=True, mask_accidental_hits=True, item_counts=counts)
    module.trainer = SimpleNamespace(world_size=world, global_rank=rank)
    return module


def _embed(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x @ weight, dim=-1)


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        results = {}
        for uniform in (0, 2):
            users, items, ids, weight, counts = _ddp_problem(uniform)
            weight = weight.clone().requires_grad_(True)
            rows = PER_RANK + uniform
            local = slice(rank * rows, (rank + 1) * rows)
            q = _embed(users[rank * PER_RANK : (rank + 1) * PER_RANK], weight)
            loss = _module(counts, world, rank)._loss(q, _embed(items[local], weight), ids[local], PER_RANK)
            loss.backward()
            grad = weight.grad.clone()
            torch.distributed.all_reduce(grad)  # what DDP does with parameter gradients: average over ranks
            mean_loss = loss.detach().clone()
            torch.distributed.all_reduce(mean_loss)
            results[uniform] = (mean_loss / world, grad / world)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def _reference(uniform: int):
    """One process, the whole batch: positives of every rank in rank order, each rank's negatives after them."""
    from towerrec.model import loss as losses

    users, items, ids, weight, counts = _ddp_problem(uniform)
    weight = weight.clone().requires_grad_(True)
    module = _module(counts, 1, 0)
    rows = PER_RANK + uniform
    q, emb = _embed(users, weight), _embed(items, weight)
    if uniform == 0:
        loss = module._loss(q, emb, ids, len(users))  # plain in-batch softmax over the global batch
    else:  # the gathered layout [pos_0, neg_0, pos_1, neg_1]: labels skip the other ranks' negatives
        labels = torch.cat([torch.arange(PER_RANK) + r * rows for r in range(WORLD)])
        log_q = module.log_q[ids].clone()
        for r in range(WORLD):
            log_q[r * rows + PER_RANK : (r + 1) * rows] = -math.log(NUM_ITEMS)
        loss = losses.in_batch_softmax_loss(q, emb, ids, module.temperature, log_q, labels, True)
    loss.backward()
    return loss.detach(), weight.grad


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_ddp_loss_gathers_negatives_across_ranks(tmp_path):
    import torch.multiprocessing as mp

    # fork: the children inherit the imported modules (spawn would re-import torch and lightning, ~10 s)
    method = "fork" if sys.platform == "linux" else "spawn"
    context = mp.start_processes(_ddp_worker, args=(WORLD, str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD,
                                 join=False, start_method=method)
    deadline = time.monotonic() + 120
    while not context.join(timeout=1):  # raises if a worker failed
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the gloo workers did not finish in 120 s")
    per_rank = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for uniform in (0, 2):
        loss, grad = _reference(uniform)
        for results in per_rank:
            ddp_loss, ddp_grad = results[uniform]
            torch.testing.assert_close(ddp_loss, loss, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(ddp_grad, grad, rtol=1e-4, atol=1e-6)
        # without the gather each rank would only see its own PER_RANK positives: a different loss
        users, items, ids, weight, counts = _ddp_problem(uniform)
        rows = PER_RANK + uniform
        local = [_module(counts, 1, 0)._loss(_embed(users[r * PER_RANK : (r + 1) * PER_RANK], weight),
                                             _embed(items[r * rows : (r + 1) * rows], weight),
                                             ids[r * rows : (r + 1) * rows], PER_RANK) for r in range(WORLD)]
        assert not torch.isclose(torch.stack(local).mean(), loss, rtol=1e-3)


# ------------------------------------------------------------------------------------------------------
# The command line: subprocesses
# ------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_run_keeps_raw_user_ids_out_of_every_file(tmp_path):
    """The real entry point: Hydra's own outputs (.hydra/*.yaml, the job log) hold no raw ids either."""
    items, events, raw_ids = write_table_fixture(tmp_path / "input")
    run_dir = tmp_path / "run"
    proc = run_cli([*table_overrides(items, events), *run_paths(tmp_path), f"hydra.run.dir={run_dir}"])
    assert proc.returncode == 0, explain(proc)
    _check_metrics(_read_metrics(run_dir))
    for name in (".hydra/config.yaml", ".hydra/overrides.yaml", "debug.log", "csv/metrics.csv", "csv/hparams.yaml",
                 "checkpoints/last.ckpt"):
        assert (run_dir / name).is_file(), name
    assert "skipped 1 bad rows" in (run_dir / "debug.log").read_text()
    assert RAW_PREFIX not in proc.stdout + proc.stderr
    assert_no_raw_ids(tmp_path, raw_ids, skip=(items, events))


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    common = [*SMALL, *run_paths(tmp_path), "trainer.max_epochs=2", "+trainer.limit_train_batches=8", "logger=csv"]
    reference_dir, crashed_dir = tmp_path / "reference", tmp_path / "crashed"
    kill = ["+callbacks.crash._target_=helpers.crash_callback.KillAt", "+callbacks.crash.epoch=1",
            "+callbacks.crash.batch=3"]
    # the uninterrupted run and the crashing run side by side (one core each)
    procs = [subprocess.Popen(cli_command([*common, f"hydra.run.dir={reference_dir}"]), cwd=ROOT, env=cli_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
             subprocess.Popen(cli_command([*common, *kill, f"hydra.run.dir={crashed_dir}"]), cwd=ROOT, env=cli_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    outs = [p.communicate(timeout=300) for p in procs]
    reference, crashed = [subprocess.CompletedProcess(p.args, p.returncode, *o) for p, o in zip(procs, outs)]
    assert reference.returncode == 0, explain(reference)
    assert crashed.returncode == -signal.SIGKILL, explain(crashed)
    ckpts = crashed_dir / "checkpoints"
    assert (ckpts / "last.ckpt").is_file() and (ckpts / "epoch_000.ckpt").is_file()
    assert not (ckpts / "epoch_001.ckpt").exists() and not (crashed_dir / "metrics.json").exists()

    # Seeded from scratch, a run that ignored ckpt_path would end the same: a tripwire kills the resumed
    # run if it ever trains a batch of epoch 0.
    tripwire = ["+callbacks.crash._target_=helpers.crash_callback.KillAt", "+callbacks.crash.epoch=0",
                "+callbacks.crash.batch=0", "+callbacks.crash.require_last_ckpt=false"]
    resumed = run_cli([*common, *tripwire, f"hydra.run.dir={crashed_dir}", f"ckpt_path={ckpts / 'last.ckpt'}"])
    assert resumed.returncode == 0, explain(resumed)
    expected, got = _read_metrics(reference_dir), _read_metrics(crashed_dir)
    keys = sorted(k for k in expected if k.startswith(("val/", "test/")))
    assert keys and keys == sorted(k for k in got if k.startswith(("val/", "test/")))
    assert got["train/epochs"] == expected["train/epochs"] == 2
    np.testing.assert_allclose([got[k] for k in keys], [expected[k] for k in keys], rtol=1e-6, atol=1e-9,
                               err_msg=f"keys: {keys}")
    # and the weights themselves: the evaluated (best) model's exported product vectors are equal
    from safetensors.torch import load_file

    a = load_file(reference_dir / "artifact" / "item_embeddings.safetensors")
    b = load_file(crashed_dir / "artifact" / "item_embeddings.safetensors")
    assert a.keys() == b.keys()
    for name, tensor in a.items():
        torch.testing.assert_close(b[name], tensor, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(tmp_path):
    from omegaconf import OmegaConf

    from towerrec.data.load import load_split

    run_dir = tmp_path / "run"
    args = [*SMALL, "experiment=tiny_two_tower", *run_paths(tmp_path), "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
            "trainer.max_epochs=1", "trainer.log_every_n_steps=1", "logger=csv", f"hydra.run.dir={run_dir}"]
    proc = run_cli(args, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    assert proc.returncode == 0, explain(proc)
    metrics = _read_metrics(run_dir)
    _check_metrics(metrics)

    # each rank ran half of the batches: the logged steps are those of one rank
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    split = load_split(cfg.data)
    pairs = len(split.train_pairs(cfg.model.datamodule.max_history).targets)
    batches = pairs // cfg.model.datamodule.batch_size
    header, *rows = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
    col = header.split(",").index("train/loss")
    steps = sum(1 for row in rows if row.split(",")[col])
    assert steps == batches // 2, (steps, batches)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


@pytest.mark.slow
def test_multirun_sweep_writes_one_job_dir_per_value(tmp_path):
    from omegaconf import OmegaConf

    sweep_dir = tmp_path / "sweep"
    proc = run_cli(["-m", *FAST, *run_paths(tmp_path), "loss.temperature=0.03,0.05", f"hydra.sweep.dir={sweep_dir}"])
    assert proc.returncode == 0, explain(proc)
    jobs = _job_dirs(sweep_dir)
    assert [p.name for p in jobs] == ["0", "1"]
    temperatures = []
    for job in jobs:
        _check_metrics(_read_metrics(job))
        temperatures.append(OmegaConf.load(job / ".hydra" / "config.yaml").loss.temperature)
        assert not (job / "error.log").exists()
    assert temperatures == [0.03, 0.05]


@pytest.mark.slow
def test_crashing_job_does_not_end_the_sweep(tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = run_cli(["-m", *FAST, *run_paths(tmp_path), "model.adapter=bogus,linear", f"hydra.sweep.dir={sweep_dir}"])
    assert proc.returncode == 0, explain(proc)
    bad, good = _job_dirs(sweep_dir)
    error = (bad / "error.log").read_text()
    assert "Traceback" in error and "model.adapter must be one of ('linear', 'mlp'), got 'bogus'" in error
    assert "model.adapter must be" in (bad / "debug.log").read_text()  # also in the job's own log
    assert not (bad / "metrics.json").exists()
    _check_metrics(_read_metrics(good))


@pytest.mark.slow
def test_crash_in_a_single_run_exits_nonzero(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli([*FAST, *run_paths(tmp_path), "model.adapter=bogus", f"hydra.run.dir={run_dir}"])
    assert proc.returncode != 0
    assert "model.adapter must be one of ('linear', 'mlp'), got 'bogus'" in proc.stderr
    assert not (run_dir / "error.log").exists() and not (run_dir / "metrics.json").exists()


@pytest.mark.slow
def test_optuna_search_survives_a_failed_trial(tmp_path):
    """Three trials; the second one raises (a test callback): it is recorded as failed, the others complete."""
    from omegaconf import OmegaConf

    sweep_dir = tmp_path / "sweep"
    fixed = [a for a in FAST if not a.startswith("model.datamodule.batch_size=")]  # a fixed value leaves the search
    args = ["-m", "hparams_search=optuna", *fixed, *run_paths(tmp_path), "hydra.sweeper.n_trials=3",
            # a sweep on the command line replaces that parameter's search space from optuna.yaml
            "model.layers=choice(1,2)",
            "model.datamodule.batch_size=choice(8,16)",
            "+callbacks.fail._target_=helpers.crash_callback.FailInJob", "+callbacks.fail.job=1",
            f"hydra.sweep.dir={sweep_dir}"]
    proc = run_cli(args)
    assert proc.returncode == 0, explain(proc)
    jobs = _job_dirs(sweep_dir)
    assert [p.name for p in jobs] == ["0", "1", "2"]
    failed, done = jobs[1], [jobs[0], jobs[2]]
    assert "FailInJob: simulated crash in job 1" in (failed / "error.log").read_text()
    assert not (failed / "metrics.json").exists()
    for job in done:
        _check_metrics(_read_metrics(job))
        cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
        assert 1e-4 <= cfg.model.optimizer.lr <= 3e-3 and 0.03 <= cfg.loss.temperature <= 0.15
        assert 0.0 <= cfg.model.dropout <= 0.5 and cfg.model.max_len in (10, 20, 30)
        assert not cfg.export.enabled and not cfg.plots  # a trial is a short run
        assert cfg.model.layers in (1, 2) and cfg.model.datamodule.batch_size in (8, 16)
    results = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    best = max(_read_metrics(job)["val/ndcg@10"] for job in done)
    assert results.name == "optuna" and results.best_value == pytest.approx(best)
    assert set(results.best_params) == {"model.optimizer.lr", "model.optimizer.weight_decay", "loss.temperature",
                                        "model.dropout", "model.layers", "model.max_len",
                                        "model.datamodule.batch_size"}
