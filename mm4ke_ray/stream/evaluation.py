"""The metrics of a stream's model after a round, with the product's evaluators.

One evaluator over every record of the stream, built once on the base model (its locality
predictions, generated locality answers and general scores are the reference every round is
compared with). After round t the per-record rows are grouped by round:

- `current.<m>`: round t's own edits; `seen.<m>`: every edit of rounds 1..t (the retention of
  old edits together with the new); `old.<m>`: rounds 1..t-1 only (absent in round 1);
  `round<s>.<m>` per earlier round s <= t (edit success only: the triangle of a retention map).
- `locality`: all the stream's locality items, edited or not yet, against the **base** model's
  answers: a fixed set, so the curve compares across rounds.
- `general_score` and `general.<task>`: lm-eval retention against the base, as the sweep scores.
- `edit_score`: the configured weighted mean of the `seen` edit metrics (0..1).

Generated metrics carry `gen.` after the group (`seen.gen.edit_succ`), as in the sweep.
A mean over records counts each record with a value once (as `EditEvaluator` does).
"""

from __future__ import annotations

from collections.abc import Sequence

from mm4ke_ray.evaluate.candidate import EvalSettings
from mm4ke_ray.evaluate.edit_metrics import EditEvaluator
from mm4ke_ray.evaluate.general import GeneralEvaluator, general_score
from mm4ke_ray.evaluate.generation import GenerationEvaluator
from mm4ke_ray.evaluate.scores import edit_family, objective_values
from mm4ke_ray.schema import GEN_PREFIX, GENERAL_PREFIX, TEACHER_FORCED
from mm4ke_ray.stream.rounds import Stream

ACCURACY_METRICS = ("edit_succ", "generalization", "portability")  # per group of edits; locality is global
CURRENT, SEEN, OLD = "current", "seen", "old"


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


class StreamEvaluator:
    """Edit metrics by round group, locality and general score of the model as it is now."""

    def __init__(self, settings: EvalSettings, model, tokenizer, stream: Stream):
        s = self.settings = settings
        self.model = model
        self.rounds = stream.round_of()
        records = stream.records
        self.edit_eval = EditEvaluator(tokenizer, records, prompt_format=s.prompt_format, batch_size=s.batch_size,
                                       prefix_cache=s.prefix_cache) if s.teacher_forced else None
        self.gen_eval = GenerationEvaluator(tokenizer, records, prompt_format=s.prompt_format, batch_size=s.batch_size,
                                            match=s.generation_match,
                                            extra_new_tokens=s.generation_extra_tokens) if s.generation else None
        self.general_eval = GeneralEvaluator.for_prompt_format(
            model, tokenizer, list(s.general_tasks), s.prompt_format, include_path=s.task_include_path,
            limit=s.general_limit, metrics=s.general_metrics) if s.general_tasks else None
        # The base model's answers: what locality and general retention compare with, every round.
        self.locality_ref = self.edit_eval.base_predictions(model) if self.edit_eval else None
        self.generation_ref = self.gen_eval.base_generations(model) if self.gen_eval else None
        self.general_ref = self.general_eval.evaluate_result().scores if self.general_eval else None

    def evaluate(self, upto: int, first_layer: int | None = None) -> dict[str, float]:
        """Metrics of the model after round `upto` (0: the base, whose groups are all empty but
        round 1's `current`, i.e. the edits before they are made). `first_layer`: the lowest block
        any round has changed (blocks below it still hold the base's weights)."""
        group = max(upto, 1)
        out: dict[str, float] = {}
        if self.edit_eval:
            edit = self.edit_eval.evaluate(self.model, self.locality_ref, first_layer=first_layer)
            out.update(group_means(edit.per_record, self.rounds, group))
        if self.gen_eval:
            generated = self.gen_eval.evaluate(self.model, self.generation_ref)
            out.update(group_means(generated.per_record, self.rounds, group, GEN_PREFIX))
        general = None
        if self.general_eval:
            result = self.general_eval.evaluate_result()
            better = self.general_eval.higher_is_better
            general = general_score(result.scores, self.general_ref, better)
            general = 0.0 if general != general else general  # NaN: no task had a base score to keep
            out.update(result.flat(GENERAL_PREFIX))
        p = _prefix(self.settings.edit_mode)
        seen = {f"{p}{m}": out[f"{SEEN}.{p}{m}"] for m in ACCURACY_METRICS if f"{SEEN}.{p}{m}" in out}
        if f"{p}locality" in out:
            seen[f"{p}locality"] = out[f"{p}locality"]
        family = edit_family(seen, self.settings.edit_mode)
        out.update(objective_values(family, general, self.settings.edit_weights, self.settings.combined_edit_weight))
        return out


def _prefix(edit_mode: str) -> str:
    return "" if edit_mode == TEACHER_FORCED else GEN_PREFIX

