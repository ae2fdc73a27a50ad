"""Named extension points of the merge step: the sparsifiers, in a `named_registry.Registry`.

A new sparsifier is a pure function `fn(delta, density, generator) -> Tensor` plus one
`SPARSIFIERS.register(...)` line below (tests/test_registry_contracts.py then checks it like the
others). Unknown names fail with the known ones listed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mm4ke_ray.merge.sparsify import dare, magnitude
from mm4ke_ray.named_registry import Registry

Sparsifier = Callable[[torch.Tensor, float, "torch.Generator | None"], torch.Tensor]


SPARSIFIERS: Registry[Sparsifier] = Registry("sparsification method")
SPARSIFIERS.register("magnitude", magnitude)  # the paper's Top_p; the default
SPARSIFIERS.register("dare", dare)

DEFAULT_SPARSIFIER = "magnitude"


def get_sparsifier(name: str) -> Sparsifier:
    """The sparsifier registered as `name` (UserError with a did-you-mean if unknown)."""
    return SPARSIFIERS.get(name)
