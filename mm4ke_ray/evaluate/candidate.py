"""Merge, evaluate, restore: the one home of a merge candidate's evaluation, Ray-free.

A `CandidateEvaluator` loads the base model once, tokenizes the edit set once, computes the base
model's locality predictions and general scores once, and then for each candidate
(delta, α, sparsity) applies the merge in place, evaluates, and restores the base bit for bit.
It knows nothing of Ray: the sweep wraps it in an actor.

`evaluation.mode` picks the edit-metric families: teacher-forced (bare names, e.g. `edit_succ`),
generation (`gen.edit_succ`, see `evaluate.generation`; the base's generated locality answers are
part of the reference) or both; `objectives.edit_mode` picks the family the edit score uses.

A delta on block L's MLP leaves blocks below L as they are, so the edit metrics reuse the hidden
states entering block L across candidates (`EditEvaluator(prefix_cache=True)`, `first_layer`).
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass, field

import torch

from mm4ke_ray.config import SweepConfig
from mm4ke_ray.data import load_edit_records
from mm4ke_ray.evaluate.edit_metrics import EditEvaluator
from mm4ke_ray.evaluate.fidelity import (
    EDIT_SE,
    EVAL_DOCS,
    EVAL_RECORDS,
    GENERAL_SE,
    RUNG_ITEMS,
    RungItems,
    RungPlan,
    edit_score_stderr,
    general_score_stderr,
    mean_stderr,
    plan_rungs,
)
from mm4ke_ray.evaluate.general import GeneralEvaluator, GeneralResult, general_score, retention
from mm4ke_ray.evaluate.generation import GenerationEvaluator, GenerationReference
from mm4ke_ray.evaluate.precision import save_base_measurement
from mm4ke_ray.evaluate.real_tasks import (
    LocalTaskSpec,
    build_local_tasks,
    local_task_specs,
    task_cache_root,
)
from mm4ke_ray.evaluate.scores import (
    EDIT_STDERR,
    GENERAL_STDERR,
    edit_family,
    edit_score,
    objective_values,
)
from mm4ke_ray.evaluate.task_stats import paired_log_items
from mm4ke_ray.merge import apply_delta_, restore_
from mm4ke_ray.modeling import decoder_layers, load_model, load_tokenizer, mlp_prefix
from mm4ke_ray.schema import (
    GENERAL_PREFIX,
    GENERATION,
    RETENTION_PREFIX,
    TEACHER_FORCED,
    gen_metric,
)


@dataclass(frozen=True)
class EvalSettings:
    """Everything a candidate evaluator needs, resolved to local paths / hub ids."""

    model: str
    edits: str
    dtype: str = "float32"
    trust_remote_code: bool = False
    allow_pickle: bool = False  # accept pickle checkpoints (off: safetensors only)
    data_format: str | None = None
    limit: int | None = None
    skip_invalid: bool = False
    prompt_format: str = "plain"
    batch_size: int = 32
    fluency: bool = False
    general_tasks: tuple[str, ...] = ()
    task_include_path: str | None = None
    general_limit: int | float | None = None
    general_metrics: dict = field(default_factory=dict)  # {task: metric}; default its first
    general_shared_context: bool = True  # evaluation.shared_context: SharedContextHFLM (same results, faster)
    local_tasks: tuple[LocalTaskSpec, ...] = ()  # general tasks built from local files (real_tasks)
    general_chat_template: bool = False  # lm-eval's apply_chat_template (config.general_chat_template)
    general_max_length: int | None = None  # lm-eval's context window (None: the model's)
    merge_method: str = "magnitude"
    edit_weights: dict = field(default_factory=dict)
    combined_edit_weight: float = 0.5
    device: str = "cpu"
    prefix_cache: bool = True  # reuse hidden states below the delta's layer (identical metrics)
    eval_mode: str = TEACHER_FORCED  # evaluation.mode: teacher-forced | generation | both
    edit_mode: str = TEACHER_FORCED  # the family the edit score uses (SweepConfig.edit_mode)
    generation_match: str = "equals"
    generation_stop: str = "wild"
    generation_max_new_tokens: int = 64
    generation_extra_tokens: int | None = None  # the pre-WILD cap: target tokens + this
    # evaluation.fidelity: rungs of successive halving (1: off), their reduction factor and the
    # seed of their subsets (the sweep's seed); `evaluate(rung=r)` scores rung r's subset.
    fidelity_rungs: int = 1
    fidelity_reduction_factor: float = 3.0
    fidelity_seed: int = 0

    @property
    def teacher_forced(self) -> bool:
        return self.eval_mode != GENERATION

    @property
    def generation(self) -> bool:
        return self.eval_mode != TEACHER_FORCED


def eval_settings(config: SweepConfig, device: str) -> EvalSettings:
    """A sweep config's evaluation settings on `device`: what the pool, the trial and export use."""
    return EvalSettings(
        model=config.model.name, edits=config.data.edits, dtype=config.model.dtype,
        trust_remote_code=config.model.trust_remote_code, data_format=config.data.format, limit=config.data.limit,
        skip_invalid=config.data.skip_invalid, prompt_format=config.data.prompt_format,
        batch_size=config.evaluation.batch_size, fluency=config.evaluation.fluency,
        general_tasks=tuple(config.evaluation.general_tasks), task_include_path=config.evaluation.task_include_path,
        general_limit=config.evaluation.general_limit, general_metrics=dict(config.evaluation.general_metrics),
        general_shared_context=config.evaluation.shared_context,
        general_chat_template=config.general_chat_template,
        local_tasks=local_task_specs(config), general_max_length=config.evaluation.general_max_length,
        merge_method=config.merge.method,
        edit_weights=dict(config.objectives.edit_weights), combined_edit_weight=config.objectives.combined_edit_weight,
        device=device, allow_pickle=config.model.allow_pickle, eval_mode=config.evaluation.mode,
        edit_mode=config.edit_mode, generation_match=config.evaluation.generation_match,
        generation_extra_tokens=config.evaluation.generation_extra_tokens,
        generation_stop=config.evaluation.generation_stop,
        generation_max_new_tokens=config.evaluation.generation_max_new_tokens,
        **_fidelity_settings(config),
    )


def generation_evaluator(tokenizer, records, s: EvalSettings) -> GenerationEvaluator:
    """The generated-answer evaluator of `records` under the settings' match, stop and budget rules."""
    return GenerationEvaluator(tokenizer, records, prompt_format=s.prompt_format, batch_size=s.batch_size,
                               match=s.generation_match, stop=s.generation_stop,
                               max_new_tokens=s.generation_max_new_tokens,
                               extra_new_tokens=s.generation_extra_tokens)


def _fidelity_settings(config: SweepConfig) -> dict:
    fid = config.evaluation.fidelity
    if not fid.enabled:
        return {}
    return {"fidelity_rungs": fid.rungs, "fidelity_reduction_factor": fid.reduction_factor,
            "fidelity_seed": config.search.seed}


@dataclass
class _View:
    """What one fidelity scores with: the evaluators of its records, its lm-eval document subset
    (None: the configured documents) and the base model's reference on exactly those items."""

    edit_eval: EditEvaluator
    gen_eval: GenerationEvaluator | None
    samples: dict[str, list[int]] | None
    reference: Reference
    n_records: int
    n_docs: int
    docs_population: dict[str, int] | None = None  # per general output key, the full rung's documents


@dataclass
class Reference:
    """What the base model scores: computed once per sweep and shared by every evaluator."""

    locality: object  # LocalityReference of the base model
    general: dict[str, float]
    metrics: dict  # the base model's own edit metrics and objectives
    general_result: GeneralResult | None = None  # stderr/chance/docs of the base: the noise guard's input
    generation: GenerationReference | None = None  # the base's generated locality answers (generation mode)


class CandidateEvaluator:
    def __init__(self, settings: EvalSettings, reference: Reference | None = None):
        self.settings = s = settings
        self.tokenizer = load_tokenizer(s.model, trust_remote_code=s.trust_remote_code)
        self.model = load_model(
            s.model, dtype=s.dtype, device=s.device, trust_remote_code=s.trust_remote_code, allow_pickle=s.allow_pickle
        )
        records = load_edit_records(s.edits, limit=s.limit, skip_invalid=s.skip_invalid, fmt=s.data_format).records
        self.records = records
        self.edit_eval = EditEvaluator(self.tokenizer, records, prompt_format=s.prompt_format, batch_size=s.batch_size,
                                       prefix_cache=s.prefix_cache)
        self.gen_eval = None
        if s.generation:
            self.gen_eval = generation_evaluator(self.tokenizer, records, s)
        self.general_eval = None
        if s.general_tasks:
            include = [s.task_include_path] if s.task_include_path else []
            include += build_local_tasks(list(s.local_tasks), task_cache_root())  # later paths win a name
            self.general_eval = GeneralEvaluator(
                self.model, self.tokenizer, list(s.general_tasks), apply_chat_template=s.general_chat_template,
                include_path=include or None, limit=s.general_limit, metrics=s.general_metrics,
                shared_context=s.general_shared_context, max_length=s.general_max_length,
            )
        if reference is not None:
            _check_reference(reference, s)
        self.reference = reference or self._compute_reference()
        self._plan: RungPlan | None = None
        self._rung_views: dict[int, _View] = {}
        self._full_docs: int | None = None

    @property
    def _full_view(self) -> _View:
        if self._full_docs is None:
            self._full_docs = sum(self.general_eval.docs_per_task().values()) if self.general_eval else 0
        return _View(self.edit_eval, self.gen_eval, None, self.reference, len(self.records), self._full_docs)

    def rung_plan(self) -> RungPlan:
        """The sweep's rung subsets (`fidelity.plan_rungs`): the same in every evaluator of a sweep."""
        if self._plan is None:
            s = self.settings
            docs = self.general_eval.docs_per_task() if self.general_eval else {}
            self._plan = plan_rungs(len(self.records), docs, s.fidelity_rungs, s.fidelity_reduction_factor,
                                    s.fidelity_seed)
        return self._plan

    def _rung_view(self, rung: int) -> _View:
        """Rung `rung`'s evaluators and the base's reference on its items; built on first use, when
        the model is the base (never between a merge and its restore), and kept."""
        if rung not in self._rung_views:
            s, plan = self.settings, self.rung_plan()
            records = [self.records[i] for i in plan.records(rung)]
            edit_eval = EditEvaluator(self.tokenizer, records, prompt_format=s.prompt_format,
                                      batch_size=s.batch_size, prefix_cache=s.prefix_cache)
            gen_eval = None
            if self.gen_eval:
                gen_eval = generation_evaluator(self.tokenizer, records, s)
            samples = plan.general_samples(rung) if self.general_eval else None
            result = self.general_eval.evaluate_result(samples) if self.general_eval else None
            reference = Reference(
                locality=edit_eval.base_predictions(self.model) if s.teacher_forced else None,
                general=result.scores if result else {}, metrics={}, general_result=result,
                generation=gen_eval.base_generations(self.model) if gen_eval else None,
            )
            full = self.reference.general_result
            self._rung_views[rung] = _View(edit_eval, gen_eval, samples, reference, len(records),
                                           sum(len(d) for d in (samples or {}).values()),
                                           dict(full.n_docs) if full else None)
        return self._rung_views[rung]

    def _compute_reference(self) -> Reference:
        locality = self.edit_eval.base_predictions(self.model) if self.settings.teacher_forced else None
        generation = self.gen_eval.base_generations(self.model) if self.gen_eval else None
        result = self.general_eval.evaluate_result() if self.general_eval else None
        if result is not None:
            save_base_measurement(self.settings, result)  # what `plan` / `validate` judge precision by
        ref = Reference(locality=locality, general=result.scores if result else {}, metrics={}, general_result=result,
                        generation=generation)
        self.reference = ref
        ref.metrics = self._score(alpha=None, sparsity=None, seconds=0.0)
        return ref

    def _score(self, alpha, sparsity, seconds: float, first_layer: int | None = None,
               view: _View | None = None) -> dict:
        """Metrics and objectives of the model as it is now; on a rung's `view`, also the
        objectives' standard errors (`fidelity.EDIT_SE`, `GENERAL_SE`) that promotion needs."""
        start = time.perf_counter()
        low = view is not None
        view = view or _View(self.edit_eval, self.gen_eval, None, self.reference, 0, 0)
        metrics, rows = {}, {}
        if self.settings.teacher_forced:
            edit = view.edit_eval.evaluate(self.model, view.reference.locality, fluency=self.settings.fluency,
                                           first_layer=first_layer)
            metrics.update(edit.flat())
            rows[TEACHER_FORCED] = edit.per_record
        if view.gen_eval:
            generated = view.gen_eval.evaluate(self.model, view.reference.generation)
            metrics.update({gen_metric(k): v for k, v in generated.flat().items()})
            rows[GENERATION] = generated.per_record
        out = {k: v for k, v in metrics.items() if v is not None}
        general = general_se = general_items = precision = None
        if self.general_eval:
            reuse = first_layer if self.settings.prefix_cache else None  # as for the edit metrics above
            with self.general_eval.layers_below_unchanged(reuse):
                result = self.general_eval.evaluate_result(view.samples)
            scores, floor = result.scores, result.chance
            better = self.general_eval.higher_is_better
            kept = retention(scores, view.reference.general, better, floor)
            general = general_score(scores, view.reference.general, better, floor)
            if general != general:  # NaN: no task's base score was above its floor; nothing to retain
                general = 0.0
            out.update(result.flat(GENERAL_PREFIX))  # general.<task>, general.<task>.stderr
            out.update({f"{RETENTION_PREFIX}{k}": v for k, v in kept.items()})
            # the general score's SE as an estimate of the candidate's ability (no rung correction)
            precision = general_score_stderr(result.stderr, view.reference.general, result.n_docs, {}, better,
                                             floor, scores)
            if low:
                general_se = general_score_stderr(result.stderr, view.reference.general, result.n_docs,
                                                  view.docs_population or {}, better, floor, scores)
                general_items = _general_items(result, view.reference.general, better)
        family = edit_family(out, self.settings.edit_mode)
        out.update(objective_values(family, general, self.settings.edit_weights, self.settings.combined_edit_weight))
        out.update(self._precision(rows.get(self.settings.edit_mode) or [], precision))
        if low:
            out.update(self._objective_stderrs(rows.get(self.settings.edit_mode) or [], general_se, general_items,
                                               view.docs_population or {}))
        out["eval_seconds"] = time.perf_counter() - start + seconds
        return out

    def _edit_rows(self, per_record: list[dict]) -> list[float]:
        exclude = () if self.general_eval is not None else ("locality",)
        return [edit_score(row, self.settings.edit_weights, exclude=exclude) for row in per_record]

    def _precision(self, per_record: list[dict], general_se: float | None) -> dict:
        """The objectives' SEs as estimates of the candidate's abilities (`EDIT_STDERR`,
        `GENERAL_STDERR`: over its records and documents, no rung correction), for the front's
        error bars; without tasks locality stands in for general ability, as in `objective_values`."""
        if self.general_eval is None:
            general_se = mean_stderr([row["locality"] / 100.0 for row in per_record if row.get("locality") is not None])
        out = {EDIT_STDERR: edit_score_stderr(self._edit_rows(per_record)), GENERAL_STDERR: general_se}
        return {k: v for k, v in out.items() if v is not None}

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

    def evaluate(self, delta: dict[str, torch.Tensor], alpha: float, sparsity: float, seed: int = 0,
                 rung: int | None = None) -> dict:
        """Merge (in place), evaluate, restore. Returns metrics and objectives of the candidate.

        `rung` (successive halving, `settings.fidelity_rungs` > 1): score only that rung's
        subset of records and documents (`rung_plan`); None or the last rung is the full
        evaluation, the same as without halving. Either way the metrics say how many records
        (`fidelity.EVAL_RECORDS`) and documents (`EVAL_DOCS`) were scored."""
        view = None
        if rung is not None and not self.rung_plan().is_full(rung):
            view = self._rung_view(rung)  # before the merge: its base reference needs the base model
        start = time.perf_counter()
        device = next(self.model.parameters()).device
        # Sparsify on the model's device: a top-k over a 7B model's MLP takes seconds on CPU, ms on GPU.
        delta = {k: v.to(device, non_blocking=True) for k, v in delta.items()}
        snapshot = apply_delta_(self.model, delta, alpha=alpha, sparsity=sparsity, method=self.settings.merge_method, seed=seed)
        merge_seconds = time.perf_counter() - start
        try:
            out = self._score(alpha, sparsity, seconds=merge_seconds, first_layer=delta_first_layer(self.model, delta),
                              view=view)
        finally:
            restore_(self.model, snapshot)
            del delta, snapshot
            release_freed_memory()
        out["merge_seconds"] = merge_seconds
        counted = view or self._full_view
        out[EVAL_RECORDS], out[EVAL_DOCS] = counted.n_records, counted.n_docs
        return out


def _general_items(result, base: dict[str, float], higher_is_better: dict[str, bool]) -> dict | None:
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


def _check_reference(reference: Reference, settings: EvalSettings) -> None:
    """A shared reference must hold what this evaluator's mode compares against."""
    missing = [what for what, needed, held in (
        ("teacher-forced locality predictions", settings.teacher_forced, reference.locality),
        ("generated locality answers", settings.generation, reference.generation),
    ) if needed and held is None]
    if missing:
        raise ValueError(f"the shared reference lacks the base's {' and '.join(missing)} that evaluation.mode "
                         f"{settings.eval_mode!r} needs: it was computed under another mode")


def release_freed_memory() -> None:
    """Hand memory freed by this candidate back to the OS (glibc's `malloc_trim`; elsewhere a no-op).

    Each candidate allocates and frees tens of MB (update, snapshot, activations). glibc keeps
    freed blocks in its heaps, so a long-lived actor's RSS drifted up and down by 5-10% over 100
    candidates on a 110M model; trimming after each candidate keeps it flat (~1 ms).
    """
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC = None


def delta_first_layer(model, names) -> int | None:
    """The lowest block whose MLP the delta's tensors (`names`) belong to; None if any tensor is
    outside every block's MLP (an embedding, attention, ...), when no block's input is unchanged."""
    try:
        prefixes = [mlp_prefix(model, i) + "." for i in range(len(decoder_layers(model)))]
    except ValueError:  # a block without a recognisable MLP: do not guess
        return None
    layers = []
    for name in names:
        owner = next((i for i, p in enumerate(prefixes) if name.startswith(p)), None)
        if owner is None:
            return None
        layers.append(owner)
    return min(layers) if layers else None
