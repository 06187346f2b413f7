"""Training throughput: towerrec's two-tower stack against sentence-transformers' MNRL trainer.

Both sides train the same encoder from the same weights, with the same batch size, on the same
(history text -> next item text) pairs, in one process, and report pairs/s over the steps after warm-up:

  ours   RetrievalDataModule (text tokenized once, length-bucketed batches, dynamic padding) + TwoTower +
         RetrievalModule under a lightning.Trainer; once without freezing (as sentence-transformers trains)
         and once with the lowest --freeze-layers layers frozen (the project default).
  theirs SentenceTransformer + MultipleNegativesRankingLoss (same temperature) under
         SentenceTransformerTrainer, which tokenizes every batch in its collator. That trainer needs the
         `datasets` package; without it (or with --st-loop manual) the same collator, loss, optimizer and
         schedule run in a plain PyTorch loop, and the output says so.

sentence-transformers has one max_seq_length for both sides: it is set to --user-max-length and item texts are
cut beforehand to their first --item-max-length tokens, so both sides see the same tokens (checked and
reported as "token parity").

    python bench/train_throughput.py                          # MiniLM, synthetic data, 1024 timed pairs
    python bench/train_throughput.py --encoder tiny --pairs 256 --precision 32   # smoke run, seconds
    python bench/train_throughput.py --data scientific --repeats 3 --out bench/results/throughput.json

Nothing is downloaded: encoders are local (`minilm` is the packaged all-MiniLM-L6-v2).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the network, before transformers is imported
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import dataclasses
import logging
import math
import platform
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import common  # noqa: E402  (bench/ is on sys.path when run as a script)
import numpy as np
import torch
from common import write_results  # noqa: E402

log = logging.getLogger("train_throughput")


# ---- arguments and config -----------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="synthetic", help="data config group under conf/data (synthetic, scientific, ...)")
    p.add_argument("--data-path", default=None, help="override data.path (datasets read from disk)")
    p.add_argument("--encoder", default="minilm", help="minilm (packaged all-MiniLM-L6-v2), tiny (random-init small "
                   "BERT, smoke runs) or a local Hugging Face model directory")
    p.add_argument("--pairs", type=int, default=1024, help="training pairs in the timed steps (rounded up to batches)")
    p.add_argument("--warmup-steps", type=int, default=3, help="untimed steps before the timed ones")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--user-max-length", type=int, default=64, help="tokens of a user (history) text")
    p.add_argument("--item-max-length", type=int, default=40, help="tokens of an item text")
    p.add_argument("--freeze-layers", type=int, default=4, help="ours, second row: freeze embeddings + lowest N layers")
    p.add_argument("--precision", choices=("bf16", "32"), default="bf16", help="bf16 autocast on both sides, or fp32")
    p.add_argument("--repeats", type=int, default=1, help="runs of each method, interleaved; the table shows medians")
    p.add_argument("--st-loop", choices=("auto", "trainer", "manual"), default="auto",
                   help="sentence-transformers side: SentenceTransformerTrainer (needs `datasets`), a plain loop "
                   "over the same collator/loss/optimizer, or auto (trainer when `datasets` is installed)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: leave torch's choice)")
    p.add_argument("--seed", type=int, default=0, help="which users and pairs are taken (training seeds come from "
                   "the config's `seed`: --set seed=N)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra Hydra override for the towerrec config (repeatable), e.g. --set data.num_users=500")
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)
    for name in ("pairs", "batch_size", "user_max_length", "item_max_length", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup_steps < 0 or args.freeze_layers < 0:
        p.error("--warmup-steps and --freeze-layers must be >= 0")
    return args


def compose_config(args: argparse.Namespace):
    """The project's own Hydra config (defaults for text rendering, optimizer, scheduler, loss)."""
    return common.compose_config(args.data, args.data_path, ["model/encoder=tiny"] if args.encoder == "tiny" else [] + list(args.set))


# ---- data: the same pairs and the same tokens on both sides -------------------------------------------
def users_for_pairs(split, num_pairs: int, seed: int):
    """A sub-split of randomly chosen users whose training pairs number at least `num_pairs`, so that
    rendering and tokenization scale with the run rather than with the dataset."""
    from towerrec.data.splits import Split

    pairs_per_user = np.array([max(len(s) - 3, 0) for s in split.sequences])  # train part s[:-2] -> len-3 pairs
    if pairs_per_user.sum() < num_pairs:
        raise SystemExit(f"{split.name} has {pairs_per_user.sum()} training pairs, fewer than the {num_pairs} "
                         "needed: lower --pairs/--warmup-steps/--batch-size or use more data")
    order = np.random.default_rng(seed).permutation(len(split.users))
    enough = int(np.searchsorted(np.cumsum(pairs_per_user[order]), num_pairs)) + 1
    chosen = np.sort(order[:enough])
    return Split(split.name, split.catalog, split.users[chosen], [split.sequences[i] for i in chosen],
                 f"{split.fingerprint}/bench-{num_pairs}-{seed}")


def keep_train_pairs(dm, num_pairs: int, seed: int) -> None:
    """Restrict a set-up datamodule to exactly `num_pairs` training pairs (one epoch = the whole run)."""
    from towerrec.data.splits import Examples

    ex = dm.train_examples
    keep = np.sort(np.random.default_rng(seed).permutation(len(ex))[:num_pairs])
    dm.train_examples = Examples(ex.users[keep], [ex.histories[i] for i in keep], ex.targets[keep])
    dm.user_tokens["train"] = [dm.user_tokens["train"][i] for i in keep]


def cut_to_tokens(tokenizer, text: str, max_length: int) -> str:
    """The prefix of `text` that the tokenizer keeps when truncating to `max_length` tokens (specials included)."""
    enc = tokenizer(text, truncation=True, max_length=max_length, return_offsets_mapping=True,
                    return_special_tokens_mask=True)
    full = len(tokenizer(text)["input_ids"])
    if full <= max_length:
        return text
    end = max(e for (_, e), special in zip(enc["offset_mapping"], enc["special_tokens_mask"]) if not special)
    return text[:end]


def token_parity(st_model, texts: list[str], ours: list[np.ndarray], batch_size: int = 256) -> float:
    """Fraction of texts that sentence-transformers tokenizes to exactly our token ids."""
    tokenize = getattr(st_model, "preprocess", None) or st_model.tokenize  # preprocess: sentence-transformers >= 6
    same = 0
    for start in range(0, len(texts), batch_size):
        enc = tokenize(texts[start : start + batch_size])
        for row, mask in enumerate(enc["attention_mask"].bool()):
            same += np.array_equal(enc["input_ids"][row][mask].numpy(), ours[start + row])
    return same / max(len(texts), 1)


def padded_tokens(batches: list[list[int]], lengths: list[int]) -> float:
    """Mean tokens per row once every batch is padded to its longest row."""
    return sum(len(b) * max(lengths[i] for i in b) for b in batches) / sum(len(b) for b in batches)


def tokens_per_pair(dm, batch_size: int, seed: int) -> dict[str, dict[str, float]]:
    """Tokens each pair costs (user, item) after padding: our length-bucketed batches, sentence-transformers'
    random batches (the manual loop's exact order; the trainer's sampler shuffles alike), and unpadded."""
    from torch.utils.data import DataLoader

    from towerrec.data.datamodule import BucketBatchSampler

    user = [len(t) for t in dm.user_tokens["train"]]
    item = [len(dm.item_tokens[i]) for i in dm.train_examples.targets]
    ours = list(BucketBatchSampler(user, batch_size, dm.seed))  # what dm.train_dataloader() yields in epoch 0
    theirs = [b.tolist() for b in DataLoader(range(len(user)), batch_size=batch_size, shuffle=True,
                                             generator=torch.Generator().manual_seed(seed))]
    return {
        "ours": {"user": padded_tokens(ours, user), "item": padded_tokens(ours, item)},
        "theirs": {"user": padded_tokens(theirs, user), "item": padded_tokens(theirs, item)},
        "unpadded": {"user": float(np.mean(user)), "item": float(np.mean(item))},
    }


# ---- timing ---------------------------------------------------------------------------------------------
class StepClock:
    """Wall time of the steps after the first `warmup`: starts when step `warmup` ends (or at train start
    when there is no warm-up), ends when the last step ends. Data loading of the timed steps is included."""

    def __init__(self, warmup: int):
        self.warmup, self.steps = warmup, 0
        self.start: float | None = None
        self.end: float | None = None

    def train_start(self) -> None:
        if self.warmup == 0:
            self.start = time.perf_counter()

    def step_end(self) -> None:
        self.steps += 1
        self.end = time.perf_counter()
        if self.steps == self.warmup:
            self.start = self.end

    @property
    def timed_steps(self) -> int:
        return self.steps - self.warmup

    @property
    def seconds(self) -> float:
        if self.start is None or self.end is None or self.timed_steps <= 0:
            raise RuntimeError(f"no timed steps: {self.steps} steps ran, {self.warmup} were warm-up")
        return self.end - self.start


@dataclasses.dataclass
class Run:
    method: str
    pairs: int  # timed pairs
    seconds: float  # timed steps
    fit_seconds: float  # the whole fit call, warm-up and framework start-up included
    setup_seconds: float  # model load, loss, trainer construction
    repeat: int

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.seconds


# ---- ours -----------------------------------------------------------------------------------------------
def run_ours(cfg, args, dm, split, encoder_dir: Path, freeze: int, steps: int, repeat: int) -> Run:
    import lightning as L

    from towerrec.tasks.train import build_module, build_two_tower

    class ClockCallback(L.Callback):
        def __init__(self, clock: StepClock):
            self.clock = clock

        def on_train_start(self, trainer, pl_module):
            self.clock.train_start()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.clock.step_end()

    start = time.perf_counter()
    L.seed_everything(cfg.seed, verbose=False)
    cfg = cfg.copy()
    cfg.model.freeze_layers = freeze
    cfg.model.encoder = {"name_or_path": str(encoder_dir)}
    model, _, _ = build_two_tower(cfg, split)  # the same construction as train.py
    module = build_module(cfg, model, split.item_counts())
    clock = StepClock(args.warmup_steps)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, max_epochs=-1,
        precision="bf16-mixed" if args.precision == "bf16" else "32-true",
        logger=False, enable_checkpointing=False, limit_val_batches=0, num_sanity_val_steps=0,
        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
        callbacks=[ClockCallback(clock)],
    )
    setup = time.perf_counter() - start
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    fit = time.perf_counter() - start
    return Run(f"ours (freeze {freeze})", clock.timed_steps * args.batch_size, clock.seconds, fit, setup, repeat)


# ---- sentence-transformers --------------------------------------------------------------------------------
def st_imports():
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainingArguments

    try:  # sentence-transformers >= 6
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    except ImportError:
        from sentence_transformers.losses import MultipleNegativesRankingLoss
    return SentenceTransformer, SentenceTransformerTrainingArguments, MultipleNegativesRankingLoss


def load_st_model(encoder_dir: Path, max_seq_length: int):
    SentenceTransformer = st_imports()[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = SentenceTransformer(str(encoder_dir), device="cpu")
    model.max_seq_length = max_seq_length
    return model


def run_st(cfg, args, encoder_dir: Path, anchors: list[str], positives: list[str], steps: int, loop: str,
           outdir: Path, repeat: int) -> Run:
    _, TrainingArguments, MNRL = st_imports()
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model = load_st_model(encoder_dir, args.user_max_length)
    loss = MNRL(model, scale=1.0 / float(cfg.loss.temperature))  # scale = 1 / temperature, as ours
    opt, sched = cfg.model.optimizer, cfg.model.get("scheduler") or {}
    targs = TrainingArguments(
        output_dir=str(outdir), per_device_train_batch_size=args.batch_size, max_steps=steps,
        learning_rate=float(opt.lr), weight_decay=float(opt.get("weight_decay", 0.0)),
        lr_scheduler_type="linear", warmup_steps=int(sched.get("num_warmup_steps", 0)),
        max_grad_norm=0.0,  # ours does not clip either
        bf16=args.precision == "bf16", use_cpu=True, seed=cfg.seed, dataloader_num_workers=0,
        report_to="none", save_strategy="no", eval_strategy="no", logging_steps=10**9, disable_tqdm=True,
    )
    clock = StepClock(args.warmup_steps)
    if loop == "trainer":
        fit, setup = st_trainer_fit(model, loss, targs, anchors, positives, clock, start)
    else:
        fit, setup = st_manual_fit(model, loss, targs, anchors, positives, clock, start)
    name = "sentence-transformers MNRL" + (" (manual loop)" if loop == "manual" else "")
    return Run(name, clock.timed_steps * args.batch_size, clock.seconds, fit, setup, repeat)


def st_trainer_fit(model, loss, targs, anchors, positives, clock: StepClock, start: float) -> tuple[float, float]:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer
    from transformers import TrainerCallback

    class ClockCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            clock.train_start()

        def on_step_end(self, args, state, control, **kwargs):
            clock.step_end()

    data = Dataset.from_dict({"anchor": anchors, "positive": positives})  # column order: anchor, positive
    trainer = SentenceTransformerTrainer(model=model, args=targs, train_dataset=data, loss=loss,
                                         callbacks=[ClockCallback()])
    setup = time.perf_counter() - start
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start, setup


def st_manual_fit(model, loss, targs, anchors, positives, clock: StepClock, start: float) -> tuple[float, float]:
    """What SentenceTransformerTrainer does each step, without the `datasets`/HF Trainer layers: shuffled
    batches tokenized by sentence-transformers' collator, the loss under autocast, backward, optimizer and
    scheduler built from the same TrainingArguments."""
    try:  # sentence-transformers >= 6
        from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator
    except ImportError:
        from sentence_transformers.data_collator import SentenceTransformerDataCollator
    from torch.utils.data import DataLoader
    from transformers import Trainer, get_scheduler

    try:  # sentence-transformers >= 6
        collate = SentenceTransformerDataCollator(preprocess_fn=model.preprocess)
    except TypeError:
        collate = SentenceTransformerDataCollator(tokenize_fn=model.tokenize)
    rows = [{"anchor": a, "positive": p} for a, p in zip(anchors, positives)]
    loader = DataLoader(rows, batch_size=targs.per_device_train_batch_size, shuffle=True, collate_fn=collate,
                        generator=torch.Generator().manual_seed(targs.seed), drop_last=targs.dataloader_drop_last)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [  # as the HF Trainer: no weight decay on biases and LayerNorm weights (the 1-d parameters)
        {"params": [p for p in params if p.ndim > 1], "weight_decay": targs.weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]
    optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(targs, model)
    optimizer = optimizer_cls(groups, **optimizer_kwargs)
    scheduler = get_scheduler(targs.lr_scheduler_type, optimizer, num_warmup_steps=targs.get_warmup_steps(targs.max_steps),
                              num_training_steps=targs.max_steps)
    columns = ("anchor", "positive")
    setup = time.perf_counter() - start

    start = time.perf_counter()
    model.train()
    clock.train_start()
    step = 0
    while step < targs.max_steps:
        for batch in loader:
            features = [{k[len(c) + 1 :]: v for k, v in batch.items() if k.startswith(c + "_")} for c in columns]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=targs.bf16):
                value = loss(features, None)
            value.backward()
            if targs.max_grad_norm and targs.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, targs.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            clock.step_end()
            if step == targs.max_steps:
                break
    return time.perf_counter() - start, setup


# ---- report ---------------------------------------------------------------------------------------------
def summarize(runs: list[Run]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for method in dict.fromkeys(r.method for r in runs):
        mine = [r for r in runs if r.method == method]
        out[method] = {
            "pairs_per_s": statistics.median(r.pairs_per_s for r in mine),
            "pairs_per_s_all": [round(r.pairs_per_s, 3) for r in mine],
            "seconds": statistics.median(r.seconds for r in mine),
            "fit_seconds": statistics.median(r.fit_seconds for r in mine),
            "setup_seconds": statistics.median(r.setup_seconds for r in mine),
            "timed_pairs": mine[0].pairs,
        }
    return out


def format_table(summary: dict[str, dict], repeats: int) -> str:
    rate = "pairs/s" if repeats == 1 else f"pairs/s (median of {repeats})"
    width = max(len(m) for m in summary) + 2
    lines = [f"{'method':<{width}}{rate:>{max(len(rate), 9)}}{'timed s':>10}{'fit s':>9}{'setup s':>10}"]
    for method, s in summary.items():
        lines.append(f"{method:<{width}}{s['pairs_per_s']:>{max(len(rate), 9)}.1f}{s['seconds']:>10.2f}"
                     f"{s['fit_seconds']:>9.2f}{s['setup_seconds']:>10.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="towerrec-bench-"))  # a saved tiny encoder, trainer output
    try:
        return run_benchmark(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_benchmark(args: argparse.Namespace, workdir: Path) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)

    import lightning as L
    import sentence_transformers
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    # the bench's own lines only: no progress bars, load reports or per-fit banners
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "sentence_transformers", "towerrec", "hydra"):
        logging.getLogger(name).setLevel(logging.WARNING)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # lightning vs newer torch, harmless

    from towerrec.data.datamodule import RetrievalDataModule
    from towerrec.data.load import load_split
    from towerrec.data.text import TextConfig, render_items
    from towerrec.model.encoders import load_encoder, resolve_path

    st_loop = args.st_loop
    if st_loop != "manual":
        try:
            import datasets  # noqa: F401  (SentenceTransformerTrainer needs it)

            st_loop = "trainer"
        except ImportError:
            if args.st_loop == "trainer":
                raise SystemExit("--st-loop trainer needs the `datasets` package (pip install datasets)")
            st_loop = "manual"
            log.warning("`datasets` is not installed, so SentenceTransformerTrainer cannot run: timing the same "
                        "collator, loss, optimizer and schedule in a plain loop instead (--st-loop manual)")

    timed_steps = math.ceil(args.pairs / args.batch_size)
    steps = args.warmup_steps + timed_steps
    num_pairs = steps * args.batch_size
    cfg = compose_config(args)
    L.seed_everything(cfg.seed, verbose=False)
    text_cfg = TextConfig.from_dict(cfg.text)

    start = time.perf_counter()
    full = load_split(cfg.data)
    split = users_for_pairs(full, num_pairs, args.seed)
    data_seconds = time.perf_counter() - start

    if args.encoder == "tiny":  # one random init saved to disk, so both sides start from the same weights
        encoder, tokenizer = load_encoder(cfg.model.encoder, corpus=render_items(full.catalog, text_cfg))
        encoder_dir = workdir / "tiny-encoder"
        encoder.save_pretrained(encoder_dir)
        tokenizer.save_pretrained(encoder_dir)
        del encoder
    else:
        encoder_dir = Path(resolve_path(args.encoder))
    tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
    num_layers = int(getattr(AutoConfig.from_pretrained(encoder_dir), "num_hidden_layers", args.freeze_layers))
    freeze = min(args.freeze_layers, num_layers - 1)  # keep one layer trainable, or there is nothing to train
    freezes = [0] + ([freeze] if freeze > 0 else [])
    if freeze != args.freeze_layers:
        log.warning("the encoder has %d layers: freezing %d, not %d", num_layers, freeze, args.freeze_layers)

    # ours: render and tokenize once (train.py caches this on disk), then keep exactly the pairs of the run
    start = time.perf_counter()
    m = cfg.model.datamodule
    dm = RetrievalDataModule(split, tokenizer, text_cfg, batch_size=args.batch_size, eval_batch_size=m.eval_batch_size,
                             item_max_length=args.item_max_length, user_max_length=args.user_max_length,
                             max_history=m.max_history, uniform_negatives=cfg.loss.uniform_negatives, seed=cfg.seed,
                             cache_dir=None, num_workers=0)
    dm.setup("fit")
    keep_train_pairs(dm, num_pairs, args.seed)
    tokenize_seconds = time.perf_counter() - start

    # theirs: the same texts, item texts cut to the tokens our product tower sees
    targets = dm.train_examples.targets
    anchors = dm.user_texts(dm.train_examples)
    cut = {int(i): cut_to_tokens(tokenizer, dm.item_texts[i], args.item_max_length) for i in np.unique(targets)}
    positives = [cut[int(i)] for i in targets]
    probe = load_st_model(encoder_dir, args.user_max_length)
    parity = {"user": token_parity(probe, anchors, dm.user_tokens["train"]),
              "item": token_parity(probe, positives, [dm.item_tokens[i] for i in targets])}
    st_modules = [type(mod).__name__ for mod in probe]
    del probe
    tokens = tokens_per_pair(dm, args.batch_size, cfg.seed)

    env = {"torch": torch.__version__, "lightning": L.__version__, "sentence_transformers": sentence_transformers.__version__,
           "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
           "machine": platform.machine()}
    log.info("encoder %s (%d layers, %s), data %s, %d timed pairs = %d steps x %d after %d warm-up steps",
             args.encoder, num_layers, encoder_dir, split.name, timed_steps * args.batch_size, timed_steps,
             args.batch_size, args.warmup_steps)
    log.info("precision %s on both sides, torch threads %d (of %s CPUs), torch %s, sentence-transformers %s (%s)",
             args.precision, env["torch_threads"], env["cpu_count"], env["torch"], env["sentence_transformers"],
             "SentenceTransformerTrainer" if st_loop == "trainer" else "manual loop")
    log.info("max lengths: user %d, item %d tokens; sentence-transformers max_seq_length=%d (one for both sides; "
             "item texts pre-cut to %d tokens); token parity with ours: user %.1f%%, item %.1f%%",
             args.user_max_length, args.item_max_length, args.user_max_length, args.item_max_length,
             100 * parity["user"], 100 * parity["item"])
    log.info("tokens per pair after padding, user + item: ours %s, sentence-transformers %s, unpadded %s",
             *(f"{t['user']:.1f} + {t['item']:.1f}" for t in tokens.values()))
    log.info("one-time setup: data %.2f s; ours render + pre-tokenize %.2f s (shared by ours' rows, cached on disk "
             "by train.py)", data_seconds, tokenize_seconds)

    runs: list[Run] = []
    for repeat in range(args.repeats):  # interleaved, so drifting machine load hits every method alike
        for freeze in freezes:
            runs.append(run_ours(cfg, args, dm, split, encoder_dir, freeze, steps, repeat))
            log.info("  %-32s %8.1f pairs/s", runs[-1].method, runs[-1].pairs_per_s)
        runs.append(run_st(cfg, args, encoder_dir, anchors, positives, steps, st_loop, workdir / "st", repeat))
        log.info("  %-32s %8.1f pairs/s", runs[-1].method, runs[-1].pairs_per_s)

    summary = summarize(runs)
    theirs = summary[runs[-1].method]["pairs_per_s"]
    ratios = {f"{method} / theirs": s["pairs_per_s"] / theirs for method, s in summary.items() if method.startswith("ours")}
    print("\n" + format_table(summary, args.repeats))
    print("\n".join(f"ratio {k}: {v:.2f}x" for k, v in ratios.items()))
    print(f"(torch threads {env['torch_threads']}, precision {args.precision}, batch {args.batch_size}, "
          f"max lengths user {args.user_max_length} / item {args.item_max_length}; sentence-transformers "
          f"max_seq_length {args.user_max_length}, items pre-cut to {args.item_max_length} tokens)")

    result = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "encoder_dir": str(encoder_dir), "data": split.name, "timed_steps": timed_steps, "total_steps": steps,
        "st_loop": st_loop, "st_modules": st_modules, "freeze_layers_used": freezes, "environment": env,
        "token_parity": parity, "tokens_per_pair": tokens, "one_time_seconds": {"data": data_seconds, "ours_tokenize": tokenize_seconds},
        "methods": summary, "ratios": ratios, "runs": [{**dataclasses.asdict(r), "pairs_per_s": r.pairs_per_s} for r in runs],
    }
    write_results(args.out, result)
    return result


if __name__ == "__main__":
    main()
