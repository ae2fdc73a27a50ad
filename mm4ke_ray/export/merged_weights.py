"""Write base + (1 − α) · sparsify(Δ) to a directory, tensor by tensor when the base allows it.

`write_merged` uses `merge.checkpoint_merge.merge_checkpoint` (no model is built; one checkpoint
tensor in memory at a time) whenever the base is a local safetensors directory or a hub id
already in the local Hugging Face cache. Only a base with `.bin` weights only, or one that cannot be resolved
to local files, falls back to building the model (`build_merged` + `save_merged`).

Output dtype: as `build_merged` has always written it, every floating tensor in `dtype`
(float32 by default, so a bf16 base is upcast). When the checkpoint already is in `dtype`, its
shards are copied byte for byte and only the delta's byte ranges rewritten.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from mm4ke_ray.delta import load_delta
from mm4ke_ray.errors import UserError
from mm4ke_ray.merge.apply import prepare_delta, validate_merge_params
from mm4ke_ray.merge.checkpoint_merge import (
    DTYPES,
    checkpoint_shards,
    merge_checkpoint,
    read_header,
)
from mm4ke_ray.merge.merged_model import MERGE_INFO_FILE, build_merged, save_merged
from mm4ke_ray.merge.methods import get_sparsifier
from mm4ke_ray.modeling.gguf import resolve_model_source


@dataclass
class Written:
    info: dict  # the merge record (as build_merged's; `files` added when streamed)
    update: dict  # (1 − α) · sparsify(Δ) per tensor, for the weight check after writing
    streamed: bool  # False: the model was built (fallback)


def local_checkpoint(name: str) -> Path | None:
    """`name` as a local directory holding safetensors weights, or None (then build the model)."""
    path = Path(resolve_model_source(name)).expanduser()
    if not path.is_dir():
        path = _hub_snapshot(name)
        if path is None:
            return None
    try:
        checkpoint_shards(path)
    except UserError:  # .bin only, or no weights: the model loader handles (or explains) it
        return None
    return path


def _hub_snapshot(name: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    patterns = ["*.json", "*.safetensors", "*.py", "*.txt", "*.model", "*.tiktoken", "tokenizer*"]
    try:
        return Path(snapshot_download(name, local_files_only=True, allow_patterns=patterns))
    except Exception:  # noqa: BLE001 - not in the cache (or not a repo id): try the hub if allowed
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return None
    try:
        return Path(snapshot_download(name, allow_patterns=patterns))
    except Exception:  # noqa: BLE001 - unreachable or unknown: the model loader says why
        return None


def _stream_dtype(base_dir: Path, dtype: str | None) -> str | None:
    """None (keep the bytes) when every floating tensor of the checkpoint already is `dtype`."""
    if dtype is None:
        return None
    want = DTYPES.get(dtype, dtype)
    for shard in checkpoint_shards(base_dir):
        entries, _ = read_header(shard)
        if any(e.dtype.is_floating_point and e.dtype != want for e in entries.values()):
            return dtype
    return None


def write_merged(
    base: str,
    out: Path,
    *,
    delta_dir: str | Path,
    alpha: float,
    sparsity: float,
    method: str,
    seed: int,
    dtype: str,
    device: str = "cpu",
    trust_remote_code: bool = False,
) -> Written:
    """Write the merge of `base` and the delta in `delta_dir` into the (empty) directory `out`."""
    validate_merge_params(alpha, sparsity)
    get_sparsifier(method)
    base_dir = local_checkpoint(base)
    if base_dir is None:
        result = build_merged(
            base, delta_dir=delta_dir, alpha=alpha, sparsity=sparsity, method=method, seed=seed,
            dtype=dtype, device=device, trust_remote_code=trust_remote_code,
        )  # fmt: skip
        save_merged(result.model, base, out, result.info)
        return Written(result.info, result.update, streamed=False)

    delta, meta = load_delta(delta_dir)
    info = merge_checkpoint(
        base_dir, out, delta, alpha=alpha, sparsity=sparsity, method=method, seed=seed,
        dtype=_stream_dtype(base_dir, dtype), info={"delta": str(delta_dir), "delta_metadata": meta},
    )  # fmt: skip
    # The record names the base as the user gave it, and the dtype the weights are in.
    info = {**info, "base": str(base), "base_path": str(base_dir), "dtype": dtype}
    (out / MERGE_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    # Made again on purpose, over the whole delta as the sweep's in-memory merge makes it: the
    # weight check compares the file (its updates made shard by shard) with this reference.
    update = prepare_delta(delta, alpha, sparsity, method, seed)
    return Written(info, update, streamed=True)
