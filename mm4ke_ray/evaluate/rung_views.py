"""A candidate evaluator's rungs (successive halving): the views it scores a rung or a rung's new
items with, the join of a rung below with those new items, and a lower rung's standard errors
and per-item scores for promotion.

`RungViews` is a mixin of `CandidateEvaluator` (candidate.py): it uses the evaluator's model,
tokenizer, records, lm-eval evaluator, base reference and `_measure`. A view holds the base
model's reference on exactly its items, so views are built on first use while the model is the
base (never between a merge and its restore) and kept.
"""

from __future__ import annotations

from dataclasses import dataclass

from mm4ke_ray.evaluate.edit_metrics import EditEvaluator, EditMetrics
from mm4ke_ray.evaluate.fidelity import (
    EDIT_SE,
    GENERAL_SE,
    RUNG_ITEMS,
    RungItems,
    RungPlan,
    edit_score_stderr,
    mean_stderr,
    plan_rungs,
)
from mm4ke_ray.evaluate.general import GeneralResult
from mm4ke_ray.evaluate.generation import (
    GenerationEvaluator,
    GenerationMetrics,
    GenerationReference,
)
from mm4ke_ray.evaluate.rung_reuse import join_general, join_rows, whole_general
from mm4ke_ray.evaluate.task_stats import paired_log_items
from mm4ke_ray.schema import GENERATION, TEACHER_FORCED


@dataclass
class Reference:
    """What the base model scores: computed once per sweep and shared by every evaluator."""

    locality: object  # LocalityReference of the base model
    general: dict[str, float]
    metrics: dict  # the base model's own edit metrics and objectives
    general_result: GeneralResult | None = None  # stderr/chance/docs of the base: the noise guard's input
    generation: GenerationReference | None = None  # the base's generated locality answers (generation mode)


@dataclass
class View:
    """What one fidelity scores with: the evaluators of its records, its lm-eval document subset
    (None: the configured documents) and the base model's reference on exactly those items."""

    edit_eval: EditEvaluator
    gen_eval: GenerationEvaluator | None
    samples: dict[str, list[int]] | None
    reference: Reference
    n_records: int
    n_docs: int
    docs_population: dict[str, int] | None = None  # per general output key, the full rung's documents


class RungViews:
    """The rung methods of `CandidateEvaluator` (see the module doc)."""

    _plan: RungPlan | None
    _rung_views: dict[int, View]
    _chunk_views: dict[tuple[int, int], View]

    def rung_plan(self) -> RungPlan:
        """The sweep's rung subsets (`fidelity.plan_rungs`): the same in every evaluator of a sweep."""
        if self._plan is None:
            s = self.settings
            docs = self.general_eval.docs_per_task() if self.general_eval else {}
            self._plan = plan_rungs(len(self.records), docs, s.fidelity_rungs, s.fidelity_reduction_factor,
                                    s.fidelity_seed, s.fidelity_min_items)
        return self._plan

    def _rung_view(self, rung: int) -> View:
        """Rung `rung`'s evaluators and the base's reference on its items; built on first use, when
        the model is the base (never between a merge and its restore), and kept."""
        if rung not in self._rung_views:
            s, plan = self.settings, self.rung_plan()
            records = [self.records[i] for i in plan.records(rung)]
            edit_eval = EditEvaluator(self.tokenizer, records, prompt_format=s.prompt_format,
                                      batch_size=s.batch_size, prefix_cache=s.prefix_cache,
                                      record_ids=plan.records(rung))
            gen_eval = None
            if self.gen_eval:
                gen_eval = self._generation_evaluator(records)
            samples = plan.general_samples(rung) if self.general_eval else None
            result = self.general_eval.evaluate_result(samples) if self.general_eval else None
            reference = Reference(
                locality=edit_eval.base_predictions(self.model) if s.teacher_forced else None,
                general=result.scores if result else {}, metrics={}, general_result=result,
                generation=gen_eval.base_generations(self.model) if gen_eval else None,
            )
            full = self.reference.general_result
            self._rung_views[rung] = View(edit_eval, gen_eval, samples, reference, len(records),
                                           sum(len(d) for d in (samples or {}).values()),
                                           dict(full.n_docs) if full else None)
        return self._rung_views[rung]

    def _every_doc(self, rung: int) -> bool:
        """Whether rung `rung` scores every document of every task (so a rung above adds records only)."""
        if not self.general_eval:
            return False
        plan = self.rung_plan()
        return plan.whole_tasks(rung) == set(plan.general_docs)

    def _new_items(self, below: int, rung: int) -> tuple[list[int], dict[str, list[int]]]:
        """The records and, per task, documents that rung `rung` adds to rung `below`."""
        plan = self.rung_plan()
        old = set(plan.records(below))
        docs = {}
        if self.general_eval:
            old_docs = plan.general_samples(below)
            docs = {t: [d for d in ds if d not in set(old_docs[t])] for t, ds in plan.general_samples(rung).items()}
        return [i for i in plan.records(rung) if i not in old], docs

    def _chunk_view(self, below: int, rung: int) -> View:
        """The items rung `rung` adds to rung `below` (`rung_reuse.py`), with the base's locality
        reference on them; built on first use, when the model is the base, and kept."""
        if (below, rung) not in self._chunk_views:
            s, (ids, docs) = self.settings, self._new_items(below, rung)
            records = [self.records[i] for i in ids]
            edit_eval = EditEvaluator(self.tokenizer, records, prompt_format=s.prompt_format,
                                      batch_size=s.batch_size, prefix_cache=s.prefix_cache, record_ids=ids)
            gen_eval = self._generation_evaluator(records) if self.gen_eval else None
            reference = Reference(
                locality=edit_eval.base_predictions(self.model) if s.teacher_forced else None, general={},
                metrics={}, generation=gen_eval.base_generations(self.model) if gen_eval else None)
            self._chunk_views[(below, rung)] = View(edit_eval, gen_eval, docs or None, reference, len(records),
                                                     sum(len(d) for d in docs.values()))
        return self._chunk_views[(below, rung)]

    def _measure_joined(self, prior: dict, rung: int, first_layer: int | None) -> tuple[dict, GeneralResult | None]:
        """`_measure` of rung `rung` from the rung below's items (`prior`, `rung_reuse.payload`)
        and a scoring of the new items only, joined: the numbers a scoring of the whole rung gives."""
        plan, below = self.rung_plan(), prior["rung"]
        ids, docs = self._new_items(below, rung)
        measured, result = self._measure(self._chunk_view(below, rung), first_layer)
        kinds = {TEACHER_FORCED: EditMetrics, GENERATION: GenerationMetrics}
        joined = {mode: kinds[mode].from_rows(join_rows(prior["rows"][mode], plan.records(below), m.per_record, ids))
                  for mode, m in measured.items()}
        if prior.get("general_whole") is not None and not any(docs.values()):
            result = whole_general(prior)  # the same documents, all of them, scored below
        elif result is not None:
            result = join_general(prior["general"], plan.general_samples(below), result, docs)
        return joined, result

    def _objective_stderrs(self, per_record: list[dict], general_se: float | None,
                           general_items: dict[str, list[float]] | None, docs_population: dict[str, int]) -> dict:
        """SEs of the objectives at a rung, from per-record scores (finite-population corrected
        against the whole edit set), and the per-item scores themselves (`fidelity.RungItems`),
        for paired comparisons. Without general tasks locality stands in as the general
        objective, as in `objective_values`."""
        n, has_tasks = len(self.records), self.general_eval is not None
        edit = self._edit_rows(per_record)
        out = {EDIT_SE: edit_score_stderr(edit, n)}
        population = {task: docs_population.get(task, len(v)) for task, v in (general_items or {}).items()}
        if not has_tasks:
            loc = [row["locality"] / 100.0 for row in per_record if row.get("locality") is not None]
            general_se = mean_stderr(loc, n)
            general_items, population = {"locality": loc}, {"locality": n}
        out[GENERAL_SE] = general_se
        out = {k: v for k, v in out.items() if v is not None}
        out[RUNG_ITEMS] = RungItems(tuple(edit), n, None if general_items is None else
                                    {t: tuple(v) for t, v in general_items.items()},
                                    None if general_items is None else population).to_dict()
        return out


def retention_items(result, base: dict[str, float], higher_is_better: dict[str, bool]) -> dict | None:
    """Per task, each document's item on the retention scale of the general objective: its value
    over the base's span above chance (value / (base − floor)), or for a perplexity −NLL over the
    mean words (`task_stats.paired_log_items`: differences in log retention, ≈ in retention near
    1). A task whose base is at or below its floor is left out, as `general_score` leaves it out;
    None when a task has no per-document values (then the general difference cannot be paired)."""
    out = {}
    for task, b in base.items():
        values = result.per_doc.get(task)
        if values is None:
            return None
        if not higher_is_better.get(task, True):
            weights = result.doc_weights.get(task)
            if not weights or sum(weights) <= 0:
                return None
            out[task] = paired_log_items(values, weights)
            continue
        span = b - (result.chance.get(task) or 0.0)
        if span > 0:  # else its retention is undefined and `general_score` leaves the task out too
            out[task] = [v / span for v in values]
    return out or None
