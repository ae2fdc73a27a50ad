"""A generic registry of named extension points: name (or alias) → object, each name taken once,
and a did-you-mean for an unknown one.

merge's sparsifiers (`merge.methods.SPARSIFIERS`) are one; data's edit formats
(`data.formats.FORMATS`) build on one, adding detection and their own ordering.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Generic, TypeVar

from mm4ke_ray.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name → object, with aliases, duplicate checks and a did-you-mean for unknown names."""

    def __init__(self, kind: str):
        self.kind = kind  # what an entry is, for messages: "sparsification method"
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}  # alias → name

    def register(self, name: str, obj: T, aliases: Iterable[str] = ()) -> T:
        """Add `obj` under `name` (and `aliases`); a name or alias can be taken once (ValueError)."""
        aliases = tuple(aliases)
        for key in (name, *aliases):
            if key in self:
                raise ValueError(f"{self.kind} {key!r} is already registered")
        self._items[name] = obj
        self._aliases.update(dict.fromkeys(aliases, name))
        return obj

    def get(self, name: str) -> T:
        """The object registered as `name` or an alias; UserError listing the known names otherwise."""
        if name not in self:
            close = self.closest(name)
            hint = f"; did you mean '{close}'?" if close else ""
            raise UserError(f"unknown {self.kind} {name!r}{hint} (known: {', '.join(self.names())})")
        return self._items[self._aliases.get(name, name)]

    def closest(self, name: object) -> str | None:
        """The registered name or alias closest to `name`, if any is close."""
        close = difflib.get_close_matches(str(name), [*self._items, *self._aliases], n=1)
        return close[0] if close else None

    def names(self) -> list[str]:
        """Registered names (not aliases), sorted."""
        return sorted(self._items)

    def aliases(self) -> dict[str, str]:
        """Alias → name, sorted by alias."""
        return dict(sorted(self._aliases.items()))

    def entries(self) -> list[T]:
        """The registered objects, in registration order."""
        return list(self._items.values())

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._items or name in self._aliases
        except TypeError:  # an unhashable name (a list from a config) is not registered
            return False
