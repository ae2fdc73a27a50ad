"""Merge a delta into a safetensors checkpoint tensor by tensor, without building the model.

`merge_checkpoint(base_dir, out_dir, delta, alpha=…, sparsity=…)` writes the same weights as
`build_merged` + `save_merged` (θ + (1 − α) · sparsify(Δ), one rounding per parameter), but:
- shards without a delta tensor are copied as files (byte for byte);
- a shard with delta tensors is copied, then only those tensors' byte ranges are rewritten (the
  merged tensor keeps its dtype and shape, so the header and offsets do not change);
- with `dtype` set, every shard is rewritten tensor by tensor in that dtype instead;
- sharded checkpoints stay sharded (the index json is rewritten), and config, generation and
  tokenizer files are copied.
Only one tensor of the checkpoint is in memory at a time (plus the delta and, for random
sparsifiers, their update), so a 70B merge needs the memory of its largest tensor, not its size.
Ray-free and model-free: it never imports transformers.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from mm4ke_ray.errors import UserError
from mm4ke_ray.merge.apply import (
    _prepare,
    _unknown_name_error,
    check_delta_tensor,
    validate_merge_params,
)
from mm4ke_ray.merge.merged_model import _TOKENIZER_GLOBS, MERGE_INFO_FILE, merge_params
from mm4ke_ray.merge.methods import DEFAULT_SPARSIFIER, get_sparsifier

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Besides the tokenizer's files: what a Hugging Face model directory needs next to its weights.
_SIDE_FILES = ("config.json", "generation_config.json", "*.py")

# safetensors dtype names (https://github.com/huggingface/safetensors, format).
_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}
# The dtypes a merged checkpoint may be written in (export/merged_weights.py checks a base
# against them).
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class _Entry:
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int  # byte offsets in the file (header included)
    end: int


def read_header(path: Path) -> tuple[dict[str, _Entry], dict | None]:
    """The tensors of a safetensors file (name → dtype, shape, byte range) and its metadata."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise UserError(f"{path} is not a safetensors file (too short)")
        (size,) = struct.unpack("<Q", raw)
        try:
            header = json.loads(f.read(size))
        except ValueError as exc:
            raise UserError(f"{path} is not a safetensors file (unreadable header: {exc})") from exc
    metadata = header.pop("__metadata__", None)
    start = 8 + size
    entries = {}
    for name, e in header.items():
        if e["dtype"] not in _ST_DTYPES:
            raise UserError(f"{path}: tensor '{name}' has dtype {e['dtype']}, not supported here")
        begin, end = e["data_offsets"]
        entries[name] = _Entry(_ST_DTYPES[e["dtype"]], tuple(e["shape"]), start + begin, start + end)
    return entries, metadata


def checkpoint_shards(base_dir: Path) -> list[Path]:
    """The safetensors files of a Hugging Face directory, in index order (or the single file)."""
    index = base_dir / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise UserError(f"{index} has no 'weight_map'")
        names = list(dict.fromkeys(weight_map.values()))
        missing = [n for n in names if not (base_dir / n).is_file()]
        if missing:
            raise UserError(f"{index} names shard(s) that are missing: {', '.join(missing[:3])}")
        return [base_dir / n for n in names]
    if (base_dir / SINGLE_FILE).is_file():
        return [base_dir / SINGLE_FILE]
    found = sorted(p.name for p in base_dir.glob("*.bin")) + sorted(p.name for p in base_dir.glob("*.pt*"))
    hint = f" (it has {', '.join(found[:3])}: re-save it with save_pretrained(safe_serialization=True))" if found else ""
    raise UserError(f"{base_dir} has neither {SINGLE_FILE} nor {INDEX_FILE}{hint}")


def _merged(base: torch.Tensor, update: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # What loading the model in `dtype` and apply._add_ do: θ cast to `dtype` first, then
    # cast(float32(θ) + update) back to `dtype`, one rounding.
    param = base.to(dtype)
    work = torch.promote_types(dtype, torch.float32)
    return (param.to(work) + update.to(work)).to(dtype)


def _as_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def _write_safetensors(path: Path, layout: list[tuple[str, torch.dtype, tuple]], tensors: Iterator[torch.Tensor], metadata: dict | None) -> int:
    """Write a safetensors file whose tensors (in `layout` order) come one at a time."""
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, dtype, shape in layout:
        size = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": _ST_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for (name, dtype, shape), tensor in zip(layout, tensors, strict=True):
            if tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
                raise RuntimeError(f"tensor '{name}' changed dtype or shape while writing")
            f.write(_as_bytes(tensor))
    return offset


def merge_checkpoint(
    base_dir: str | Path,
    out_dir: str | Path,
    delta: Mapping[str, torch.Tensor],
    *,
    alpha: float,
    sparsity: float,
    method: str = DEFAULT_SPARSIFIER,
    seed: int = 0,
    dtype: str | None = None,
    info: Mapping | None = None,
) -> dict:
    """Write base + (1 − α) · sparsify(Δ) from the safetensors checkpoint in `base_dir` to `out_dir`.

    `delta` maps parameter names of the checkpoint to float tensors of their shapes (e.g.
    `load_delta(path)[0]`). `dtype` (None, "float32", "bfloat16", "float16") converts every
    floating tensor; None keeps the checkpoint's. Every name, shape and parameter is checked
    before anything is written. Returns the merge record (as `build_merged`'s, plus "files"),
    also written as `mm4ke_merge.json` together with the caller's `info`. `out_dir` must not be
    `base_dir`; existing files in it are overwritten.
    """
    validate_merge_params(alpha, sparsity)
    get_sparsifier(method)
    if dtype is not None and dtype not in DTYPES:
        raise UserError(f"dtype must be one of {', '.join(DTYPES)} or None, got {dtype!r}")
    base, out = Path(base_dir).expanduser(), Path(out_dir).expanduser()
    if not base.is_dir():
        raise UserError(f"base checkpoint {base} is not a local directory")
    if out.resolve() == base.resolve():
        raise UserError(f"out_dir {out} is the base checkpoint itself; write the merge elsewhere")
    if not delta:
        raise UserError("the delta is empty: nothing to merge")
    shards = checkpoint_shards(base)
    layouts = {shard: read_header(shard) for shard in shards}
    where = {name: shard for shard, (entries, _) in layouts.items() for name in entries}
    unknown = [n for n in delta if n not in where]
    if unknown:
        raise _unknown_name_error(unknown, list(where))
    for name, tensor in delta.items():
        check_delta_tensor(name, tensor)
        entry = layouts[where[name]][0][name]
        if tuple(tensor.shape) != entry.shape:
            raise UserError(f"delta tensor '{name}' has shape {tuple(tensor.shape)} but the checkpoint's has {entry.shape} (different base model?)")
        if not entry.dtype.is_floating_point:
            raise UserError(f"checkpoint tensor '{name}' has dtype {entry.dtype}; only floating-point weights can be merged")

    # Magnitude (Top_p) is per tensor: each update is made when its shard is written. A random
    # sparsifier draws over the tensors in sorted-name order, so its update is made up front.
    per_tensor = method == "magnitude"
    update_all = None if per_tensor else _prepare(delta, alpha, sparsity, method, seed, pool=None)
    stats = {"kept_entries": 0, "total_entries": 0}

    def update_for(name: str) -> torch.Tensor:
        u = _prepare({name: delta[name]}, alpha, sparsity, method, seed, pool=None)[name] if per_tensor else update_all[name]
        stats["kept_entries"] += int(u.count_nonzero())
        stats["total_entries"] += u.numel()
        return u

    out.mkdir(parents=True, exist_ok=True)
    target = DTYPES.get(dtype)
    total_size = 0
    from safetensors import safe_open

    for shard in shards:
        entries, metadata = layouts[shard]
        mine = [n for n in entries if n in delta]
        dest = out / shard.name
        if target is None:  # keep the dtype: copy the file, rewrite the delta's byte ranges
            shutil.copyfile(shard, dest)
            total_size += sum(e.end - e.begin for e in entries.values())
            if not mine:
                continue
            with safe_open(shard, framework="pt") as f, open(dest, "r+b") as w:
                for name in sorted(mine, key=lambda n: entries[n].begin):
                    merged = _merged(f.get_tensor(name), update_for(name), entries[name].dtype)
                    w.seek(entries[name].begin)
                    w.write(_as_bytes(merged))
            continue
        names = sorted(entries, key=lambda n: entries[n].begin)
        layout = [(n, target if entries[n].dtype.is_floating_point else entries[n].dtype, entries[n].shape) for n in names]
        with safe_open(shard, framework="pt") as f:

            def tensors(f=f, names=names, layout=layout) -> Iterator[torch.Tensor]:
                for name, (_, want, _) in zip(names, layout, strict=True):
                    t = f.get_tensor(name)
                    yield _merged(t, update_for(name), want) if name in delta else t.to(want)

            total_size += _write_safetensors(dest, layout, tensors(), metadata)

    if (base / INDEX_FILE).is_file():
        index = json.loads((base / INDEX_FILE).read_text())
        index["metadata"] = {**(index.get("metadata") or {}), "total_size": total_size}
        (out / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    copied = _copy_side_files(base, out)
    if dtype is not None and (out / "config.json").is_file():
        config = json.loads((out / "config.json").read_text())
        config["dtype"] = dtype
        config.pop("torch_dtype", None)
        (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    record = {
        **dict(info or {}),
        "base": str(base_dir),
        **merge_params(alpha, sparsity, method, seed),
        "dtype": dtype or "as in the base checkpoint",
        "tensors": sorted(delta),
        **stats,
        "files": sorted([s.name for s in shards] + copied + ([INDEX_FILE] if (base / INDEX_FILE).is_file() else [])),
    }
    (out / MERGE_INFO_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def _copy_side_files(base: Path, out: Path) -> list[str]:
    copied = []
    for pattern in (*_SIDE_FILES, *_TOKENIZER_GLOBS):
        for f in sorted(base.glob(pattern)):
            if f.is_file() and f.name not in copied:
                shutil.copy2(f, out / f.name)
                copied.append(f.name)
    return copied
