"""RecBole's own SASRec on our Amazon Scientific split: the real peer, run on this machine (issue #16).

Runs inside bench/.venv-recbole (made by `bash bench/recbole/setup.sh`), never towerrec's venv, and does not import
towerrec. RecBole reads the split's pre-split files directly (`benchmark_filename: [train, valid, test]`, one row
per (user, history, target)), trains SASRec (CE loss = softmax over the whole catalog) on CPU with early stopping
on valid NDCG@10, reloads the best checkpoint and evaluates test with full ranking, Recall/NDCG @10 and @50.

Protocol: RecBole ranks every item for a sequential model and does **not** remove the user's history items from
the ranking (only the padding id is masked), so its figures compare with towerrec's `test_kept/...`, not `test/...`.

The script also checks that RecBole evaluates exactly the split's test cases: the users, items and every
(user, history, target) row of its test and valid sets, mapped back to the file's tokens, against the files.

    bash bench/recbole/setup.sh
    bench/.venv-recbole/bin/python bench/recbole_sasrec.py                   # full run, minutes to an hour on CPU
    bench/.venv-recbole/bin/python bench/recbole_sasrec.py --epochs 1 --out /tmp/smoke.json   # smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

# Before torch: RecBole's trainer reloads its own checkpoints with plain torch.load, which torch >= 2.6 refuses
# (weights_only) for the pickled config inside them.
os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

import numpy as np  # noqa: E402

# RecBole 1.2.1 still uses the aliases numpy removed (np.float in its NDCG code); numpy<2 plus this shim.
np.float = float  # type: ignore[attr-defined]
np.int = int  # type: ignore[attr-defined]

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "amazon-scientific"
SPLITS = ("train", "valid", "test")


class _TimeBudget(Exception):
    """Raised from the epoch callback to end RecBole's fit loop when --max-minutes is spent."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="folder with NAME.{train,valid,test}.inter")
    p.add_argument("--name", default="Scientific", help="dataset name (file prefix)")
    p.add_argument("--workdir", type=Path, default=REPO / "bench" / ".recbole-work",
                   help="RecBole's data links, checkpoints and logs (gitignored)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "recbole_sasrec_scientific.json")
    p.add_argument("--epochs", type=int, default=300, help="upper bound; early stopping ends it sooner")
    p.add_argument("--stopping-step", type=int, default=10, help="evaluations without a better valid NDCG@10")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=2020)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--max-minutes", type=float, default=0.0,
                   help="stop after the first epoch that ends past this wall time (0: no limit); test uses the best "
                        "checkpoint so far")
    return p.parse_args(argv)


def recbole_config(args: argparse.Namespace, data_root: Path, checkpoints: Path) -> dict:
    """The RecBole config: SASRec as the peer note describes it, on the pre-split files, full-ranking eval."""
    return {
        # data: the three pre-split files as they are, no filtering (RecBole skips it for benchmark files)
        "data_path": str(data_root),
        "benchmark_filename": list(SPLITS),
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "load_col": {"inter": ["user_id", "item_id_list", "item_id"]},
        "alias_of_item_id": ["item_id_list"],  # histories and targets share one id space
        "MAX_ITEM_LIST_LENGTH": 50,
        # model: RecBole's SASRec defaults, stated explicitly
        "hidden_size": 64,
        "inner_size": 256,
        "n_layers": 2,
        "n_heads": 2,
        "hidden_dropout_prob": 0.5,
        "attn_dropout_prob": 0.5,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
        "initializer_range": 0.02,
        "loss_type": "CE",  # softmax over the whole catalog
        "train_neg_sample_args": None,
        # training
        "epochs": args.epochs,
        "train_batch_size": args.batch_size,
        "learner": "adam",
        "learning_rate": args.lr,
        "weight_decay": 0.0,
        "eval_step": 1,
        "stopping_step": args.stopping_step,
        # evaluation: full ranking (the split itself comes from the files; order must be TO for sequential models)
        "eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "TO", "group_by": "user", "mode": "full"},
        "metrics": ["Recall", "NDCG"],
        "topk": [10, 50],
        "valid_metric": "NDCG@10",
        "eval_batch_size": 2048,
        # environment
        "use_gpu": False,
        "worker": 0,
        "seed": args.seed,
        "reproducibility": True,
        "state": "INFO",
        "show_progress": False,
        "checkpoint_dir": str(checkpoints),
    }


def link_data(data_dir: Path, name: str, data_root: Path) -> None:
    """RecBole reads DATA_PATH/NAME/NAME.SPLIT.inter: link the shared files there (read in place, not copied)."""
    folder = data_root / name
    folder.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        src = (data_dir / f"{name}.{split}.inter").resolve()
        if not src.is_file():
            sys.exit(f"error: {src} not found")
        dst = folder / src.name
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        dst.symlink_to(src)


def read_rows(path: Path) -> list[tuple[str, tuple[str, ...], str]]:
    """(user, history, target) tokens of one pre-split file, in file order."""
    rows = []
    with path.open(encoding="utf-8") as f:
        next(f)  # typed header
        for line in f:
            user, hist, target = line.rstrip("\n").split("\t")
            rows.append((user, tuple(hist.split()), target))
    return rows


def recbole_rows(dataset) -> list[tuple[str, tuple[str, ...], str]]:
    """The (user, history, target) rows of a built RecBole split, mapped back to the file's tokens."""
    inter = dataset.inter_feat
    users = dataset.id2token("user_id", inter["user_id"].numpy())
    targets = dataset.id2token("item_id", inter["item_id"].numpy())
    lists, lengths = inter["item_id_list"].numpy(), inter["item_length"].numpy()
    item_tokens = dataset.field2id_token["item_id"]
    return [
        (str(u), tuple(str(t) for t in item_tokens[seq[:n]]), str(t))
        for u, seq, n, t in zip(users, lists, lengths, targets)
    ]


def split_check(data_dir: Path, name: str, datasets: dict) -> dict:
    """Does RecBole evaluate exactly the split's rows? Counts, plus a row-by-row comparison with the files."""
    out = {}
    full = datasets["train"]  # every split shares the parent dataset's id maps
    out["catalog_items"] = int(full.item_num) - 1  # minus [PAD]
    out["users"] = int(full.user_num) - 1
    for split in ("valid", "test"):
        ours = read_rows(data_dir / f"{name}.{split}.inter")
        theirs = recbole_rows(datasets[split])
        out[split] = {
            "rows_in_file": len(ours),
            "rows_in_recbole": len(theirs),
            "users_in_recbole": len({r[0] for r in theirs}),
            "rows_identical": sorted(ours) == sorted(theirs),
            "max_history_len": max(len(r[1]) for r in theirs),
        }
    out["train_rows"] = {"file": len(read_rows(data_dir / f"{name}.train.inter")),
                         "recbole": int(len(datasets["train"].inter_feat))}
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import recbole
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.utils import get_trainer, init_logger, init_seed

    if args.threads:
        torch.set_num_threads(args.threads)
    data_dir, out = args.data_dir.resolve(), args.out.resolve()
    work = args.workdir.resolve()
    data_root, checkpoints = work / "data", work / "saved"
    link_data(data_dir, args.name, data_root)
    settings = recbole_config(args, data_root, checkpoints)
    os.chdir(work)  # RecBole writes log/ and log_tensorboard/ into the working directory

    t0 = time.time()
    config = Config(model="SASRec", dataset=args.name, config_dict=settings)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = logging.getLogger()
    logger.info(config)
    dataset = create_dataset(config)
    logger.info(dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    check = split_check(data_dir, args.name, {"train": train_data._dataset, "valid": valid_data._dataset,
                                               "test": test_data._dataset})
    print("split check:", json.dumps(check))

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = SASRec(config, train_data._dataset).to(config["device"])
    logger.info(model)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)

    curve: list[dict] = []

    def on_epoch(epoch: int, score: float) -> None:
        # RecBole calls this after early stopping's bookkeeping and after saving an improved checkpoint
        curve.append({"epoch": epoch, "valid_ndcg@10": float(score), "improved": trainer.cur_step == 0,
                      "elapsed_s": round(time.time() - t0, 1)})
        print(f"epoch {epoch}: valid NDCG@10 {score:.4f}  ({time.time() - t0:.0f} s)", flush=True)
        if args.max_minutes and time.time() - t_fit > 60 * args.max_minutes:
            raise _TimeBudget

    t_fit = time.time()
    stopped_by = "early stopping"
    try:
        trainer.fit(train_data, valid_data, saved=True, callback_fn=on_epoch)
    except _TimeBudget:
        stopped_by = f"time budget ({args.max_minutes:g} min)"
    best_valid = trainer.best_valid_result
    fit_s = time.time() - t_fit
    test = trainer.evaluate(test_data, load_best_model=True)
    wall_s = time.time() - t0

    best = [c["epoch"] for c in curve if c["improved"]]
    epochs_run = len(trainer.train_loss_dict)
    result = {
        "peer": "RecBole SASRec",
        "protocol": "full ranking over all items, history items kept in the ranking (RecBole's protocol)",
        "data": str(data_dir),
        "test": {k: float(v) for k, v in test.items()},
        "valid_best": {k: float(v) for k, v in best_valid.items()},
        "epochs_run": epochs_run,
        "best_epoch": best[-1] if best else None,
        "stopped_by": stopped_by if epochs_run < args.epochs else "max epochs",
        "fit_s": round(fit_s, 1),
        "wall_s": round(wall_s, 1),
        "valid_curve": curve,
        "train_loss": {int(k): float(v) for k, v in trainer.train_loss_dict.items()},
        "split_check": check,
        "config": settings,
        "versions": {"recbole": recbole.__version__, "torch": torch.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "machine": {"threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                    "loadavg_end": list(os.getloadavg())},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"RecBole {recbole.__version__} SASRec, test (history kept): "
          + ", ".join(f"{k} {v:.4f}" for k, v in result["test"].items()))
    print(f"epochs {epochs_run} (best {result['best_epoch']}), wall {wall_s / 60:.1f} min -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
