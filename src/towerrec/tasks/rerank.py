"""`python train.py stage=rerank artifact=PATH`: fine-tune the listwise LM reranker (LoRA) on the artifact's
retrieval lists, evaluate it against retrieval alone, and write the rerank directory serving loads."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from towerrec import evaluation
from towerrec.data.load import load_split
from towerrec.rerank.evaluate import evaluate_rerank, summary_table
from towerrec.rerank.finetune import FinetuneConfig, add_lora, build_examples, encode_examples, finetune
from towerrec.rerank.lm import is_int8, load_lm
from towerrec.rerank.reranker import ADAPTER_DIR, Reranker, RerankSettings, save_rerank_dir
from towerrec.retrieval import Retriever
from towerrec.utils.hydra import instantiate_loggers
from towerrec.utils.io import to_plain

log = logging.getLogger(__name__)


def artifact_path(cfg) -> Path:
    """The exported two-tower artifact of `artifact=PATH`; a clear error when unset or not an artifact."""
    path = cfg.get("artifact")
    if not path:
        raise ValueError("stage=rerank needs the exported two-tower artifact: artifact=PATH "
                         "(e.g. artifact=logs/train/runs/<run>/artifact)")
    path = Path(str(path)).expanduser()
    if not (path / "manifest.json").is_file():
        raise FileNotFoundError(f"artifact={path}: not an exported artifact directory (no manifest.json)")
    return path


def run_rerank(cfg: DictConfig) -> tuple[dict[str, float], dict]:
    """`python train.py stage=rerank artifact=PATH`: fine-tune the listwise reranker with LoRA, save the adapter
    to `<run_dir>/adapter/`, then (`evaluate: true`) evaluate it against retrieval alone and write the rerank
    directory (see `evaluate_finetuned`). `rerank.finetune.enabled=false` skips training: the core's
    `evaluate_zero_shot` evaluates the zero-shot reranker instead. Metrics go to metrics.json in the
    run directory and to the configured loggers."""
    art_path = artifact_path(cfg)
    node = OmegaConf.to_container(cfg.rerank.finetune, resolve=True)
    enabled = bool(node.pop("enabled", True))
    ft = FinetuneConfig.from_dict(node)
    settings = RerankSettings.from_config(cfg.rerank)
    if settings.scorer != "listwise":
        raise ValueError(f"rerank fine-tuning trains the listwise scorer; rerank.scorer={settings.scorer!r}")
    if enabled and is_int8(settings.dtype):
        raise ValueError("rerank.dtype=int8 is for inference; fine-tune in rerank.dtype=float32 or bfloat16 "
                         "(the trained reranker can be served in int8)")
    run_dir = Path(cfg.paths.output_dir)
    metrics: dict[str, float] = {}
    objects: dict = {}
    start = time.perf_counter()
    loggers = instantiate_loggers(cfg.get("logger"))
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    if enabled:
        num_candidates = ft.num_candidates or settings.top_n
        split = load_split(to_plain(cfg.data))
        retriever = Retriever(art_path)
        model, tokenizer = load_lm({**settings.lm_config(), "adapter": None})  # LoRA is trained from the base
        examples = build_examples(split, retriever, ft, num_candidates, seed=ft.seed)
        encoded = encode_examples(examples, tokenizer, settings.prompt)
        lengths = [len(e.input_ids) for e in encoded]
        log.info("%d listwise examples of %d candidates; prompt tokens mean %.0f, max %d", len(encoded),
                 num_candidates, np.mean(lengths), max(lengths))
        model = add_lora(model, ft)
        metrics = finetune(model, tokenizer, encoded, ft, loggers, checkpoint_dir=run_dir / "checkpoints")
        metrics["rerank/train_prompt_tokens_mean"] = float(np.mean(lengths))
        adapter_dir = run_dir / "adapter"
        model.save_pretrained(adapter_dir)  # adapter_config.json + adapter_model.safetensors
        log.info("saved the LoRA adapter to %s", adapter_dir)
        with open_dict(cfg):
            cfg.rerank.adapter = str(adapter_dir)
        model = model.merge_and_unload().eval()  # the fine-tuned LM as served (adapter merged)
        objects = {"adapter": adapter_dir, "model": model, "tokenizer": tokenizer, "examples": len(encoded)}
    if not enabled:  # zero-shot evaluation only
        chosen, eval_objects = evaluate_zero_shot(cfg)
        metrics.update(chosen)
        objects.update(eval_objects)
    elif ft.evaluate:
        chosen, eval_objects = evaluate_finetuned(cfg, split, retriever, model, tokenizer, settings, adapter_dir,
                                                  zero_shot=ft.compare_zero_shot)
        metrics.update(chosen)
        objects.update(eval_objects)
    metrics["time/seconds"] = time.perf_counter() - start
    evaluation.save_metrics(run_dir / "metrics.json", metrics)
    for lg in loggers:
        lg.log_metrics(metrics)
        lg.finalize("success")
    print("\nrerank stage (" + str(run_dir) + ")\n" + evaluation.format_table(metrics))
    return metrics, objects


def evaluate_finetuned(cfg, split, retriever, model, tokenizer, settings, adapter_dir: Path, zero_shot: bool = False
                       ) -> tuple[dict[str, float], dict]:
    """Evaluate the fine-tuned reranker with `towerrec.rerank.evaluate.evaluate_rerank` (fusion weight tuned on
    validation users, the same seeded users for every method) and write the rerank directory (`rerank.dir`,
    default `<artifact>/rerank`): rerank.json with the tuned weight and metrics, the adapter copied in.
    `zero_shot`: also score the base LM (twice the LM time) for the zero-shot rows."""
    base_cfg = {**to_plain(cfg.rerank), "adapter": None}
    tuned = Reranker(model, tokenizer, settings)
    if zero_shot:
        report = evaluate_rerank(base_cfg, retriever, split, cfg.get("eval"), adapter=adapter_dir)
    else:  # only the fine-tuned model: its rows renamed finetuned_*
        report = evaluate_rerank(base_cfg, retriever, split, cfg.get("eval"), reranker=tuned)
        report["metrics"] = {("finetuned_" + k if k in ("lm", "fused") else k): v
                             for k, v in report["metrics"].items()}
        report["fusion"] = {"finetuned_" + k: v for k, v in report["fusion"].items()}
    print(summary_table(report))
    out = Path(cfg.rerank.get("dir") or Path(retriever.artifact.path) / "rerank")
    out.mkdir(parents=True, exist_ok=True)
    if (out / ADAPTER_DIR).exists():
        shutil.rmtree(out / ADAPTER_DIR)
    shutil.copytree(adapter_dir, out / ADAPTER_DIR)
    settings = dataclasses.replace(settings, weight=float(report["fusion"]["finetuned_weight"]))
    chosen = dict(report["metrics"]["finetuned_fused"])
    retrieval = report["metrics"]["retrieval"]
    for key in ("val/ndcg@10", "test/ndcg@10", "test/recall@10"):
        chosen[f"retrieval_{key}"] = retrieval[key]
    save_rerank_dir(out, settings, metrics=chosen, extra={"report": report})
    log.info("rerank directory written to %s", out)
    return chosen, {"report": report, "dir": out}


def evaluate_zero_shot(cfg: DictConfig) -> tuple[dict[str, float], dict]:
    """`stage=rerank`: evaluate reranking of `cfg.artifact` on cfg.data and write `<artifact>/rerank/`
    (or `rerank.dir`): rerank.json with the tuned fusion weight and metrics, adapter/ when `rerank.adapter`."""
    if not cfg.get("artifact"):
        raise ValueError("stage=rerank needs artifact=<an exported artifact directory>")
    retriever = Retriever(cfg.artifact)
    split = load_split(to_plain(cfg.data))
    adapter = cfg.rerank.get("adapter")
    base_cfg = {**to_plain(cfg.rerank), "adapter": None}
    report = evaluate_rerank(base_cfg, retriever, split, cfg.get("eval"), adapter=adapter)
    print(summary_table(report))
    out = Path(cfg.rerank.get("dir") or Path(cfg.artifact) / "rerank")
    settings = RerankSettings.from_config(base_cfg)
    prefix = "finetuned_" if adapter else ""
    settings = dataclasses.replace(settings, weight=report["fusion"][f"{prefix}weight"])
    if adapter:
        if (out / ADAPTER_DIR).exists():
            shutil.rmtree(out / ADAPTER_DIR)
        shutil.copytree(adapter, out / ADAPTER_DIR)
    chosen = report["metrics"][f"{prefix}fused"]
    save_rerank_dir(out, settings, metrics=chosen, extra={"report": report})
    log.info("rerank directory written to %s", out)
    return chosen, {"report": report, "dir": out}
