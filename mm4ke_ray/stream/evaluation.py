"""The metrics of a stream's model after a round, with the product's evaluators.

One `CandidateEvaluator` over every record of the stream, built once on the base model (its
locality predictions, generated locality answers and general scores are the reference every
round is compared with). After round t the per-record rows are grouped by round:

- `current.<m>`: round t's own edits; `seen.<m>`: every edit of rounds 1..t (the retention of
  old edits together with the new); `old.<m>`: rounds 1..t-1 only (absent in round 1);
  `round<s>.<m>` per earlier round s <= t (edit success only: the triangle of a retention map).
- `locality`: all the stream's locality items, edited or not yet, against the **base** model's
  answers: a fixed set, so the curve compares across rounds.
- `general_score` and `general.<task>`: lm-eval retention against the base, as the sweep scores.
- `edit_score`: the configured weighted mean of the `seen` edit metrics (0..1).

Generated metrics carry `gen.` after the group (`seen.gen.edit_succ`), as in the sweep.
A mean over records counts each record with a value once (as `EditEvaluator` does).

Only what a round reports is scored: the accuracy items (edit, rephrase and portability prompts)
of rounds 1..t (round 1's for the base) and every record's locality items (the evaluators'
`records=`); a later round's edits are not scored before their round. The numbers are those of
scoring every record and keeping these (a test checks it on the demo).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from mm4ke_ray.data import write_edit_records
from mm4ke_ray.evaluate.candidate import CandidateEvaluator, EvalSettings
from mm4ke_ray.evaluate.general import general_score, retention
from mm4ke_ray.evaluate.rung_views import Reference
from mm4ke_ray.evaluate.scores import edit_family, objective_values
from mm4ke_ray.schema import GEN_PREFIX, GENERAL_PREFIX, RETENTION_PREFIX, TEACHER_FORCED
from mm4ke_ray.stream.rounds import Stream

ACCURACY_METRICS = ("edit_succ", "generalization", "portability")  # per group of edits; locality is global
CURRENT, SEEN, OLD = "current", "seen", "old"
STREAM_EDITS = "stream_edits.json"


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def group_means(rows: list[dict], rounds: list[int], upto: int, prefix: str = "") -> dict[str, float]:
    """`current.`/`seen.`/`old.`/`round<s>.` means of per-record rows (`rounds[i]` = row i's round)."""
    groups = {CURRENT: lambda r: r == upto, SEEN: lambda r: r <= upto}
    if upto > 1:
        groups[OLD] = lambda r: r < upto
    out = {}
    for name, keep in groups.items():
        for m in ACCURACY_METRICS:
            value = _mean([row[m] for row, r in zip(rows, rounds, strict=True) if keep(r) and row[m] is not None])
            if value is not None:
                out[f"{name}.{prefix}{m}"] = value
    for s in range(1, upto + 1):
        value = _mean([row["edit_succ"] for row, r in zip(rows, rounds, strict=True)
                       if r == s and row["edit_succ"] is not None])
        if value is not None:
            out[f"round{s}.{prefix}edit_succ"] = value
    loc = _mean([row["locality"] for row in rows if row["locality"] is not None])
    if loc is not None:
        out[f"{prefix}locality"] = loc
    return out


def write_stream_edits(stream: Stream, folder: str | Path) -> Path:
    """The stream's records, in stream order, as one edit file (`STREAM_EDITS` in `folder`): what
    the evaluator reads, and what a rebuild re-evaluates with."""
    return write_edit_records(stream.records, Path(folder) / STREAM_EDITS)


class StreamEvaluator:
    """Edit metrics by round group, locality and general score of the resident model as it is now.

    The product's `CandidateEvaluator`, built on the stream's edit file (`write_stream_edits`),
    loads the model (which the stream then changes in place), builds the edit, generation and
    general evaluators the sweep uses and computes the base's references once; each round reads
    its evaluators' per-record rows and groups them by round.
    """

    def __init__(self, settings: EvalSettings, edits_file: str | Path, rounds: list[int],
                 reference: Reference | None = None):
        """`reference`: the base's, measured before (`kept_reference`), instead of measuring them here."""
        self.candidate = CandidateEvaluator(replace(settings, edits=str(edits_file), limit=None, data_format=None,
                                                    skip_invalid=False, fidelity_rungs=1),
                                            reference=reference, base_metrics=False)  # round 0 scores the base
        if len(self.candidate.records) != len(rounds):
            raise ValueError(f"{edits_file} holds {len(self.candidate.records)} records, the rounds {len(rounds)}")
        self.settings, self.rounds = settings, list(rounds)
        self.model, self.tokenizer = self.candidate.model, self.candidate.tokenizer
        self._base: dict[str, float] | None = None

    def seen_records(self, upto: int) -> list[int]:
        """The records of rounds 1..`upto`: those whose accuracy items round `upto` scores."""
        return [i for i, r in enumerate(self.rounds) if r <= upto]

    def evaluate(self, upto: int, first_layer: int | None = None) -> dict[str, float]:
        """Metrics of the model after round `upto` (0: the base, whose groups are all empty but
        round 1's `current`, i.e. the edits before they are made). `first_layer`: the lowest block
        any round has changed (blocks below it still hold the base's weights).

        The base's metrics are measured once: a later call with `upto=0` (another stream from
        the same base, see `shared_base`) gets a copy of them."""
        if upto == 0 and self._base is not None:
            return dict(self._base)
        c, group = self.candidate, max(upto, 1)
        scored = self.seen_records(group)
        out: dict[str, float] = {}
        if self.settings.teacher_forced:
            edit = c.edit_eval.evaluate(self.model, c.reference.locality, first_layer=first_layer, records=scored)
            out.update(group_means(edit.per_record, self.rounds, group))
        if c.gen_eval:
            generated = c.gen_eval.evaluate(self.model, c.reference.generation, records=scored)
            out.update(group_means(generated.per_record, self.rounds, group, GEN_PREFIX))
        general = None
        if c.general_eval:
            result = c.general_eval.evaluate_result()
            better = c.general_eval.higher_is_better
            # As CandidateEvaluator scores a candidate: retention of each task against the base.
            general = general_score(result.scores, c.reference.general, better, result.chance)
            general = 0.0 if general != general else general  # NaN: no task had a base score to keep
            out.update(result.flat(GENERAL_PREFIX))
            out.update({f"{RETENTION_PREFIX}{k}": v for k, v in retention(result.scores, c.reference.general,
                                                                          better, result.chance).items()})
        p = _prefix(self.settings.edit_mode)
        seen = {f"{p}{m}": out[f"{SEEN}.{p}{m}"] for m in ACCURACY_METRICS if f"{SEEN}.{p}{m}" in out}
        if f"{p}locality" in out:
            seen[f"{p}locality"] = out[f"{p}locality"]
        family = edit_family(seen, self.settings.edit_mode)
        out.update(objective_values(family, general, self.settings.edit_weights, self.settings.combined_edit_weight))
        if upto == 0:
            self._base = dict(out)
        return out


def _prefix(edit_mode: str) -> str:
    return "" if edit_mode == TEACHER_FORCED else GEN_PREFIX

