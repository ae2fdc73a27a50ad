"""A benchmark's expensive results on disk, so that a killed run resumes where it stopped.

A long benchmark (hours of R-SFT and evaluation on a 2-core CPU) that replays a deterministic
search can recompute its cheap parts (the sampler's suggestions, the bookkeeping) and read back
its expensive ones: each R-SFT delta (`deltas/<sha>.safetensors`) and each evaluation's result
(a line of `results.jsonl`, appended and flushed as it is made). The folder is tied to the run's
`key` (its arguments and code inputs): a different key starts the folder over.

What is read back is exactly what was computed, its measured seconds included, so a resumed run
reports the same figures as one that never stopped (the JSON round trip keeps floats exact).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

KEY_FILE = "key.json"
RESULTS = "results.jsonl"
DIVERGED = "diverged"
KEPT_WALL = "kept_wall_seconds"  # the wall around a kept computation, as it was measured


def tensors_digest(tensors: dict) -> str:
    """sha256 over the names, shapes, dtypes and bytes of a dict of tensors."""
    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:24]


def digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:24]


class DiskMemo:
    """`get(key, fn)`: fn()'s value, computed once per key for this folder's run key."""

    def __init__(self, folder: Path, run_key: dict, fresh: bool = False):
        self.folder = Path(folder)
        key_path = self.folder / KEY_FILE
        if fresh or not key_path.is_file() or json.loads(key_path.read_text()) != json.loads(json.dumps(run_key)):
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder.mkdir(parents=True)
            key_path.write_text(json.dumps(run_key, indent=1) + "\n")
        self.values: dict[str, object] = {}
        path = self.folder / RESULTS
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:  # the last line of a run killed while writing it
                    continue
                self.values[entry["key"]] = entry["value"]
        self.read_back = 0
        self._out = path.open("a")

    def get(self, key, fn: Callable[[], object]):
        k = digest(key)
        if k in self.values:
            self.read_back += 1
            return self.values[k]
        value = fn()
        self.values[k] = value
        self._out.write(json.dumps({"key": k, "value": value}) + "\n")
        self._out.flush()
        os.fsync(self._out.fileno())
        return value

    def tensors(self, key, fn: Callable[[], dict | None]) -> tuple[dict | None, bool]:
        """(fn()'s dict of tensors, or None; whether it was read back). Kept as safetensors."""
        from safetensors.torch import load_file, save_file

        path = self.folder / "deltas" / f"{digest(key)}.safetensors"
        marker = path.with_suffix(f".{DIVERGED}")
        if path.is_file():
            return load_file(path), True
        if marker.is_file():
            return None, True
        value = fn()
        path.parent.mkdir(exist_ok=True)
        if value is None:
            marker.touch()
        else:
            tmp = path.with_suffix(".tmp")
            save_file({k: v.contiguous() for k, v in value.items()}, tmp)
            tmp.replace(path)  # a kill mid-write leaves no half file under the real name
        return value, False
