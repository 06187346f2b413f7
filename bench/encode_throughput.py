"""Catalog encoding throughput: towerrec's export path against sentence-transformers' encode().

Both sides embed the same item texts with the same model (the packaged all-MiniLM-L6-v2 by default), the
same batch size and the same max length, in one process, and report items/s:

  ours   towerrec.model.encode.encode_texts over the product tower, as `export_artifact` calls it: the texts are
         tokenized once up front, sorted by token length, padded per batch, run under torch.no_grad in eval
         mode, then L2-normalised (normalize_rows).
  theirs SentenceTransformer(path).encode(texts, batch_size=..., normalize_embeddings=True): sorts by
         character length and tokenizes each batch itself, under torch.inference_mode.

The timed region is the whole call on both sides, texts in, float32 matrix out (tokenization included).
Runs are interleaved (ours, theirs, theirs, ours, ...) and the medians reported. --precision bf16 wraps
both calls in torch.autocast("cpu", dtype=torch.bfloat16); neither model is cast with .half()/.bfloat16().
The script checks that the two sides produce the same embeddings (per-row cosine > 0.99, in fp32) and the
same token ids, so that the comparison is between equal work.

    python bench/encode_throughput.py                                 # synthetic catalog, all items, MiniLM
    python bench/encode_throughput.py --items 500 --repeats 1         # smoke run
    python bench/encode_throughput.py --data scientific --precision bf16 --repeats 5 --out bench/results/encode.json

Nothing is downloaded: `minilm` is the packaged all-MiniLM-L6-v2 (towerrec.model.encoders.resolve_path).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the network, before transformers is imported
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import contextlib
import logging
import platform
import statistics
import time
import warnings
from pathlib import Path

import common  # noqa: E402  (bench/ is on sys.path when run as a script)
import numpy as np
import torch
from common import write_results  # noqa: E402

PARITY_MIN_COSINE = 0.99
log = logging.getLogger("encode_throughput")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="synthetic", help="data config group under conf/data (synthetic, scientific, ...)")
    p.add_argument("--data-path", default=None, help="override data.path (datasets read from disk)")
    p.add_argument("--encoder", default="minilm", help="minilm (packaged all-MiniLM-L6-v2) or a local "
                   "sentence-transformers model directory (mean pooling)")
    p.add_argument("--items", type=int, default=None, help="encode this many catalog items (seeded sample; "
                   "default: the whole catalog)")
    p.add_argument("--batch-size", type=int, default=None, help="both sides (default: the config's "
                   "model.datamodule.eval_batch_size, which export uses)")
    p.add_argument("--max-length", type=int, default=None, help="tokens per item text, both sides (default: "
                   "the config's model.datamodule.item_max_length)")
    p.add_argument("--precision", choices=("32", "bf16"), default="32", help="fp32, or bf16 autocast on both sides")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each side, interleaved; medians reported")
    p.add_argument("--warmup-items", type=int, default=64, help="untimed encode of this many texts per side first")
    p.add_argument("--check-items", type=int, default=256, help="with --precision bf16: texts encoded again in "
                   "fp32 on both sides for the embedding parity check")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0, help="which items are sampled")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra Hydra override of the towerrec config (repeatable), e.g. --set data.num_items=20000")
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)
    for name in ("items", "batch_size", "max_length", "repeats", "check_items"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup_items < 0:
        p.error("--warmup-items must be >= 0")
    return args


def compose_config(args: argparse.Namespace):
    """The project's own Hydra config (defaults for text rendering, optimizer, scheduler, loss)."""
    return common.compose_config(args.data, args.data_path, args.set)


def autocast(precision: str):
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---- the two sides --------------------------------------------------------------------------------------
def encode_ours(tower, tokenizer, texts: list[str], max_length: int, batch_size: int, precision: str) -> np.ndarray:
    """export_artifact's catalog encoding: encode_texts over the product tower, then normalize_rows."""
    from towerrec.model.encode import encode_texts, normalize_rows

    ids = np.arange(len(texts), dtype=np.int64)
    with autocast(precision):
        emb = encode_texts(tower, tokenizer, texts, max_length, batch_size, item_idx=ids)
    return normalize_rows(emb)


def encode_st(model, texts: list[str], batch_size: int, precision: str) -> np.ndarray:
    with autocast(precision):
        emb = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                           show_progress_bar=False)
    return np.asarray(emb, dtype=np.float32)


def row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


# ---- token accounting -----------------------------------------------------------------------------------
def token_parity(st_model, texts: list[str], ours: list[np.ndarray], batch_size: int = 256) -> float:
    """Fraction of texts that sentence-transformers tokenizes to exactly our token ids."""
    tokenize = getattr(st_model, "preprocess", None) or st_model.tokenize  # preprocess: sentence-transformers >= 6
    same = 0
    for start in range(0, len(texts), batch_size):
        enc = tokenize(texts[start : start + batch_size])
        for row, mask in enumerate(enc["attention_mask"].bool()):
            same += np.array_equal(enc["input_ids"][row][mask].numpy(), ours[start + row])
    return same / max(len(texts), 1)


def padded_tokens(order: np.ndarray, lengths: np.ndarray, batch_size: int) -> float:
    """Mean tokens per text once each batch of `order` is padded to its longest text."""
    total = sum(len(b) * lengths[b].max() for b in np.array_split(order, range(batch_size, len(order), batch_size)))
    return float(total / len(order))


def tokens_per_item(st_model, texts: list[str], tokens: list[np.ndarray], batch_size: int) -> dict[str, float]:
    """Padded tokens per item: ours (sorted by token count, as encode_texts), sentence-transformers (sorted by
    character count, as its encode, interleaved long/short when it flattens inputs) and unpadded."""
    lengths = np.array([len(t) for t in tokens])
    ours = np.argsort(lengths, kind="stable")
    theirs = np.argsort([-len(t) for t in texts])
    if getattr(st_model, "_can_flatten_inputs", lambda: False)():
        theirs = st_model._interleave_sorted_indices(theirs)
    return {"ours": padded_tokens(ours, lengths, batch_size), "theirs": padded_tokens(theirs, lengths, batch_size),
            "unpadded": float(lengths.mean())}


# ---- main -----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import sentence_transformers
    import transformers
    from sentence_transformers import SentenceTransformer

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("sentence_transformers", "towerrec", "hydra", "faiss", "faiss.loader"):
        logging.getLogger(name).setLevel(logging.WARNING)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    from towerrec.data.load import load_split
    from towerrec.data.text import TextConfig, render_items
    from towerrec.data.tokens import tokenize
    from towerrec.model.encoders import load_encoder, resolve_path
    from towerrec.model.towers import TwoTower

    cfg = compose_config(args)
    dmc = cfg.model.datamodule
    batch_size = args.batch_size or int(dmc.eval_batch_size)
    max_length = args.max_length or int(dmc.item_max_length)

    start = time.perf_counter()
    split = load_split(cfg.data)
    texts = render_items(split.catalog, TextConfig.from_dict(cfg.text))
    if args.items is not None:
        if args.items > len(texts):
            raise SystemExit(f"--items {args.items}: {split.name} has {len(texts)} items (synthetic data: "
                             f"--set data.num_items=N makes more)")
        rows = np.sort(np.random.default_rng(args.seed).choice(len(texts), args.items, replace=False))
        texts = [texts[i] for i in rows]
    data_seconds = time.perf_counter() - start

    encoder_dir = resolve_path(args.encoder)
    start = time.perf_counter()
    encoder, tokenizer = load_encoder({"name_or_path": encoder_dir})
    tower = TwoTower(encoder, pooling="mean", projection_dim=None).item_tower  # the tower export encodes with
    tower.eval()
    ours_load = time.perf_counter() - start
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st = SentenceTransformer(encoder_dir, device="cpu")
    st.max_seq_length = max_length
    st.eval()
    st_load = time.perf_counter() - start
    st_modules = [type(m).__name__ for m in st]

    tokens = tokenize(tokenizer, texts, max_length)
    parity_tokens = token_parity(st, texts, tokens)
    padding = tokens_per_item(st, texts, tokens, batch_size)
    env = {"torch": torch.__version__, "sentence_transformers": sentence_transformers.__version__,
           "transformers": transformers.__version__, "torch_threads": torch.get_num_threads(),
           "cpu_count": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine(),
           "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    log.info("%s: %d item texts (rendered in %.2f s), encoder %s, sentence-transformers modules %s",
             split.name, len(texts), data_seconds, encoder_dir, " > ".join(st_modules))
    log.info("batch size %d, max length %d tokens (sentence-transformers max_seq_length=%d); token parity %.1f%%; "
             "padded tokens per item: ours %.1f, sentence-transformers %.1f, unpadded %.1f",
             batch_size, max_length, st.max_seq_length, 100 * parity_tokens, padding["ours"], padding["theirs"],
             padding["unpadded"])
    log.info("precision %s (%s), torch threads %d of %s CPUs, torch %s, sentence-transformers %s%s",
             args.precision, "bf16 autocast around both calls" if args.precision == "bf16" else "no autocast",
             env["torch_threads"], env["cpu_count"], env["torch"], env["sentence_transformers"],
             f", load average {env['load_average'][0]:.1f}" if env["load_average"] else "")

    sides = {
        "ours (towerrec export)": lambda t: encode_ours(tower, tokenizer, t, max_length, batch_size, args.precision),
        "sentence-transformers": lambda t: encode_st(st, t, batch_size, args.precision),
    }
    names = list(sides)
    if args.warmup_items:
        for fn in sides.values():
            fn(texts[: args.warmup_items])
    seconds: dict[str, list[float]] = {name: [] for name in names}
    outputs: dict[str, np.ndarray] = {}
    for repeat in range(args.repeats):  # interleaved, alternating order, so drifting load hits both alike
        for name in names if repeat % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            outputs[name] = sides[name](texts)
            seconds[name].append(time.perf_counter() - start)
            log.info("  %-24s %9.1f items/s  (repeat %d)", name, len(texts) / seconds[name][-1], repeat + 1)

    # embedding parity: in fp32 always (a subset when the timed runs were bf16)
    cos_timed = row_cosine(outputs[names[0]], outputs[names[1]])
    if args.precision == "32":
        cos_fp32 = cos_timed
    else:
        subset = texts[: args.check_items]
        fp32 = {name: (encode_ours(tower, tokenizer, subset, max_length, batch_size, "32") if i == 0
                       else encode_st(st, subset, batch_size, "32")) for i, name in enumerate(names)}
        cos_fp32 = row_cosine(fp32[names[0]], fp32[names[1]])
        bf16_drift = row_cosine(outputs[names[0]][: len(subset)], fp32[names[0]])
    parity_ok = bool(cos_fp32.min() > PARITY_MIN_COSINE)

    summary = {name: {"items_per_s": len(texts) / statistics.median(seconds[name]),
                      "seconds": statistics.median(seconds[name]),
                      "items_per_s_all": [round(len(texts) / s, 2) for s in seconds[name]]} for name in names}
    ratio = summary[names[0]]["items_per_s"] / summary[names[1]]["items_per_s"]
    rate = "items/s" if args.repeats == 1 else f"items/s (median of {args.repeats})"
    width = max(len(n) for n in names) + 2
    print(f"\n{'method':<{width}}{rate:>{max(len(rate), 10)}}{'seconds':>10}{'load s':>9}")
    for name, load in zip(names, (ours_load, st_load)):
        s = summary[name]
        print(f"{name:<{width}}{s['items_per_s']:>{max(len(rate), 10)}.1f}{s['seconds']:>10.2f}{load:>9.2f}")
    print(f"ratio ours / sentence-transformers: {ratio:.2f}x")
    bf16_note = " (torch.autocast cpu bf16 around both encode calls)" if args.precision == "bf16" else ""
    print(f"({len(texts)} items of {split.name}, batch {batch_size}, max length {max_length}, precision "
          f"{args.precision}{bf16_note}, "
          f"torch threads {env['torch_threads']}; padded tokens per item: ours {padding['ours']:.1f}, "
          f"sentence-transformers {padding['theirs']:.1f})")
    n_check = len(cos_fp32)
    print(f"embedding parity (fp32, {n_check} items): per-row cosine min {cos_fp32.min():.6f}, mean "
          f"{cos_fp32.mean():.6f} -> {'ok' if parity_ok else 'FAILED'} (> {PARITY_MIN_COSINE}); "
          f"token parity {100 * parity_tokens:.1f}%")
    if args.precision == "bf16":
        print(f"bf16 runs: ours vs sentence-transformers cosine min {cos_timed.min():.6f}, "
              f"mean {cos_timed.mean():.6f}; "
              f"ours bf16 vs fp32 cosine min {bf16_drift.min():.6f}, mean {bf16_drift.mean():.6f}")
    if not parity_ok:
        worst = int(np.argmin(cos_fp32))
        print(f"PARITY FAILED: row {worst} {texts[worst][:80]!r} has cosine {cos_fp32[worst]:.4f}; the two sides do "
              "not compute the same embeddings, so the throughput comparison is not like for like")

    result = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "data": split.name, "items": len(texts), "batch_size": batch_size, "max_length": max_length,
        "encoder_dir": encoder_dir, "st_modules": st_modules, "environment": env, "methods": summary,
        "ratio_ours_over_theirs": ratio, "load_seconds": {"ours": ours_load, "theirs": st_load},
        "padded_tokens_per_item": padding, "token_parity": parity_tokens,
        "embedding_parity": {"fp32_min_cosine": float(cos_fp32.min()), "fp32_mean_cosine": float(cos_fp32.mean()),
                             "checked_items": n_check, "ok": parity_ok,
                             "timed_min_cosine": float(cos_timed.min())},
    }
    write_results(args.out, result)
    if not parity_ok:
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main()
