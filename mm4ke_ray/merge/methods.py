"""Named extension points of the merge step: one small registry per kind (here: sparsifiers).

A new sparsifier is a pure function `fn(delta, density, generator) -> Tensor` plus one
`SPARSIFIERS.register(...)` line below. Unknown names fail with the known ones listed.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Generic, TypeVar

import torch

from mm4ke_ray.errors import UserError
from mm4ke_ray.merge.sparsify import dare, magnitude

T = TypeVar("T")

Sparsifier = Callable[[torch.Tensor, float, "torch.Generator | None"], torch.Tensor]


class Registry(Generic[T]):
    """Name → object, with duplicate checks and a did-you-mean for unknown names."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T) -> T:
        """Add `obj` under `name`; a name can be registered once."""
        if name in self._items:
            raise ValueError(f"{self.kind} '{name}' is already registered")
        self._items[name] = obj
        return obj

    def get(self, name: str) -> T:
        """The object registered as `name`; UserError listing the known names otherwise."""
        try:
            return self._items[name]
        except (KeyError, TypeError):
            pass
        close = difflib.get_close_matches(str(name), self._items, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise UserError(f"unknown {self.kind} {name!r}{hint} (known: {', '.join(self.names())})")

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items


SPARSIFIERS: Registry[Sparsifier] = Registry("sparsification method")
SPARSIFIERS.register("magnitude", magnitude)  # the paper's Top_p; the default
SPARSIFIERS.register("dare", dare)

DEFAULT_SPARSIFIER = "magnitude"


def get_sparsifier(name: str) -> Sparsifier:
    """The sparsifier registered as `name` (UserError with a did-you-mean if unknown)."""
    return SPARSIFIERS.get(name)
