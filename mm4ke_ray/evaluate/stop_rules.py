"""Where a generated answer ends: stop tokens (end of sequence / end of turn) and stop text.

EasyEdit's WILD evaluation (`evaluate_utils.generate_texts`) generates greedily from the chat
template and stops at end-of-sequence or at the stop strings "." and "\\n", then strips that
suffix. Its "." also ends "Dr. John Smith" at "Dr" and "3.5" at "3"; here (issue 23) a "." ends
the answer only when it closes a sentence:

`wild` (default) ends the answer at the first of
- a newline once some text was generated (leading blank lines are not an answer);
- a "." that is not followed by a letter or digit ("3.5", "example.com" go on), and whose word
  is no abbreviation: a title or short form of `ABBREVIATIONS` ("Dr.", "St.", "No.") or an
  initial, i.e. one letter or letters joined by dots ("John F. Kennedy", "U.S.", "e.g.").
  While generating, a "." right after a digit waits for the next token (a decimal or not).
`newline` (the rule before issue 23, lenient): only the newline ends the text.
In both, a stop token ends the row first; the answer is the text before the stop, stripped.
"""

from __future__ import annotations

import re
from typing import Literal

StopRule = Literal["wild", "newline"]
STOP_RULES: tuple[str, ...] = ("wild", "newline")

# Short forms that come before a name or a number, so their "." does not end an answer. Forms
# that usually end a phrase ("Jr.", "Inc.", "Ltd.", "etc.") are left out: they stop.
ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "prof", "st", "mt", "ft", "fr", "gen", "col", "lt", "sgt", "capt", "cmdr",
    "adm", "gov", "sen", "rep", "rev", "hon", "pres", "no", "nos", "vs", "approx", "ca", "vol", "pp",
    "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
})
# A word of one letter or letters joined by dots, before its final "."  ("F", "U.S", "e.g").
_INITIALS = re.compile(r"(?:[^\W\d_]\.)*[^\W\d_]")
_WORD_BEFORE = re.compile(r"([^\s.]+(?:\.[^\s.]+)*)$")

STOP_RULE_TEXT = {
    "wild": "stop tokens (EOS, end of turn); a newline after text; a sentence-ending '.' (not after "
    "an abbreviation such as Dr./St./No. or an initial such as F./U.S., not inside 3.5); answer = text "
    "before the stop",
    "newline": "stop tokens (EOS, end of turn); a newline after text; answer = text before the newline",
}


def _is_abbreviation(word: str) -> bool:
    return word.lower() in ABBREVIATIONS or bool(_INITIALS.fullmatch(word))


def stop_index(text: str, rule: StopRule = "wild", final: bool = True) -> int | None:
    """Where the answer in `text` ends (the stop's index), or None when it has not ended.

    `final=False` while generating: a "." at the very end after a digit is not decided yet.
    """
    if rule not in STOP_RULES:
        raise ValueError(f"stop rule must be one of {', '.join(STOP_RULES)}, got {rule!r}")
    start = len(text) - len(text.lstrip())  # leading whitespace (and blank lines) is no answer
    newline = text.find("\n", start)
    end = newline if newline >= 0 else len(text)
    if rule == "newline":
        return newline if newline >= 0 else None
    for i in range(start, end):
        if text[i] != ".":
            continue
        after = text[i + 1 : i + 2]
        if after.isalnum():
            continue
        if not after and not final and i > 0 and text[i - 1].isdigit():
            return None  # "3." may become "3.5"
        word = _WORD_BEFORE.search(text[start:i])
        if word and _is_abbreviation(word.group(1).lstrip("\"'([{“‘")):
            continue
        return i
    return newline if newline >= 0 else None


def cut_answer(text: str, rule: StopRule = "wild") -> str:
    """The answer a generated text gives: the text before its stop, stripped."""
    end = stop_index(text, rule, final=True)
    return (text if end is None else text[:end]).strip()


class TextStop:
    """Per generated row: has its decoded text reached a stop under `rule`? (decodes on demand)."""

    def __init__(self, tokenizer, rule: StopRule = "wild"):
        if rule not in STOP_RULES:
            raise ValueError(f"stop rule must be one of {', '.join(STOP_RULES)}, got {rule!r}")
        self.tokenizer = tokenizer
        self.rule = rule

    def text(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def ended(self, ids) -> bool:
        """Whether the row's ids so far hold a complete answer."""
        return stop_index(self.text(ids), self.rule, final=False) is not None


# -- stop tokens ----------------------------------------------------------------------------------


def end_of_turn_ids(tokenizer) -> set[int]:
    """The special token the chat template puts right after an assistant reply (e.g. <|im_end|>)."""
    if not getattr(tokenizer, "chat_template", None):
        return set()
    mark = "MM4KEANSWERMARK"
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": mark}],
            tokenize=False,
        )
    except Exception:  # noqa: BLE001 - a template that refuses this conversation has no answer to give
        return set()
    if mark not in text:
        return set()
    after = text.split(mark, 1)[1].lstrip(" ")
    ids = list(tokenizer(after, add_special_tokens=False)["input_ids"]) if after else []
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    return {ids[0]} if ids and ids[0] in special else set()


def stop_token_ids(tokenizer, model=None) -> set[int]:
    """End-of-sequence ids of the tokenizer and the model's generation config, plus end-of-turn."""
    stops: set[int] = set()
    candidates = [tokenizer.eos_token_id]
    config = getattr(model, "generation_config", None)
    if config is not None:
        candidates.append(config.eos_token_id)
    for value in candidates:
        if isinstance(value, int):
            stops.add(value)
        elif isinstance(value, list | tuple):
            stops.update(v for v in value if isinstance(v, int))
    return stops | end_of_turn_ids(tokenizer)
