"""ShareGPT-style chat data (LLaMA-Factory `sharegpt`, or OpenAI-style `messages`) as edits.

A conversation whose last turn is the assistant's teaches that answer: `target_new` is the last
assistant turn, `prompt` the user turn before it. Earlier turns (and a `system` text) are kept
as context lines in front of the prompt ("System: …", "User: …", "Assistant: …"), so a
multi-turn conversation edits the answer in its context; `data.prompt_format: chat` then wraps
that prompt in the model's chat template as one user message. Chat data has no rephrases,
portability or locality items (as LLaMA-Factory's alpaca files).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mm4ke_ray.data.fields import FieldError
from mm4ke_ray.data.records import EditRecord

# ShareGPT's `from` values and OpenAI's `role` values, as LLaMA-Factory maps them.
_USER, _ASSISTANT, _SYSTEM = {"human", "user"}, {"gpt", "assistant"}, {"system"}
_LABEL = {"user": "User", "assistant": "Assistant", "system": "System"}


def _turns(raw: Mapping[str, Any]) -> tuple[str, list[tuple[str, str]]]:
    key, who, what = ("conversations", "from", "value") if "conversations" in raw else ("messages", "role", "content")
    turns = raw.get(key)
    if not isinstance(turns, list) or not turns:
        raise FieldError(key, "must be a non-empty list of turns")
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, Mapping) or not isinstance(turn.get(what), str):
            raise FieldError(f"{key}[{i}]", f"must be an object with a string '{what}'")
        role = str(turn.get(who, "")).lower()
        kind = "user" if role in _USER else "assistant" if role in _ASSISTANT else "system" if role in _SYSTEM \
            else None
        if kind is None:
            raise FieldError(f"{key}[{i}].{who}", f"unknown role {turn.get(who)!r}; expected one of "
                             f"{sorted(_USER | _ASSISTANT | _SYSTEM)}")
        out.append((kind, turn[what].strip()))
    return key, out


def read_sharegpt(raw: Mapping[str, Any]) -> EditRecord:
    """One conversation -> one edit of its last assistant answer (see the module doc)."""
    key, turns = _turns(raw)
    if len(turns) < 2 or turns[-1][0] != "assistant" or turns[-2][0] != "user":
        raise FieldError(key, "must end with a user turn followed by an assistant turn (the answer to teach)")
    if not turns[-1][1] or not turns[-2][1]:
        raise FieldError(key, "the last user and assistant turns must not be empty")
    system = raw.get("system")
    context = [("system", system.strip())] if isinstance(system, str) and system.strip() else []
    context += turns[:-2]
    lines = [f"{_LABEL[kind]}: {text}" for kind, text in context]
    prompt = "\n".join([*lines, turns[-2][1]])
    return EditRecord(prompt=prompt, target_new=turns[-1][1])
