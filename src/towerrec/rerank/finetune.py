"""LoRA fine-tuning of the listwise LM reranker (run by `python train.py stage=rerank artifact=PATH`,
`towerrec.tasks.rerank`).

Data. Training examples are (history -> next item) pairs of the TRAINING part of the split only (the last
two items of every user, the validation and test targets, are never seen). For each sampled pair the exported
two-tower artifact's `Retriever` embeds the history exactly as serving does and retrieves the top candidates,
history excluded: these are hard negatives. The true next item replaces the weakest retrieved candidate
when retrieval missed it (optionally `random_negatives` slots hold random catalog items instead), and the
list is shuffled (seeded), so the label letter carries no position information.

Prompt and loss. The prompt is the reranker's own listwise prompt (`prompts.render_items` +
`prompts.listwise_prompt`, the `rerank.prompt` settings), so training and inference read the same text. The
loss is on the label token only: cross-entropy of the next-token logits at the last prompt position,
restricted to the candidates' label letters (`loss=labels`, exactly the scores `scoring.ListwiseScorer`
reads) or over the whole vocabulary (`loss=vocab`). Positions are counted over real tokens under left
padding, as the scorer does.

LoRA. peft adapters on the configured projection modules of the frozen base LM (bf16 on CPUs with native
bf16, adapters in float32), optionally only in the top `lora.top_layers` layers: nothing below them needs a
gradient, so the backward pass stops there (on CPU that halves a step). AdamW with linear warm-up and decay,
gradient clipping, gradient accumulation. Metrics (loss, label accuracy, learning rate) go to the configured
loggers every `log_every` steps, with a tqdm bar. The adapter is saved with `save_pretrained` (safetensors)
into `<run_dir>/adapter/`; `checkpoint_every` also saves intermediate adapters under `<run_dir>/checkpoints/`.

Evaluation (`evaluate: true`). The merged fine-tuned model is evaluated by the core's
`towerrec.rerank.evaluate.evaluate_rerank` on seeded validation/test users (fusion weight tuned on the
validation users over a grid that includes 0), rows `retrieval`, `finetuned_lm`, `finetuned_fused` (plus the
zero-shot rows with `compare_zero_shot`), and the rerank directory (`rerank.dir`, default
`<artifact>/rerank`) gets rerank.json (tuned weight, metrics, report) and a copy of the adapter, which
`Reranker.from_dir` merges on load.

Public API:
    FinetuneConfig.from_dict(cfg.rerank.finetune)
    build_examples(split, retriever, cfg, num_candidates, seed) -> list[ListwiseExample]
    encode_examples(examples, tokenizer, prompt_cfg) -> list[EncodedExample]
    label_loss(logits, label_ids, targets, mode) -> (loss, accuracy)       pure
    add_lora(model, cfg) -> peft model
    finetune(model, tokenizer, encoded, cfg, loggers=(), checkpoint_dir=None) -> dict of training stats
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from towerrec.rerank import prompts as P
from towerrec.utils.io import unknown_fields

log = logging.getLogger(__name__)

LOSSES = ("labels", "vocab")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    top_layers: int | None = None  # adapt only the top N transformer layers (None: all): backward stops there


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """The `rerank.finetune` node (conf/rerank/finetune/default.yaml documents every key)."""

    lora: LoraConfig = LoraConfig()
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup_steps: int = 10
    epochs: int = 1
    max_steps: int | None = None
    num_examples: int = 1000
    num_candidates: int | None = None  # None: rerank.top_n
    random_negatives: int = 0
    max_history: int = 50  # history items kept per example (the prompt shows the newest few)
    batch_size: int = 4
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    loss: str = "labels"
    log_every: int = 10
    checkpoint_every: int = 0
    seed: int = 0
    evaluate: bool = True
    compare_zero_shot: bool = False  # evaluation also scores the base LM (twice the LM time)

    @classmethod
    def from_dict(cls, d: Mapping | None) -> FinetuneConfig:
        d = dict(d or {})
        lora = dict(d.pop("lora", None) or {})
        if lora.get("target_modules") is not None:
            lora["target_modules"] = tuple(lora["target_modules"])
        unknown = unknown_fields(cls, d) | {f"lora.{k}" for k in unknown_fields(LoraConfig, lora)}
        if unknown:
            raise ValueError(f"unknown rerank.finetune option(s) {sorted(unknown)}")
        cfg = cls(lora=LoraConfig(**lora), **d)
        positive = ("lr", "epochs", "num_examples", "batch_size", "grad_accum", "log_every")
        for name in positive:
            if not getattr(cfg, name) > 0:
                raise ValueError(f"rerank.finetune.{name} must be positive, got {getattr(cfg, name)}")
        if cfg.lora.top_layers is not None and cfg.lora.top_layers < 1:
            raise ValueError(f"rerank.finetune.lora.top_layers must be positive or null, got {cfg.lora.top_layers}")
        if cfg.lora.r < 1 or cfg.lora.alpha <= 0 or not 0 <= cfg.lora.dropout < 1 or not cfg.lora.target_modules:
            raise ValueError(f"rerank.finetune.lora needs r >= 1, alpha > 0, 0 <= dropout < 1 and target modules, "
                             f"got {cfg.lora}")
        if cfg.loss not in LOSSES:
            raise ValueError(f"rerank.finetune.loss must be one of {LOSSES}, got {cfg.loss!r}")
        if cfg.max_steps is not None and cfg.max_steps < 1:
            raise ValueError(f"rerank.finetune.max_steps must be positive or null, got {cfg.max_steps}")
        if cfg.num_candidates is not None and not 2 <= cfg.num_candidates <= len(P.LABELS):
            raise ValueError(f"rerank.finetune.num_candidates must be in [2, {len(P.LABELS)}], got {cfg.num_candidates}")
        if cfg.random_negatives < 0 or cfg.max_history < 1:
            raise ValueError("rerank.finetune.random_negatives must be >= 0 and max_history >= 1")
        return cfg


# -------------------------------------------------------------------------------------------------- data


@dataclasses.dataclass(frozen=True)
class ListwiseExample:
    history: list[dict]  # product dicts, oldest first
    candidates: list[dict]  # shown in this order
    target: int  # index of the true next item in `candidates`


@dataclasses.dataclass(frozen=True)
class EncodedExample:
    input_ids: list[int]  # the listwise prompt, ending where the label letter comes next
    label_ids: list[int]  # token id of each candidate's label, in the order shown
    target: int


def item_dicts(items, positions: Sequence[int]) -> list[dict]:
    """Product dicts (Retriever.recommend's fields) of artifact table positions."""
    rows = items.iloc[list(positions)]
    out = []
    for row in rows.itertuples(index=False):
        price = float(row.price) if row.price is not None else math.nan
        out.append({"item_id": row.item_id, "title": row.title, "brand": row.brand, "category": row.category,
                    "price": None if math.isnan(price) else price, "row_id": int(row.row_id)})
    return out


def build_examples(split, retriever, cfg: FinetuneConfig, num_candidates: int, seed: int = 0,
                   progress: bool = True) -> list[ListwiseExample]:
    """`cfg.num_examples` listwise examples from training pairs (seeded order; repeat purchases skipped),
    candidates = the target + retrieved hard negatives (+ random ones), shuffled."""
    if num_candidates - cfg.random_negatives < 1:
        raise ValueError(f"random_negatives={cfg.random_negatives} leaves no room in {num_candidates} candidates")
    art = retriever.artifact
    pairs = split.train_pairs(cfg.max_history)
    if len(pairs) == 0:
        raise ValueError(f"{split.name}: no training pairs (every user's training part has fewer than 2 items)")
    rng = np.random.default_rng(seed)
    to_pos = art.position_of_item.get_indexer(split.catalog.item_ids)  # split item -> artifact position
    # pairs in a seeded random order; a repeat purchase (target already in the history) is never a candidate
    # at inference, and items missing from the artifact cannot be shown: both are skipped
    histories, targets = [], []
    skipped = 0
    for i in rng.permutation(len(pairs)):
        hist, target = to_pos[pairs.histories[i]], int(to_pos[pairs.targets[i]])
        if target < 0 or not (hist >= 0).any() or target in hist:
            skipped += 1
            continue
        histories.append(hist[hist >= 0])
        targets.append(target)
        if len(targets) == cfg.num_examples:
            break
    if not targets:
        raise ValueError(f"{split.name}: every training pair is a repeat purchase or unknown to the artifact")
    log.info("%d training pairs (%d skipped: repeat purchases or items missing from the artifact)", len(targets),
             skipped)
    n_retrieved = num_candidates - cfg.random_negatives
    examples = []
    for start in tqdm(range(0, len(targets), 64), desc="hard negatives", unit="batch", disable=not progress):
        hist = histories[start : start + 64]
        vecs = retriever.embed_histories(hist)  # (B, D)
        seen = [set(art.row_ids[h].tolist()) for h in hist]
        hits = retriever.search(vecs, n_retrieved, seen)
        for target, h, found in zip(targets[start : start + 64], hist, hits):
            cand = art.positions_of_rows([r for r, _ in found]).tolist()
            if target not in cand:
                cand[-1] = target  # retrieval missed it: it takes the weakest candidate's place
            pool = np.setdiff1d(np.arange(art.num_items), np.concatenate([cand, h]))
            cand += rng.choice(pool, size=min(cfg.random_negatives, len(pool)), replace=False).tolist()
            cand = [cand[i] for i in rng.permutation(len(cand))]
            examples.append(ListwiseExample(item_dicts(retriever.items, h), item_dicts(retriever.items, cand),
                                            cand.index(target)))
    return examples


def encode_examples(examples: Sequence[ListwiseExample], tokenizer, prompt_cfg: P.PromptConfig
                    ) -> list[EncodedExample]:
    """Token ids of each example's listwise prompt (exactly the scorer's), with its label token ids."""
    out = []
    for ex in examples:
        prompt = P.listwise_prompt(P.render_items(ex.history, prompt_cfg, tokenizer),
                                   P.render_items(ex.candidates, prompt_cfg, tokenizer), prompt_cfg, tokenizer)
        out.append(EncodedExample(tokenizer.encode(prompt.text, add_special_tokens=False),
                                  P.label_token_ids(tokenizer, prompt.labels), ex.target))
    return out


# ------------------------------------------------------------------------------------------------ training


def label_loss(logits: torch.Tensor, label_ids: torch.Tensor, targets: torch.Tensor, mode: str = "labels"
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean cross-entropy, accuracy) of the label token. logits (B, V) at the last prompt position;
    label_ids (B, C) each row's candidate label tokens; targets (B,) index of the true candidate.
    'labels': softmax over the row's label tokens only; 'vocab': over the whole vocabulary."""
    logits = logits.float()
    label_logits = logits.gather(1, label_ids)  # (B, C)
    accuracy = (label_logits.argmax(-1) == targets).float().mean()
    if mode == "labels":
        loss = torch.nn.functional.cross_entropy(label_logits, targets)
    elif mode == "vocab":
        loss = torch.nn.functional.cross_entropy(logits, label_ids.gather(1, targets[:, None])[:, 0])
    else:
        raise ValueError(f"loss must be one of {LOSSES}, got {mode!r}")
    return loss, accuracy


def collate(batch: Sequence[EncodedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded input_ids/attention_mask/position_ids (B, L) (positions count real tokens only, as the
    scorer's), label_ids (B, C) and targets (B,). Every example of a batch has the same number of labels."""
    length = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), length), dtype=torch.long)
    for i, e in enumerate(batch):
        ids[i, length - len(e.input_ids) :] = torch.tensor(e.input_ids)
        mask[i, length - len(e.input_ids) :] = 1
    if len({len(e.label_ids) for e in batch}) != 1:
        raise ValueError("examples of one batch must have the same number of candidates")
    return {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0),
            "label_ids": torch.tensor([e.label_ids for e in batch]),
            "targets": torch.tensor([e.target for e in batch])}


def add_lora(model, cfg: FinetuneConfig):
    """The base model frozen, with trainable LoRA adapters (float32) on `cfg.lora.target_modules`."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in cfg.lora.target_modules if m not in names]
    if missing:
        raise ValueError(f"rerank.finetune.lora.target_modules {missing} are not modules of "
                         f"{type(model).__name__} (e.g. {sorted(n for n in names if n.endswith('proj'))})")
    layers = None
    if cfg.lora.top_layers:
        n = int(model.config.num_hidden_layers)
        layers = list(range(max(0, n - cfg.lora.top_layers), n))
    lora = PeftLoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                          target_modules=list(cfg.lora.target_modules), bias="none", task_type="CAUSAL_LM",
                          layers_to_transform=layers, layers_pattern="layers" if layers else None)
    peft_model = get_peft_model(model, lora)
    for p in peft_model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return peft_model


def _log(loggers: Sequence, metrics: dict[str, float], step: int) -> None:
    for lg in loggers:
        lg.log_metrics(metrics, step=step)


def finetune(model, tokenizer, encoded: Sequence[EncodedExample], cfg: FinetuneConfig, loggers: Sequence = (),
             checkpoint_dir: str | Path | None = None, progress: bool = True) -> dict[str, float]:
    """Train the LoRA adapters of `model` (a peft model) on `encoded`; returns training stats."""
    if not encoded:
        raise ValueError("no training examples")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters: call add_lora first")
    steps_per_epoch = math.ceil(len(encoded) / (cfg.batch_size * cfg.grad_accum))
    total = cfg.max_steps or steps_per_epoch * cfg.epochs
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = min(cfg.warmup_steps, max(total - 1, 0))

    def lr_factor(step: int) -> float:  # linear warm-up, then linear decay to 10%
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.1, 1.0 - 0.9 * (step - warmup) / max(total - warmup, 1))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    device = next(model.parameters()).device
    rng = np.random.default_rng(cfg.seed)
    model.train()
    step, seen, start = 0, 0, time.perf_counter()
    window: list[tuple[float, float]] = []
    history: list[tuple[float, float]] = []
    bar = tqdm(total=total, desc="rerank fine-tune", unit="step", disable=not progress)
    while step < total:
        order = rng.permutation(len(encoded))
        batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        for first in range(0, len(batches), cfg.grad_accum):
            group = batches[first : first + cfg.grad_accum]
            optimizer.zero_grad(set_to_none=True)
            n_group = sum(len(b) for b in group)
            loss_sum, acc_sum = 0.0, 0.0
            for b in group:
                batch = collate([encoded[i] for i in b], tokenizer.pad_token_id)
                out = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                            position_ids=batch["position_ids"].to(device), logits_to_keep=1, use_cache=False)
                loss, acc = label_loss(out.logits[:, -1, :], batch["label_ids"].to(device),
                                       batch["targets"].to(device), cfg.loss)  # logits (B, V)
                (loss * len(b) / n_group).backward()
                loss_sum += loss.detach().item() * len(b)
                acc_sum += acc.item() * len(b)
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            step += 1
            seen += n_group
            window.append((loss_sum / n_group, acc_sum / n_group))
            history.append(window[-1])
            bar.update(1)
            if step % cfg.log_every == 0 or step == total:
                loss_avg, acc_avg = np.mean(window, axis=0)
                bar.set_postfix(loss=f"{loss_avg:.3f}", acc=f"{acc_avg:.2f}")
                _log(loggers, {"rerank/train_loss": float(loss_avg), "rerank/train_label_acc": float(acc_avg),
                               "rerank/lr": scheduler.get_last_lr()[0]}, step)
                window = []
            if checkpoint_dir and cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                model.save_pretrained(Path(checkpoint_dir) / f"adapter_step{step:06d}")
            if step >= total:
                break
    bar.close()
    model.eval()
    seconds = time.perf_counter() - start
    tail = np.mean(history[-max(1, len(history) // 10) :], axis=0)
    return {"rerank/train_steps": float(step), "rerank/train_examples_seen": float(seen),
            "rerank/train_seconds": seconds, "rerank/train_loss_first": history[0][0],
            "rerank/train_loss_last10pct": float(tail[0]), "rerank/train_label_acc_last10pct": float(tail[1])}
