"""One loaded base model and its stream evaluator, shared by several streams of the same records
and evaluation settings (a tuning's trials).

Building a `StreamEvaluator` loads the model and measures the base's references (locality
predictions, generated locality answers, general scores); round 0 measures the base again. On
the real model that is most of a short stream's cost, and the same for every trial: with a
`SharedBase` it is paid once. Each stream puts the tensors it changed back to the base when it
ends (`BaseWeights`), so the next one starts from the same weights the references describe.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mm4ke_ray.digest import sha256_file
from mm4ke_ray.evaluate.candidate import EvalSettings
from mm4ke_ray.stream.base_weights import BaseWeights
from mm4ke_ray.stream.evaluation import StreamEvaluator


@dataclass
class SharedBase:
    evaluator: StreamEvaluator
    settings: EvalSettings  # as the streams' configs resolve them
    edits_digest: str  # of the stream's edit file the evaluator was built on
    weights: BaseWeights

    @classmethod
    def build(cls, settings: EvalSettings, edits_file: str | Path, rounds: list[int]) -> SharedBase:
        evaluator = StreamEvaluator(settings, edits_file, rounds)
        return cls(evaluator, settings, sha256_file(edits_file), BaseWeights(evaluator.model))

    def check(self, settings: EvalSettings, edits_file: str | Path, rounds: list[int]) -> None:
        """Refuse a stream this base does not describe (other records, rounds or evaluation settings)."""
        if rounds != self.evaluator.rounds:
            raise ValueError("a shared base serves streams of one split into rounds: this stream's differs")
        if settings != self.settings:
            raise ValueError("a shared base serves streams of one evaluation setting: this stream's differs")
        if sha256_file(edits_file) != self.edits_digest:
            raise ValueError(f"a shared base serves streams of one edit set: {edits_file} holds other records")
