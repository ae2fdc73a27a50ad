"""Field coercion shared by the format readers.

Each helper reads one field of a raw record and either returns a clean value or raises
`FieldError` naming the field; the loader turns that into a `DataError` that also names the file
and the record index. Strings are stripped because the prompt encoder adds its own separator
(10 ZsRE targets start with a space, which would otherwise give a double space).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mm4ke_ray.data.records import QA


class FieldError(Exception):
    """One field of one raw record is unusable; `field` is a dotted path such as 'locality.X[0].prompt'."""

    def __init__(self, field: str | None, problem: str):
        self.field, self.problem = field, problem
        super().__init__(f"{field}: {problem}" if field else problem)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def text(raw: Mapping[str, Any], key: str, field: str | None = None) -> str:
    """A required, non-empty string field (stripped)."""
    name = field or key
    if key not in raw or raw[key] is None:
        raise FieldError(
            name, f"is missing; it must be a non-empty string (keys present: {sorted(raw)})"
        )
    return required_string(raw[key], name)


def required_string(value: Any, field: str) -> str:
    """`value` itself must be a non-empty string (stripped)."""
    if not isinstance(value, str):
        raise FieldError(field, f"must be a string, got {_type_name(value)} {value!r:.60}")
    value = value.strip()
    if not value:
        raise FieldError(field, "is an empty string; it must hold text")
    return value


def first_alias(value: Any, field: str) -> str | None:
    """The first non-empty alias of an answer: a string, a list of aliases, or nested alias lists.

    KnowEdit writes answers as "Syria", ["Syria"] or [["Syria", "sy"]]; some items hold only
    empty lists ([[]]), which have no answer: None.
    """
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, list | tuple):
        for item in value:
            alias = first_alias(item, field)
            if alias is not None:
                return alias
        return None
    raise FieldError(field, f"must be a string or a list of alias strings, got {_type_name(value)}")


def optional_text(raw: Mapping[str, Any], key: str) -> str | None:
    """An optional string field (or alias list: first alias); missing, null or empty gives None."""
    return first_alias(raw.get(key), key)


def text_list(raw: Mapping[str, Any], key: str) -> tuple[str, ...]:
    """An optional string or list of strings, e.g. `rephrase_prompt`; empty strings are dropped."""
    value = raw.get(key)
    if value is None:
        return ()
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list | tuple):
        raise FieldError(key, f"must be a string or a list of strings, got {_type_name(value)}")
    out = []
    for i, item in enumerate(values):
        if not isinstance(item, str):
            raise FieldError(f"{key}[{i}]", f"must be a string, got {_type_name(item)}")
        if item.strip():
            out.append(item.strip())
    return tuple(out)


def qa_groups(raw: Mapping[str, Any], key: str) -> tuple[QA, ...]:
    """Every item of every group of a KnowEdit `portability`/`locality` dict, kind = group key.

    The shape is {kind: [{"prompt": str, "ground_truth": answer}, ...]}; a single item dict in
    place of the list is accepted. Items whose answer has no alias at all are left out: they
    cannot be scored (KnowEdit's WikiData files hold a few, e.g. ground_truth [[]]).
    """
    groups = raw.get(key)
    if groups is None:
        return ()
    if not isinstance(groups, Mapping):
        raise FieldError(key, f"must be an object {{kind: [items]}}, got {_type_name(groups)}")
    out: list[QA] = []
    for kind, items in groups.items():
        if items is None:  # a kind missing from this record when rows come through Arrow
            continue
        if isinstance(items, Mapping):
            items = [items]
        if not isinstance(items, list | tuple):
            raise FieldError(
                f"{key}.{kind}",
                f"must be a list of {{prompt, ground_truth}} items, got {_type_name(items)}",
            )
        for j, item in enumerate(items):
            where = f"{key}.{kind}[{j}]"
            if not isinstance(item, Mapping):
                raise FieldError(
                    where, f"must be an object {{prompt, ground_truth}}, got {_type_name(item)}"
                )
            prompt = text(item, "prompt", f"{where}.prompt")
            answer = first_alias(item.get("ground_truth"), f"{where}.ground_truth")
            if answer is not None:
                out.append(QA(prompt=prompt, answer=answer, kind=str(kind)))
    return tuple(out)
