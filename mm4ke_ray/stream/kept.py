"""A stream's kept rounds on disk and the one way a round is merged.

Round t's folder holds its raw R-SFT delta Δ_t = θ_sft − θ_{t-1} (`delta.safetensors`, the
round's merge settings in its header) and its R-SFT log. `merge_round_` is the only code that
adds a round to a model, for the live stream and for the rebuild alike, so the rebuild of round
t from the base repeats exactly the float operations the stream made (bit-identical on the same
device and dtype). `weights_digest` fingerprints the touched tensors to prove it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from mm4ke_ray.atomic_write import write_text_atomic
from mm4ke_ray.delta import DELTA_FILE, load_delta, save_delta
from mm4ke_ray.errors import UserError
from mm4ke_ray.merge import add_update_, prepare_delta
from mm4ke_ray.stream.base_weights import BaseWeights
from mm4ke_ray.stream.settings import RoundSettings

MANIFEST = "stream.json"
RSFT_LOG = "rsft.json"


def round_dir(root: str | Path, t: int) -> Path:
    return Path(root) / f"round{t:02d}"


def merge_round_(model: nn.Module, delta: Mapping[str, torch.Tensor], alpha: float, sparsity: float,
                 method: str, seed: int, base: BaseWeights | None = None) -> None:
    """θ ← θ + (1 − α) · sparsify(Δ), in place and for good: the round's merged model is the
    next round's base. `base`, if given, copies the tensors' values first (to put them back later)."""
    if base is not None:
        base.keep(delta)
    device = next(model.parameters()).device
    delta = {k: v.to(device) for k, v in delta.items()}
    add_update_(model, prepare_delta(delta, alpha, sparsity, method, seed))


def save_round(root: str | Path, t: int, delta: Mapping[str, torch.Tensor], settings: RoundSettings,
               rsft_log: dict) -> Path:
    """Write round t's delta (merge settings and R-SFT config in its header) and R-SFT log."""
    folder = round_dir(root, t)
    meta = {"round": t, "merge": settings.merge_record(), "rsft": settings.rsft.model_dump()}
    save_delta(folder, dict(delta), meta)
    (folder / RSFT_LOG).write_text(json.dumps(rsft_log, indent=2, default=str) + "\n")
    return folder / DELTA_FILE


def load_round(root: str | Path, t: int) -> tuple[dict[str, torch.Tensor], dict]:
    """Round t's delta and its merge record (alpha, sparsity, method, seed)."""
    delta, meta = load_delta(round_dir(root, t))
    if meta.get("round") != t or "merge" not in meta:
        raise UserError(f"{round_dir(root, t) / DELTA_FILE} is not round {t} of a stream (its header says "
                        f"round {meta.get('round')!r}); was the stream folder changed by hand?")
    return delta, meta["merge"]


def weights_digest(model: nn.Module, names: Iterable[str]) -> str:
    """sha256 over the bytes of the named parameters, in sorted order."""
    params = dict(model.named_parameters())
    digest = hashlib.sha256()
    for name in sorted(set(names)):
        tensor = params[name].detach().contiguous().cpu()
        digest.update(name.encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_manifest(root: str | Path) -> dict:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise UserError(f"'{root}' is not a stream folder: it has no {MANIFEST} (the output of `mm4ke-ray stream`)")
    return json.loads(path.read_text())


def write_manifest(root: str | Path, manifest: dict) -> Path:
    return write_text_atomic(Path(root) / MANIFEST, json.dumps(manifest, indent=2, default=str) + "\n")
