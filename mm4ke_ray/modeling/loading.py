"""Load models and tokenizers from a local directory or a Hugging Face hub id.

Weights load from safetensors only (`use_safetensors=True`): a pickle checkpoint is refused
unless the caller passes `allow_pickle=True`. `trust_remote_code` is off unless asked for.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mm4ke_ray.errors import UserError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _looks_local(name: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else is meant as a path on this machine.
    return Path(name).exists() or name.startswith((".", "/", "~")) or name.count("/") > 1


def check_model_source(name: str) -> None:
    """Fail early, with the path in the message, for a local model path that does not exist."""
    if _looks_local(name) and not Path(name).expanduser().exists():
        raise UserError(f"model path '{name}' does not exist (give a local directory or a hub id like 'Qwen/Qwen2.5-7B-Instruct')")


def _is_word_level(name: str) -> bool:
    """True for a local tokenizer.json with a WordLevel model (the project's tiny/demo tokenizers)."""
    path = Path(name).expanduser() / "tokenizer.json"
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("model", {}).get("type") == "WordLevel"
    except (OSError, ValueError):
        return False


def load_tokenizer(name: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    check_model_source(name)
    # transformers 5 maps model_type qwen2 to Qwen2Tokenizer whatever tokenizer_config.json says,
    # and that class rebuilds a byte-level BPE from the vocab, which breaks a word-level tokenizer
    # (most words become unknown). No real LLM uses WordLevel, so load those files as saved.
    if _is_word_level(name):
        tok = PreTrainedTokenizerFast.from_pretrained(name)
    else:
        tok = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    name: str,
    dtype: str = "float32",
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
):
    """An eval-mode causal LM with every parameter frozen."""
    from transformers import AutoModelForCausalLM

    check_model_source(name)
    if dtype not in _DTYPES:
        raise UserError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            name,
            dtype=_DTYPES[dtype],
            use_safetensors=None if allow_pickle else True,
            trust_remote_code=trust_remote_code,
        )
    except (OSError, ValueError) as exc:
        msg = str(exc)
        if "trust_remote_code" in msg:
            raise UserError(f"model '{name}' needs custom code; set trust_remote_code: true only if you trust it") from exc
        if "safetensors" in msg.lower() and not allow_pickle:
            raise UserError(f"model '{name}' has no safetensors weights; pickle checkpoints are refused unless allow_pickle is set") from exc
        raise UserError(f"cannot load model '{name}': {msg.splitlines()[0]}") from exc
    model.to(device).eval()
    model.requires_grad_(False)
    return model
