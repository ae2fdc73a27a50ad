"""YAML as the user types it (config files, `--set` values): safe, strict, errors with a line.

PyYAML's safe loader keeps the last of two equal keys silently (`lr:` twice: the first is
ignored) and refuses python tags with a long ConstructorError; both become a `UserError` that
names the line, so the CLI exits 2 instead of printing a traceback.
"""

from __future__ import annotations

from typing import Any

import yaml

from mm4ke_ray.errors import UserError


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a mapping with the same key twice."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: the base class reports it
                break
            if first != key_node.start_mark.line + 1:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice (first on line {first}); keep one", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def yaml_problem(exc: yaml.YAMLError) -> str:
    """`line L, column C: what` for a YAML error (its position when it has one)."""
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    return f"{where}not valid YAML ({getattr(exc, 'problem', None) or exc})"


def load_yaml(text: str) -> Any:
    """Parse `text`; yaml.YAMLError on bad syntax, python tags or a duplicate key."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def load_value(text: str, what: str) -> Any:
    """One YAML value typed on the command line (`--set KEY=VALUE`); UserError naming `what`."""
    try:
        return load_yaml(text)
    except yaml.YAMLError as exc:
        raise UserError(f"{what}: {yaml_problem(exc)}") from None
