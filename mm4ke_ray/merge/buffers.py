"""Reusable CPU buffers for the in-place merge of many candidates on one resident model.

A fresh multi-megabyte CPU tensor page-faults on first touch: for a 110M model's one-layer delta
(3 × 6 MB) the update and the snapshot cost more in page faults than in arithmetic. The pool
hands the same buffers to the next candidate instead. Only CPU tensors are pooled (the CUDA
caching allocator already reuses its blocks), and only a few per shape, so the pool holds at most
a few copies of the delta's tensors.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping

import torch

_PER_KEY = 4


class BufferPool:
    """Free tensors by (shape, dtype); `take` reuses one or allocates, `give` returns one."""

    def __init__(self) -> None:
        self._free: dict[tuple, list[torch.Tensor]] = {}
        self._lock = threading.Lock()

    def take(self, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """An uninitialised tensor of this shape/dtype/device (the caller overwrites all of it)."""
        if torch.device(device).type == "cpu":
            with self._lock:
                free = self._free.get((tuple(shape), dtype))
                if free:
                    return free.pop()
        return torch.empty(shape, dtype=dtype, device=device)

    def give(self, tensor: torch.Tensor) -> None:
        """Return a tensor nobody else will read again (a dense, contiguous CPU tensor)."""
        if tensor.device.type != "cpu" or not tensor.is_contiguous() or tensor.requires_grad:
            return
        with self._lock:
            free = self._free.setdefault((tuple(tensor.shape), tensor.dtype), [])
            if len(free) < _PER_KEY and all(t is not tensor for t in free):
                free.append(tensor)

    def clear(self) -> None:
        with self._lock:
            self._free.clear()

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(t.numel() * t.element_size() for ts in self._free.values() for t in ts)


POOL = BufferPool()

# References seen in `recycle_unshared` when nothing outside holds them (CPython; the tests check
# both ways): a tensor has the dict's, the loop variable's and getrefcount's argument; the dict has
# the finalizer's, the parameter's, the call's and getrefcount's argument.
_OWNED_TENSOR_REFS = 3
_OWNED_DICT_REFS = 4


def recycle_unshared(tensors: Mapping[str, torch.Tensor]) -> None:
    """Give back the tensors of a dropped snapshot that no one else still refers to.

    Runs when a `Snapshot` is garbage-collected; a tensor the caller kept (e.g. taken out of
    `snapshot.originals`) has more references and is left alone, so it is never overwritten.
    """
    if sys.getrefcount(tensors) > _OWNED_DICT_REFS:  # the caller kept `snapshot.originals`
        return
    for tensor in tensors.values():
        if sys.getrefcount(tensor) <= _OWNED_TENSOR_REFS:
            POOL.give(tensor)
