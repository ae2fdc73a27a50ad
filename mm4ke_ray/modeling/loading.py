"""Load models and tokenizers from a local directory or a Hugging Face hub id.

Weights load from safetensors only (`use_safetensors=True`): a pickle checkpoint is refused
unless the caller passes `allow_pickle=True`. `trust_remote_code` is off unless asked for.
"""

from __future__ import annotations

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


def load_tokenizer(name: str, trust_remote_code: bool = False):
    """The tokenizer a user gets: plain `AutoTokenizer.from_pretrained(name)`.

    It is compared with the tokenizer.json saved in `name` (`tokenizer_check`). Where they differ
    (transformers rebuilds some model types' tokenizers from the vocabulary, see
    `tokenizer_check`), no user of `name` can use AutoTokenizer's result either: a
    TokenizerMismatchWarning names the cause and the fix and the tokenizer.json is loaded as saved,
    which is what such a user has to do too. The demo and every export round-trip (tested).
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from mm4ke_ray.modeling.tokenizer_check import check_auto_tokenizer

    check_model_source(name)
    tok = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    if check_auto_tokenizer(name, strict=False, tokenizer=tok) is not None:
        tok = PreTrainedTokenizerFast.from_pretrained(name)
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
