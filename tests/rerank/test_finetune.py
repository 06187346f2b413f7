"""LoRA fine-tuning of the listwise reranker (towerrec.rerank.finetune): configuration errors, training
examples (training pairs only, target among hard negatives, shuffled), the training prompt and label logits
equal to what the listwise scorer reads, the label-token loss by hand, LoRA on the top layers only, and the
`stage=rerank` pipeline end to end (adapter + rerank.json that `Reranker.from_dir` loads).

A 2-layer random Llama with the byte tokenizer (`rerank.model_path=random_init`) and an untrained tiny
two-tower artifact over the conftest synthetic split: seconds, no weights."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from towerrec.rerank import finetune as F
from towerrec.rerank import lm as lm_mod
from towerrec.rerank import prompts as P
from towerrec.rerank.scoring import ListwiseScorer

ROOT = Path(__file__).resolve().parents[2]
TINY = {"model_path": "random_init", "device": "cpu", "dtype": "float32"}
TINY_BERT = {"vocab_size": 300, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 32, "max_position_embeddings": 128}
PROMPT = P.PromptConfig(history_items=3, max_item_tokens=12)

pytestmark = pytest.mark.usefixtures("one_thread_faiss")


@pytest.fixture(scope="module")
def tiny_lm():
    return lm_mod.load_lm(TINY)


def tiny_artifact(split, path: Path):
    """An exported artifact of an untrained tiny two-tower model over `split` (fixed random vectors)."""
    from towerrec.artifact.export import export_artifact
    from towerrec.data.text import TextConfig, render_items
    from towerrec.model.encoders import load_encoder
    from towerrec.model.towers import TwoTower

    text = TextConfig(user_max_items=3, user_max_tokens=48)
    torch.manual_seed(0)
    encoder, tok = load_encoder({"random_init": dict(TINY_BERT)}, corpus=render_items(split.catalog, text))
    return export_artifact(path, TwoTower(encoder).eval(), tok, split, text, item_max_length=32,
                              user_max_length=48, progress=False)


@pytest.fixture(scope="module")
def retriever(tiny_split, tmp_path_factory):
    from towerrec.retrieval import Retriever

    return Retriever(tiny_artifact(tiny_split, tmp_path_factory.mktemp("art") / "artifact"))


@pytest.fixture(scope="module")
def examples(tiny_split, retriever):
    cfg = F.FinetuneConfig.from_dict({"num_examples": 40, "random_negatives": 2})
    return F.build_examples(tiny_split, retriever, cfg, num_candidates=8, seed=0, progress=False)


# ---------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize("bad, match", [
    ({"lr_rate": 1}, "unknown rerank.finetune option"),
    ({"lora": {"rank": 4}}, r"lora\.rank"),
    ({"loss": "pairwise"}, "rerank.finetune.loss"),
    ({"batch_size": 0}, "rerank.finetune.batch_size"),
    ({"num_candidates": 1}, "num_candidates"),
    ({"lora": {"r": 0}}, "rerank.finetune.lora"),
    ({"lora": {"top_layers": 0}}, "top_layers"),
    ({"max_steps": 0}, "max_steps"),
])
def test_config_errors_name_the_option(bad, match):
    with pytest.raises(ValueError, match=match):
        F.FinetuneConfig.from_dict(bad)


def test_the_config_file_parses():
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(OmegaConf.load(ROOT / "conf/rerank/finetune/default.yaml"))
    node.pop("enabled")
    node["seed"] = 0  # ${seed} lives in train.yaml
    cfg = F.FinetuneConfig.from_dict(node)
    assert cfg.loss == "labels" and cfg.lora.target_modules[0] == "q_proj"


# ------------------------------------------------------------------------------------------------ data


def test_examples_hold_the_training_target_among_hard_negatives(tiny_split, retriever, examples):
    pairs = tiny_split.train_pairs(50)
    ids = tiny_split.catalog.item_ids
    train_pairs = {(tuple(ids[h]), ids[t]) for h, t in zip(pairs.histories, pairs.targets)}
    positions = []
    for ex in examples:
        history = tuple(h["item_id"] for h in ex.history)
        target = ex.candidates[ex.target]["item_id"]
        assert (history, target) in train_pairs  # training pairs only: no validation or test target
        cand_ids = [c["item_id"] for c in ex.candidates]
        assert len(cand_ids) == 8 and len(set(cand_ids)) == 8
        assert not set(cand_ids) & set(history)  # history excluded, as in evaluation
        vec = retriever.embed_user(list(history))
        seen = set(retriever.artifact.row_ids[retriever.history_positions(history)].tolist())
        rows = [r for r, _ in retriever.search(vec[None], 6, [seen])[0]]
        ranked = retriever.items.iloc[retriever.artifact.positions_of_rows(rows)]["item_id"].tolist()
        assert set(ranked[:5]) <= set(cand_ids)  # the retrieved hard negatives ...
        assert ranked[5] in cand_ids or target not in ranked  # ... the weakest replaced when retrieval missed
        positions.append(ex.target)
    assert len(examples) == 40 and len(set(positions)) >= 5  # shuffled: the label says nothing by position


def test_training_logits_are_what_the_listwise_scorer_reads(tiny_lm, examples):
    model, tok = tiny_lm
    scorer = ListwiseScorer(model, tok, PROMPT, permutations=1, seed=0)
    for ex in examples[:3]:
        hist, cands = P.render_items(ex.history, PROMPT, tok), P.render_items(ex.candidates, PROMPT, tok)
        order = scorer.orders(cands)[0]
        shown = F.ListwiseExample(ex.history, [ex.candidates[i] for i in order], int(np.argsort(order)[ex.target]))
        enc = F.encode_examples([shown], tok, PROMPT)[0]
        batch = F.collate([enc], tok.pad_token_id)
        with torch.inference_mode():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           position_ids=batch["position_ids"], logits_to_keep=1).logits[:, -1]
        train_lp = torch.log_softmax(logits[0, batch["label_ids"][0]].double(), -1).numpy()  # by label shown
        scores = scorer.score([hist], [cands])[0]  # by candidate, in given order
        np.testing.assert_allclose(train_lp, scores[order], rtol=1e-5, atol=1e-6)
        assert shown.candidates[shown.target]["item_id"] == ex.candidates[ex.target]["item_id"]


def test_collate_pads_left_and_counts_positions_over_real_tokens():
    a = F.EncodedExample([5, 6, 7], [1, 2], 0)
    b = F.EncodedExample([8], [3, 4], 1)
    batch = F.collate([a, b], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]
    assert batch["label_ids"].tolist() == [[1, 2], [3, 4]] and batch["targets"].tolist() == [0, 1]
    with pytest.raises(ValueError, match="same number of candidates"):
        F.collate([a, F.EncodedExample([1], [1, 2, 3], 0)], 0)


# ------------------------------------------------------------------------------------------------ loss


def test_label_loss_by_hand():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0], [1.0, 0.0, 0.0, 0.0]])  # (B=2, V=4)
    label_ids = torch.tensor([[1, 2], [0, 3]])  # (B, C=2)
    targets = torch.tensor([1, 1])
    loss, acc = F.label_loss(logits, label_ids, targets, "labels")
    # row 0: labels logits (1, 2), target 2 -> -log(e^2/(e+e^2)); row 1: (1, 0), target 0 -> -log(1/(e+1))
    expected = (-math.log(math.e**2 / (math.e + math.e**2)) - math.log(1 / (math.e + 1))) / 2
    assert loss.item() == pytest.approx(expected) and acc.item() == 0.5
    vocab_loss, _ = F.label_loss(logits, label_ids, targets, "vocab")
    z0, z1 = sum(math.exp(v) for v in (0, 1, 2, 3)), math.e + 3
    assert vocab_loss.item() == pytest.approx((-math.log(math.e**2 / z0) - math.log(1 / z1)) / 2)
    with pytest.raises(ValueError, match="loss must be one of"):
        F.label_loss(logits, label_ids, targets, "hinge")


# ------------------------------------------------------------------------------------------------ LoRA


def test_lora_on_the_top_layers_only_and_unknown_modules_are_named():
    model, _ = lm_mod.load_lm(TINY)
    peft_model = F.add_lora(model, F.FinetuneConfig.from_dict({"lora": {"top_layers": 1, "r": 2}}))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all(".layers.1." in n and "lora_" in n for n in trainable)
    assert all(p.dtype == torch.float32 for n, p in peft_model.named_parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="not modules of"):
        F.add_lora(lm_mod.load_lm(TINY)[0], F.FinetuneConfig.from_dict({"lora": {"target_modules": ["qkv"]}}))


def test_finetune_learns_and_touches_only_the_adapters(examples):
    model, tok = lm_mod.load_lm(TINY)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = F.FinetuneConfig.from_dict({"lr": 3e-2, "batch_size": 4, "epochs": 24, "warmup_steps": 0, "log_every": 1,
                                      "lora": {"r": 4, "alpha": 8, "dropout": 0.0}})
    encoded = F.encode_examples(examples[:4], tok, PROMPT)

    class Recorder:
        def __init__(self):
            self.rows = []

        def log_metrics(self, metrics, step):
            self.rows.append((step, metrics))

    peft_model = F.add_lora(model, cfg)
    rec = Recorder()
    stats = F.finetune(peft_model, tok, encoded, cfg, loggers=[rec], progress=False)
    assert stats["rerank/train_steps"] == 24 and stats["rerank/train_examples_seen"] == 96
    assert stats["rerank/train_loss_last10pct"] < stats["rerank/train_loss_first"] - 0.2  # it learns 4 lists
    assert [s for s, _ in rec.rows] == list(range(1, 25)) and "rerank/train_loss" in rec.rows[0][1]
    merged = peft_model.merge_and_unload()
    changed = [n for n, p in merged.named_parameters() if not torch.equal(p, base[n])]
    assert changed and all(any(m in n for m in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                "down_proj")) for n in changed)


# ----------------------------------------------------------------------------------------- stage=rerank


@pytest.fixture
def compose(tmp_path):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    def _compose(overrides: list[str], run_dir: Path):
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = hydra_compose("train", overrides=[f"paths.log_dir={tmp_path / 'logs'}",
                                                    f"paths.cache_dir={tmp_path / 'cache'}", *overrides],
                                return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(run_dir)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
        return cfg

    yield _compose
    HydraConfig.instance().cfg = None


SMALL_WORLD = ["data.num_items=60", "data.num_users=50", "data.max_len=8", "data.user_id_secret=test-secret"]
STAGE = ["stage=rerank", "++artifact=ART", "rerank.model_path=random_init", "rerank.dtype=float32", "rerank.top_n=6",
         "rerank.prompt.max_item_tokens=10", "rerank.prompt.history_items=2", "rerank.finetune.num_examples=8",
         "rerank.finetune.batch_size=4", "rerank.finetune.lora.r=2", "rerank.eval.valid_users=12",
         "rerank.eval.test_users=12", "rerank.eval.grid=[0.0,0.5,1.0]", "logger=csv"]


def test_stage_rerank_without_an_artifact_says_what_to_pass(compose, tmp_path):
    from towerrec.tasks.train import train

    cfg = compose([*SMALL_WORLD, *(o for o in STAGE if not o.startswith("++artifact"))], tmp_path / "run")
    with pytest.raises(ValueError, match="artifact=PATH"):
        train(cfg)
    cfg = compose([*SMALL_WORLD, *STAGE], tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        train(cfg)


def test_stage_rerank_trains_saves_and_evaluates_an_adapter(compose, tmp_path):
    from towerrec.data.load import load_split
    from towerrec.rerank.reranker import Reranker
    from towerrec.tasks.train import train

    probe = compose(SMALL_WORLD, tmp_path / "probe")
    art = tiny_artifact(load_split(probe.data), tmp_path / "artifact")
    run_dir = tmp_path / "run"
    cfg = compose([*SMALL_WORLD, *(o.replace("ART", str(art)) for o in STAGE), f"rerank.dir={tmp_path / 'rr'}"],
                  run_dir)
    metrics, objects = train(cfg)
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "rr" / "adapter" / "adapter_config.json").is_file()
    record = json.loads((tmp_path / "rr" / "rerank.json").read_text())
    weight = record["config"]["fusion"]["weight"]
    assert weight in (0.0, 0.5, 1.0) and weight == record["report"]["fusion"]["finetuned_weight"]
    assert set(record["report"]["metrics"]) == {"retrieval", "finetuned_lm", "finetuned_fused"}
    assert metrics["rerank/train_steps"] == 2 and metrics["val/num_users"] == 12
    assert metrics["val/ndcg@10"] >= metrics["retrieval_val/ndcg@10"] - 1e-12  # w=0 is in the grid
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["test/ndcg@10"] == pytest.approx(metrics["test/ndcg@10"])
    assert (run_dir / "csv" / "metrics.csv").read_text().count("rerank/train_loss") >= 1
    # the rerank directory serves the fine-tuned model: same LM scores as the model the stage trained
    served = Reranker.from_dir(tmp_path / "rr")
    hist = [{"title": "Widget one", "brand": "Acme"}]
    cands = [{"title": f"Gadget {i}", "brand": "Acme", "score": 1.0 - 0.1 * i} for i in range(6)]
    expected = Reranker(objects["model"], objects["tokenizer"], served.settings).lm_scores([hist], [cands])[0]
    np.testing.assert_allclose(served.lm_scores([hist], [cands])[0], expected, rtol=1e-5, atol=1e-6)
