"""The one record type every reader produces, whatever the source format."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class QA:
    """A prompt and its expected answer, e.g. one portability or locality item."""

    prompt: str
    answer: str
    kind: str = ""  # the KnowEdit key it came from, e.g. "Reasoning", "Relation_Specificity"


@dataclass(frozen=True)
class EditRecord:
    """One knowledge edit: teach `target_new` as the answer to `prompt`.

    `rephrase_prompts` test generalization, `portability` the edit's consequences, `locality`
    facts that must stay unchanged. `source` is "file:index" for error messages and reports.
    """

    prompt: str
    target_new: str
    ground_truth: str | None = None
    subject: str | None = None
    rephrase_prompts: tuple[str, ...] = ()
    portability: tuple[QA, ...] = ()
    locality: tuple[QA, ...] = ()
    source: str = field(default="", compare=False)
