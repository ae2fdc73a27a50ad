"""The R-SFT delta on disk: `{tensor_name: θ_sft − θ_base}` for the trained tensors only.

Stored as one safetensors file; `metadata` (JSON-serialisable) travels in its header so a delta
file alone says which base model, layer and hyperparameters produced it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mm4ke_ray.errors import UserError

DELTA_FILE = "delta.safetensors"
_META_KEY = "mm4ke_ray"


def _file(path: str | Path) -> Path:
    path = Path(path)
    return path / DELTA_FILE if path.is_dir() or path.suffix != ".safetensors" else path


def save_delta(path: str | Path, delta: dict[str, torch.Tensor], metadata: dict | None = None) -> Path:
    """Write `delta` to `path` (a directory gets `delta.safetensors` inside it)."""
    file = _file(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in delta.items()}
    save_file(tensors, str(file), metadata={_META_KEY: json.dumps(metadata or {})})
    return file


def load_delta(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a delta written by `save_delta`: (tensors, metadata)."""
    file = _file(path)
    if not file.exists():
        raise UserError(f"delta file '{file}' does not exist (expected the output directory of `mm4ke-ray rsft`)")
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get(_META_KEY, "{}"))
    return load_file(str(file)), meta
