"""Build a merged model from a base plus a delta (or a fine-tuned model) and save it to disk.

This is for export and inspection. During a sweep, candidates are merged in place on a resident
base model (`apply_delta_` / `restore_`) and never written to disk.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from mm4ke_ray.delta import load_delta
from mm4ke_ray.errors import UserError
from mm4ke_ray.merge.apply import (
    add_update_,
    delta_from_models,
    prepare_delta,
    validate_merge_params,
)
from mm4ke_ray.merge.methods import DEFAULT_SPARSIFIER, get_sparsifier
from mm4ke_ray.modeling import load_model, load_tokenizer
from mm4ke_ray.schema import ALPHA, DENSITY, SPARSITY

MERGE_INFO_FILE = "mm4ke_merge.json"
# Files a tokenizer is saved as, across fast, sentencepiece and tiktoken tokenizers.
_TOKENIZER_GLOBS = (
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.*",
    "merges.txt",
    "chat_template.*",
    "*.tiktoken",
    "spiece.model",
    "sentencepiece*.model",
)


@dataclass
class MergeResult:
    """The merged model and a JSON-serialisable record of how it was made."""

    model: nn.Module
    info: dict
    update: dict | None = None  # the (1 − α) · sparsify(Δ) that was added, for checks after writing


def merge_params(alpha: float, sparsity: float, method: str, seed: int) -> dict:
    """The merge's parameters as a merge record states them (in-memory and streamed merges alike)."""
    return {
        ALPHA: float(alpha),
        "delta_scale": 1.0 - float(alpha),
        # Both names, as the paper's "sparsity" is ambiguous (DESIGN.md §1).
        SPARSITY: float(sparsity),
        DENSITY: 1.0 - float(sparsity),
        "method": method,
        "seed": int(seed),
    }


def build_merged(
    base: str,
    *,
    delta_dir: str | Path | None = None,
    sft: str | None = None,
    alpha: float,
    sparsity: float,
    method: str = DEFAULT_SPARSIFIER,
    seed: int = 0,
    dtype: str = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
) -> MergeResult:
    """Load `base`, add (1 − α) · sparsify(Δ) for Δ from `delta_dir` or from `sft` − `base`.

    Give exactly one of `delta_dir` (an R-SFT delta file or directory) and `sft` (a fine-tuned
    model with the base's architecture; its delta covers every tensor that differs). Parameters
    are checked before any model is loaded.
    """
    validate_merge_params(alpha, sparsity)
    get_sparsifier(method)
    if (delta_dir is None) == (sft is None):
        raise UserError(
            "give exactly one of delta_dir (an R-SFT delta) and sft (a fine-tuned model)"
        )
    load = dict(dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    if delta_dir is not None:
        delta, delta_meta = load_delta(delta_dir)
        source = {"delta": str(delta_dir), "delta_metadata": delta_meta}
        model = load_model(base, **load)
    else:
        model = load_model(base, **load)
        sft_model = load_model(sft, **load)
        delta, source = delta_from_models(model, sft_model), {"sft": str(sft)}
        del sft_model
    if not delta:
        raise UserError(
            f"the delta from {source.get('delta') or source.get('sft')!r} is empty: nothing to merge"
        )
    update = prepare_delta(delta, alpha, sparsity, method, seed)
    add_update_(model, update)
    info = {
        "base": str(base),
        **source,
        **merge_params(alpha, sparsity, method, seed),
        "dtype": dtype,
        "tensors": sorted(update),
        "kept_entries": sum(int(u.count_nonzero()) for u in update.values()),
        "total_entries": sum(u.numel() for u in update.values()),
    }
    return MergeResult(model, info, update)


def build_merged_model(base: str, **kwargs) -> nn.Module:
    """The merged model of `build_merged` (same keyword arguments), without the record."""
    return build_merged(base, **kwargs).model


def _copy_tokenizer_files(src: Path, out: Path) -> list[str]:
    copied = []
    for pattern in _TOKENIZER_GLOBS:
        for f in sorted(src.glob(pattern)):
            if f.is_file():
                shutil.copy2(f, out / f.name)
                copied.append(f.name)
    return copied


def save_merged(model: nn.Module, tokenizer, out_dir: str | Path, info: dict | None = None) -> Path:
    """Write a Hugging Face directory (config + safetensors) that `from_pretrained` loads.

    `tokenizer` is a tokenizer object (saved with `save_pretrained`) or the base model's local
    directory / hub id: from a directory its tokenizer files are copied byte for byte (a reload
    and re-save can change a tokenizer's class and pre-tokenizer in transformers 5). `info`, if
    given, is written as `mm4ke_merge.json`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    if isinstance(tokenizer, (str, Path)):
        src = Path(tokenizer).expanduser()
        if not (src.is_dir() and _copy_tokenizer_files(src, out)):
            load_tokenizer(str(tokenizer)).save_pretrained(out)
    elif tokenizer is not None:
        tokenizer.save_pretrained(out)
    if info is not None:
        (out / MERGE_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return out
