"""Load models and tokenizers from a local directory, a Hugging Face hub id or a `.gguf` file.

A `.gguf` file resolves to its cached dequantized folder (`modeling.gguf`), here, in every
process that loads it (Ray workers included).

Weights load from safetensors only (`use_safetensors=True`): a pickle checkpoint is refused
unless the caller passes `allow_pickle=True`. `trust_remote_code` is off unless asked for.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mm4ke_ray.errors import UserError
from mm4ke_ray.modeling.gguf import check_gguf_source, is_gguf, resolve_model_source
from mm4ke_ray.modeling.tokenizer_check import check_auto_tokenizer

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def looks_local(name: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else is meant as a path on this machine.
    return Path(name).exists() or name.startswith((".", "/", "~")) or name.count("/") > 1


def _hub_offline_reason() -> str | None:
    """Why the Hugging Face hub cannot be reached from here (None: it can, as far as a 3 s probe tells)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "the hub is switched off here (HF_HUB_OFFLINE=1)"
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=3).close()
    except OSError as exc:
        return f"the hub at {constants.ENDPOINT} cannot be reached ({exc.__class__.__name__}: {exc})"
    return None


def _in_hub_cache(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(name, "config.json"), str)


def check_model_source(name: str) -> None:
    """Fail early, with the model in the message, for a model that cannot be had from here.

    That is a local path that does not exist, or a hub id that is not in the hub cache while
    the hub is offline or unreachable (transformers would end in an OSError traceback), or a
    GGUF file transformers cannot load.
    """
    if is_gguf(name):
        check_gguf_source(name)
        return
    if looks_local(name):
        if not Path(name).expanduser().exists():
            raise UserError(f"model path '{name}' does not exist (give a local directory or a hub id like "
                            "'Qwen/Qwen2.5-7B-Instruct')")
        return
    if _in_hub_cache(name):
        return
    if reason := _hub_offline_reason():
        raise UserError(
            f"model '{name}' is neither a local folder nor in the Hugging Face cache, and {reason}; "
            f"download it where the hub is reachable (hf download {name}) or give a local folder "
            "that holds config.json and *.safetensors"
        )


def load_tokenizer(name: str, trust_remote_code: bool = False):
    """The tokenizer a user gets: plain `AutoTokenizer.from_pretrained(name)`.

    It is compared with the tokenizer.json saved in `name` (`tokenizer_check`). Where they differ
    (transformers rebuilds some model types' tokenizers from the vocabulary, see
    `tokenizer_check`), no user of `name` can use AutoTokenizer's result either: a
    TokenizerMismatchWarning names the cause and the fix and the tokenizer.json is loaded as saved,
    which is what such a user has to do too. The demo and every export round-trip (tested).
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    check_model_source(name)
    name = resolve_model_source(name)
    try:
        tok = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except OSError as exc:  # e.g. a hub id that does not exist, or the hub went away meanwhile
        raise UserError(f"cannot load the tokenizer of model '{name}': {str(exc).splitlines()[0]}; give a local "
                        "folder or a hub id that exists (and is reachable)") from exc
    except ValueError as exc:
        if "custom code" not in str(exc) and "trust_remote_code" not in str(exc):
            raise
        raise UserError(f"the tokenizer of model '{name}' needs its own Python code (tokenizer_config.json auto_map); "
                        "set trust_remote_code only if you have read and trust that code") from None
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
    name = resolve_model_source(name)
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
