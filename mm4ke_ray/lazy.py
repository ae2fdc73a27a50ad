"""Package namespaces whose names load on first use (so `--help` and light imports stay fast)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping


def lazy_exports(
    package: str, modules: Mapping[str, Iterable[str]], eager: Iterable[str] = ()
) -> tuple[list[str], Callable, Callable]:
    """(`__all__`, `__getattr__`, `__dir__`) for `package`, from {submodule: the names it defines}:
    each name is imported from its submodule when it is first read. `eager` names are defined in
    the package itself and only join `__all__`."""
    exports = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str):
        if name in exports:
            return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted([*vars(importlib.import_module(package)), *exports])

    return sorted([*exports, *eager]), __getattr__, __dir__
