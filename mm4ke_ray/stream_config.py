"""The `stream:` section of a sweep config: lifelong editing in rounds (issue 29).

The edit set is split into rounds (`split`); round t trains R-SFT from the model merged after
round t-1 and merges into it. R-SFT and merge settings come from `search.space`, where every
parameter must then be one value (`mm4ke-ray stream` runs one setting); `per_round` lets only
the merge settings that allow it (`PER_ROUND_KEYS`) take a value per round.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# EditRecord attributes a stream may be split by (`split: field`): one round per distinct value.
SPLIT_FIELDS = ("subject", "target_new", "ground_truth", "prompt")
# Settings that may differ per round. R-SFT's own settings stay fixed: a round-dependent
# learning rate would make rounds incomparable, and nothing in the issue asks for it.
PER_ROUND_KEYS = ("alpha", "sparsity")


class StreamConfig(BaseModel):
    """Lifelong editing: R-SFT + merge per round, each round's base the previous merged model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    split: Literal["order", "field", "files"] = Field(
        "order", description="How the edit set becomes rounds: 'order' (consecutive, near-equal chunks of "
        "data.edits), 'field' (one round per value of `field`, in order of first appearance) or 'files' "
        "(one round per file of `files`, in that order; data.edits is then not read).",
    )
    rounds: int | None = Field(
        None, ge=1, description="Number of rounds; required for split 'order', derived (and checked when "
        "given) for 'field' and 'files'.",
    )
    field: Literal["subject", "target_new", "ground_truth", "prompt"] | None = Field(
        None, description="split 'field': the edit record's field whose values define the rounds.",
    )
    files: list[str] | None = Field(
        None, min_length=1, description="split 'files': one edit file per round, read with data.format.",
    )
    per_round: dict[Literal["alpha", "sparsity"], list[float]] = Field(
        default_factory=dict, description="Per-round values of the settings that may differ per round "
        "(alpha, sparsity), one per round; a setting not listed keeps search.space's one value.",
    )
    objective: Literal["mean", "final"] = Field(
        "mean", description="How `mm4ke-ray stream --tune` scores a stream's edits: 'mean' over rounds of the edit "
        "score on all edits so far (the area under its retention curve) or 'final' (after the last round); "
        "the general objective is the final model's general score.",
    )

    @model_validator(mode="after")
    def _split_needs_its_source(self):
        if self.split == "order" and self.rounds is None:
            raise ValueError("split 'order' needs `rounds` (how many consecutive chunks of data.edits)")
        if self.split == "field" and self.field is None:
            raise ValueError(f"split 'field' needs `field`, one of {list(SPLIT_FIELDS)}")
        if self.split != "field" and self.field is not None:
            raise ValueError(f"`field` is only read with split 'field', not {self.split!r}: drop it")
        if self.split == "files" and not self.files:
            raise ValueError("split 'files' needs `files`: one edit file per round, in order")
        if self.split != "files" and self.files is not None:
            raise ValueError(f"`files` is only read with split 'files', not {self.split!r}: drop it")
        if self.split == "files" and self.rounds is not None and self.rounds != len(self.files):
            raise ValueError(f"rounds is {self.rounds} but `files` lists {len(self.files)}: one file per round")
        return self

    @model_validator(mode="after")
    def _per_round_values(self):
        for key, values in self.per_round.items():
            if not values:
                raise ValueError(f"per_round.{key} is empty: give one value per round or drop it")
            bad = [v for v in values if not (math.isfinite(v) and 0 <= v < 1)]
            if bad:
                raise ValueError(f"per_round.{key} values must be in [0, 1), got {bad}")
            n = self.rounds if self.rounds is not None else (len(self.files) if self.files else None)
            if n is not None and len(values) != n:
                raise ValueError(f"per_round.{key} has {len(values)} values for {n} rounds: give one per round")
        return self
