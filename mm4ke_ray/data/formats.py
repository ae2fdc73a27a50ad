"""Edit-data formats: one reader per source schema, kept in a registry (`FORMATS`).

A format is a name, a `detect(first_record)` predicate on the keys of the first record, and a
`read(raw) -> EditRecord` that raises `FieldError` for a bad field. Detection tries formats by
descending `priority`, so specific schemas (zsre_mend's `src`/`alt`) win over the generic
KnowEdit one (`prompt`/`target_new`).

Built in:
- knowedit: KnowEdit ZsRE, WikiData_recent and WikiData_counterfact (one shared schema).
  `generate_prompt` (LLM paraphrases added by a third-party copy of test_cf) and `cond` are ignored.
- wikibio: KnowEdit WikiBio (`text` -> prompt, `labels` -> target_new, `concept` -> subject).
- zsre_mend: MEND/EasyEdit ZsRE (`src`, `alt`, `answers`, `rephrase`, `loc`/`loc_ans`, and
  optionally `portability{New Question, New Answer}` as in EasyEdit's One Hop file).
- alpaca: LLaMA-Factory `{instruction, input, output}`; prompt = instruction + "\\n" + input.
- sharegpt: chat conversations (`conversations[{from, value}]` or `messages[{role, content}]`),
  multi-turn included: the last assistant turn is taught, earlier turns are its context (`sharegpt.py`).
- counterfact_flat: ROME CounterFact flattened for EasyEdit (`locality_prompt` without an answer).
  Its locality prompts are NOT loaded: locality is scored on `prompt + answer`, and there is no
  answer to score (use the base model's own continuation outside this reader if needed).
- rome_counterfact: the original ROME/MEMIT `counterfact.json` (`requested_rewrite`); neighborhood
  prompts become locality items whose answer is the true target.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mm4ke_ray.data.fields import (
    FieldError,
    first_alias,
    optional_text,
    qa_groups,
    required_string,
    text,
    text_list,
)
from mm4ke_ray.data.records import QA, EditRecord
from mm4ke_ray.data.sharegpt import read_sharegpt
from mm4ke_ray.errors import UserError
from mm4ke_ray.named_registry import Registry

Raw = Mapping[str, Any]


@dataclass(frozen=True)
class EditFormat:
    """A named source schema: how to recognize it and how to turn one raw record into an EditRecord."""

    name: str
    detect: Callable[[Raw], bool]
    read: Callable[[Raw], EditRecord]
    description: str
    priority: int = 0  # higher is tried first by detection
    aliases: tuple[str, ...] = ()


class FormatRegistry:
    """Formats by name (and alias), kept in a generic `Registry`; `detect` picks the first that
    claims a record, trying formats by descending priority (ties: in registration order)."""

    def __init__(self) -> None:
        self._registry: Registry[EditFormat] = Registry("edit-data format")

    def register(self, fmt: EditFormat) -> EditFormat:
        """Add a format; a name or alias already taken is a programming error (ValueError)."""
        return self._registry.register(fmt.name, fmt, fmt.aliases)

    def names(self) -> list[str]:
        """Canonical names, in detection order."""
        return [f.name for f in self._ordered()]

    def get(self, name: str) -> EditFormat:
        """The format called `name` (or an alias); unknown names list the known ones."""
        if name in self._registry:
            return self._registry.get(name)
        close = self._registry.closest(name)
        hint = f" Did you mean {close!r}?" if close else ""
        aliases = self._registry.aliases()
        raise UserError(
            f"unknown edit-data format {name!r}.{hint} Known formats: {', '.join(self.names())}"
            f" (aliases: {', '.join(f'{a}={n}' for a, n in aliases.items())})"
        )

    def detect(self, record: Raw) -> EditFormat | None:
        """The highest-priority format whose predicate accepts `record`, or None."""
        return next((f for f in self._ordered() if f.detect(record)), None)

    def describe(self) -> str:
        """One line per format, for error messages."""
        return "\n".join(f"  - {f.name}: {f.description}" for f in self._ordered())

    def _ordered(self) -> list[EditFormat]:
        return sorted(self._registry.entries(), key=lambda f: -f.priority)  # stable: ties keep order


def _has(*keys: str) -> Callable[[Raw], bool]:
    return lambda record: all(k in record for k in keys)


def read_knowedit(raw: Raw) -> EditRecord:
    """KnowEdit ZsRE / WikiData_recent / WikiData_counterfact record."""
    return EditRecord(
        prompt=text(raw, "prompt"),
        target_new=text(raw, "target_new"),
        ground_truth=optional_text(raw, "ground_truth"),
        subject=optional_text(raw, "subject"),
        rephrase_prompts=text_list(raw, "rephrase_prompt") + text_list(raw, "rephrase_prompts"),
        portability=qa_groups(raw, "portability"),
        locality=qa_groups(raw, "locality"),
    )


def read_wikibio(raw: Raw) -> EditRecord:
    """KnowEdit WikiBio: a passage, its continuation to teach, the person it is about."""
    return EditRecord(
        prompt=text(raw, "text"),
        target_new=text(raw, "labels"),
        subject=optional_text(raw, "concept"),
        locality=qa_groups(raw, "locality"),
    )


def _single_qa(question: Any, answer: Any, kind: str, field_q: str, field_a: str) -> tuple[QA, ...]:
    """One QA item from separate question/answer fields; none when either is absent."""
    if question is None:
        return ()
    prompt = required_string(question, field_q)
    value = first_alias(answer, field_a)
    return () if value is None else (QA(prompt=prompt, answer=value, kind=kind),)


def read_zsre_mend(raw: Raw) -> EditRecord:
    """MEND-style ZsRE; `loc`/`loc_ans` -> locality kind "NQ", portability kind "one_hop" (EasyEdit's name)."""
    portability = raw.get("portability")
    if portability is not None and not isinstance(portability, Mapping):
        raise FieldError("portability", "must be an object {New Question, New Answer}")
    portability = portability or {}
    return EditRecord(
        prompt=text(raw, "src"),
        target_new=text(raw, "alt"),
        ground_truth=optional_text(raw, "answers"),
        subject=optional_text(raw, "subject"),
        rephrase_prompts=text_list(raw, "rephrase"),
        locality=_single_qa(raw.get("loc"), raw.get("loc_ans"), "NQ", "loc", "loc_ans"),
        portability=_single_qa(
            portability.get("New Question"),
            portability.get("New Answer"),
            "one_hop",
            "portability.New Question",
            "portability.New Answer",
        ),
    )


def read_alpaca(raw: Raw) -> EditRecord:
    """LLaMA-Factory alpaca: LLaMA-Factory joins instruction and a non-empty input with a newline."""
    prompt = text(raw, "instruction")
    extra = raw.get("input")
    if extra is not None and not isinstance(extra, str):
        raise FieldError("input", f"must be a string, got {type(extra).__name__}")
    if extra and extra.strip():
        prompt = f"{prompt}\n{extra.strip()}"
    return EditRecord(prompt=prompt, target_new=text(raw, "output"))


def read_rome_counterfact(raw: Raw) -> EditRecord:
    """Original ROME CounterFact: the prompt template's "{}" is the subject."""
    rewrite = raw.get("requested_rewrite")
    if not isinstance(rewrite, Mapping):
        raise FieldError(
            "requested_rewrite", "must be an object {prompt, subject, target_new, target_true}"
        )
    subject = text(rewrite, "subject", "requested_rewrite.subject")
    template = text(rewrite, "prompt", "requested_rewrite.prompt")
    if "{}" not in template:
        raise FieldError("requested_rewrite.prompt", "must contain '{}' where the subject goes")

    def target(key: str) -> str:
        value = rewrite.get(key)
        if not isinstance(value, Mapping):
            raise FieldError(f"requested_rewrite.{key}", "must be an object {str, id}")
        return text(value, "str", f"requested_rewrite.{key}.str")

    truth = target("target_true")
    neighbors = text_list(raw, "neighborhood_prompts")
    return EditRecord(
        prompt=template.replace("{}", subject),
        target_new=target("target_new"),
        ground_truth=truth,
        subject=subject,
        rephrase_prompts=text_list(raw, "paraphrase_prompts"),
        locality=tuple(QA(prompt=p, answer=truth, kind="Neighborhood") for p in neighbors),
    )


FORMATS = FormatRegistry()
FORMATS.register(
    EditFormat(
        "knowedit",
        _has("prompt", "target_new"),
        read_knowedit,
        "KnowEdit ZsRE / WikiData_recent / WikiData_counterfact: prompt, target_new, [ground_truth, "
        "subject, rephrase_prompt, portability{kind: [items]}, locality{kind: [items]}]",
        priority=0,
        aliases=("zsre", "wikidata_recent", "wikidata_counterfact"),
    )
)
FORMATS.register(
    EditFormat(
        "wikibio",
        _has("text", "labels"),
        read_wikibio,
        "KnowEdit WikiBio: text, labels, concept, locality",
        priority=10,
    )
)
FORMATS.register(
    EditFormat(
        "zsre_mend",
        _has("src", "alt"),
        read_zsre_mend,
        "MEND/EasyEdit ZsRE: src, alt, answers, rephrase, loc, loc_ans, [portability]",
        priority=10,
    )
)
FORMATS.register(
    EditFormat(
        "alpaca",
        _has("instruction", "output"),
        read_alpaca,
        "LLaMA-Factory alpaca: instruction, input, output",
        priority=10,
        aliases=("llamafactory",),
    )
)
FORMATS.register(
    EditFormat(
        "counterfact_flat",
        _has("prompt", "target_new", "locality_prompt"),
        read_knowedit,
        "flat ROME CounterFact (EasyEdit): prompt, target_new, ground_truth, rephrase_prompt, "
        "locality_prompt (not loaded: it has no answer)",
        priority=10,
    )
)
FORMATS.register(
    EditFormat(
        "rome_counterfact",
        _has("requested_rewrite"),
        read_rome_counterfact,
        "original ROME counterfact.json: requested_rewrite, paraphrase_prompts, neighborhood_prompts",
        priority=10,
        aliases=("counterfact",),
    )
)
FORMATS.register(
    EditFormat(
        "sharegpt",
        lambda raw: "conversations" in raw or "messages" in raw,
        read_sharegpt,
        "ShareGPT chat (LLaMA-Factory sharegpt: conversations[{from, value}], [system]; or messages[{role, "
        "content}]): the last assistant turn is the answer, earlier turns its context",
        priority=10,
    )
)


def register_format(fmt: EditFormat) -> EditFormat:
    """Add a format to the registry `load_edit_records` uses."""
    return FORMATS.register(fmt)


def get_format(name: str) -> EditFormat:
    """A registered format by name or alias (UserError listing the known ones otherwise)."""
    return FORMATS.get(name)


def known_formats() -> list[str]:
    """Registered format names, in detection order."""
    return FORMATS.names()
