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
from mm4ke_ray.evaluate.evidence import min_sign_items
from mm4ke_ray.evaluate.fidelity import (
    EVAL_DOCS,
    EVAL_RECORDS,
    edit_score_stderr,
    general_score_stderr,
    mean_stderr,
)
from mm4ke_ray.evaluate.general import GeneralEvaluator, GeneralResult, general_score, retention
from mm4ke_ray.evaluate.generation import GenerationEvaluator
from mm4ke_ray.evaluate.precision import save_base_measurement
from mm4ke_ray.evaluate.real_tasks import (
    LocalTaskSpec,
    build_local_tasks,
    local_task_specs,
    task_cache_root,
)
from mm4ke_ray.evaluate.rung_reuse import REUSE, REUSED_DOCS, REUSED_RECORDS, can_join, payload
from mm4ke_ray.evaluate.rung_views import Reference, RungViews, View, retention_items
from mm4ke_ray.evaluate.scores import (
    EDIT_STDERR,
    GENERAL_STDERR,
    edit_family,
    edit_score,
    objective_values,
)
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
    # evaluation.fidelity: rungs of successive halving (1: off), their reduction factor, the
    # seed of their subsets (the sweep's seed) and the fewest items a lower rung scores (the sign
    # test's minimum at the error rate, `rung_plan.py`); `evaluate(rung=r)` scores rung r's subset.
    fidelity_rungs: int = 1
    fidelity_reduction_factor: float = 3.0
    fidelity_seed: int = 0
    fidelity_min_items: int = 1

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
            "fidelity_seed": config.search.seed, "fidelity_min_items": min_sign_items(fid.error_rate)}


class CandidateEvaluator(RungViews):
    def __init__(self, settings: EvalSettings, reference: Reference | None = None, base_metrics: bool = True):
        """`reference`: the base's, computed by another evaluator of the same settings (else here).
        `base_metrics=False` leaves `reference.metrics` empty: the base's own scores are a full
        evaluation, which a caller that scores the base itself (a stream's round 0) need not pay twice."""
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
        self.reference = reference or self._compute_reference(base_metrics)
        self._plan = None
        self._rung_views: dict[int, View] = {}
        self._chunk_views: dict[tuple[int, int], View] = {}
        self._full_docs: int | None = None

    def _generation_evaluator(self, records) -> GenerationEvaluator:
        return generation_evaluator(self.tokenizer, records, self.settings)

    @property
    def _full_view(self) -> View:
        if self._full_docs is None:
            self._full_docs = sum(self.general_eval.docs_per_task().values()) if self.general_eval else 0
        return View(self.edit_eval, self.gen_eval, None, self.reference, len(self.records), self._full_docs)

    def _compute_reference(self, base_metrics: bool = True) -> Reference:
        locality = self.edit_eval.base_predictions(self.model) if self.settings.teacher_forced else None
        generation = self.gen_eval.base_generations(self.model) if self.gen_eval else None
        result = self.general_eval.evaluate_result() if self.general_eval else None
        if result is not None:
            save_base_measurement(self.settings, result)  # what `plan` / `validate` judge precision by
        ref = Reference(locality=locality, general=result.scores if result else {}, metrics={}, general_result=result,
                        generation=generation)
        self.reference = ref
        if base_metrics:
            ref.metrics = self._score(seconds=0.0)
        return ref

    def _measure(self, view: View, first_layer: int | None) -> tuple[dict, GeneralResult | None]:
        """The model as it is now on `view`'s items: per metric family its `EditMetrics` /
        `GenerationMetrics`, and lm-eval's result (None without tasks)."""
        measured, result = {}, None
        if self.settings.teacher_forced:
            measured[TEACHER_FORCED] = view.edit_eval.evaluate(self.model, view.reference.locality,
                                                               fluency=self.settings.fluency, first_layer=first_layer)
        if view.gen_eval:
            measured[GENERATION] = view.gen_eval.evaluate(self.model, view.reference.generation)
        no_docs = view.samples is not None and not any(view.samples.values())  # a chunk of records only
        if self.general_eval and not no_docs:
            reuse = first_layer if self.settings.prefix_cache else None  # as for the edit metrics above
            with self.general_eval.layers_below_unchanged(reuse):
                result = self.general_eval.evaluate_result(view.samples)
        return measured, result

    def _score(self, seconds: float, first_layer: int | None = None,
               view: View | None = None, measured: tuple | None = None) -> dict:
        """Metrics and objectives of the model as it is now (or of what `measured` holds); on a
        rung's `view`, also the objectives' standard errors (`fidelity.EDIT_SE`, `GENERAL_SE`)
        that promotion needs."""
        start = time.perf_counter()
        low = view is not None
        view = view or View(self.edit_eval, self.gen_eval, None, self.reference, 0, 0)
        families, result = measured or self._measure(view, first_layer)
        metrics, rows = {}, {}
        for mode, family in families.items():
            flat = family.flat()
            metrics.update(flat if mode == TEACHER_FORCED else {gen_metric(k): v for k, v in flat.items()})
            rows[mode] = family.per_record
        out = {k: v for k, v in metrics.items() if v is not None}
        general = general_se = general_items = precision = None
        if self.general_eval:
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
                general_items = retention_items(result, view.reference.general, better)
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

    def evaluate(self, delta: dict[str, torch.Tensor], alpha: float, sparsity: float, seed: int = 0,
                 rung: int | None = None, prior: dict | None = None) -> dict:
        """Merge (in place), evaluate, restore. Returns metrics and objectives of the candidate.

        `rung` (successive halving, `settings.fidelity_rungs` > 1): score only that rung's
        subset of records and documents (`rung_plan`); None or the last rung is the full
        evaluation, the same as without halving. Either way the metrics say how many records
        (`fidelity.EVAL_RECORDS`) and documents (`EVAL_DOCS`) the scores stand on. A lower rung
        also returns its per-item results (`rung_reuse.REUSE`); given back as `prior` to the same
        candidate's next rung, only the items that rung adds are scored (`REUSED_RECORDS`,
        `REUSED_DOCS`: how many were read back instead), with the same numbers."""
        plan = self.rung_plan() if rung is not None else None
        full = plan is None or plan.is_full(rung)
        view = None if full else self._rung_view(rung)  # before the merge: its base reference needs the base model
        if plan is not None and prior is not None and can_join(prior, *self._new_items(prior["rung"], rung)):
            self._chunk_view(prior["rung"], rung)  # likewise
        else:
            prior = None
        start = time.perf_counter()
        device = next(self.model.parameters()).device
        # Sparsify on the model's device: a top-k over a 7B model's MLP takes seconds on CPU, ms on GPU.
        delta = {k: v.to(device, non_blocking=True) for k, v in delta.items()}
        snapshot = apply_delta_(self.model, delta, alpha=alpha, sparsity=sparsity, method=self.settings.merge_method, seed=seed)
        merge_seconds = time.perf_counter() - start
        try:
            first_layer = delta_first_layer(self.model, delta)
            if prior:
                measured = self._measure_joined(prior, rung, first_layer)
            else:
                measured = self._measure(view or self._full_view, first_layer)
            out = self._score(seconds=time.perf_counter() - start, first_layer=first_layer,
                              view=view, measured=measured)
        finally:
            restore_(self.model, snapshot)
            del delta, snapshot
            release_freed_memory()
        out["merge_seconds"] = merge_seconds
        counted = view or self._full_view
        out[EVAL_RECORDS], out[EVAL_DOCS] = counted.n_records, counted.n_docs
        if prior:
            below = prior["rung"]
            out[REUSED_RECORDS] = len(plan.records(below))
            out[REUSED_DOCS] = sum(map(len, plan.general_samples(below).values())) if self.general_eval else 0
        if not full:
            families, result = measured
            out[REUSE] = payload(rung, {mode: f.per_record for mode, f in families.items()}, result,
                                 self.general_eval is not None, every_doc=self._every_doc(rung))
        return out


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
