"""General ability through lm-eval, on the resident in-memory model, once per merge candidate.

The task dict and the `HFLM` wrapper are built once per evaluator; every `evaluate()` call runs
`lm_eval.evaluator.evaluate` on the model's weights as they are at that moment (the merge step
changes them in place and restores them afterwards). Building tasks once is what makes a
candidate cheap: ~0.05 s for a 20-doc task on a tiny model vs ~0.5 s with `simple_evaluate`,
which rebuilds the tasks every call.

Offline by default: `HF_HUB_OFFLINE` / `HF_DATASETS_OFFLINE` are set to 1 unless the user has set
them (set `HF_HUB_OFFLINE=0` to let built-in tasks download their data). `HF_HOME` is left
alone on purpose: redirecting it would hide the user's cached models and datasets, which offline
mode could then not reach. Tasks written by `write_multiple_choice_task` keep their `datasets`
cache beside their files.

`retention` / `general_score` (in `scores`, re-exported here) turn candidate and base scores into
the "general ability kept" objective: per task the ability above chance kept, (candidate −
floor) / (base − floor), base / candidate for a perplexity, in [0, 1]. `evaluate_result()` adds
each score's standard error (closed form over the documents, see `task_stats`), chance floor and
document count, which `GeneralResult.check_noise` judges and `GeneralResult.flat` names for a
tracker (`general.<task>`, `general.<task>.stderr`).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mm4ke_ray.errors import UserError
from mm4ke_ray.evaluate.local_tasks import write_multiple_choice_task
from mm4ke_ray.evaluate.scores import NOISE_Z, check_task_noise, general_score, retention
from mm4ke_ray.evaluate.shared_context_lm import shared_context_hflm_class
from mm4ke_ray.evaluate.task_index import (
    load_each,
    task_manager,
    use_offline_defaults,
    validate_tasks,
)
from mm4ke_ray.evaluate.task_stats import LeafStats, leaf_stats
from mm4ke_ray.modeling.modes import eval_mode

__all__ = [
    "GeneralEvaluator",
    "GeneralResult",
    "check_task_noise",
    "general_score",
    "primary_scores",
    "retention",
    "use_offline_defaults",
    "validate_tasks",
    "write_multiple_choice_task",
]

def _quiet_hflm_class(shared_context: bool = False):
    """HFLM without per-call progress bars (one per candidate would flood a worker's log);
    `shared_context`: lm-eval's HFLM that scores each shared context once (same results)."""
    from lm_eval.models.huggingface import HFLM

    class QuietHFLM(shared_context_hflm_class() if shared_context else HFLM):
        def loglikelihood(self, requests, disable_tqdm: bool = True):
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = True):
            return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)

        def generate_until(self, requests, disable_tqdm: bool = True):
            return super().generate_until(requests, disable_tqdm=disable_tqdm)

    return QuietHFLM


def _metric_name(entry) -> str:
    metric = entry["metric"] if isinstance(entry, dict) else entry
    return metric if isinstance(metric, str) else getattr(metric, "__name__", str(metric))


def _task_metrics(task) -> list[str]:
    """The metric names a task reports, its main one (first of its metric_list) first."""
    metric_list = getattr(getattr(task, "config", None), "metric_list", None)
    if metric_list:
        return [_metric_name(m) for m in metric_list]
    return list(task.higher_is_better() or {})  # Python-defined tasks (e.g. squadv2)


def _task_metric(task, metric: str | None = None) -> tuple[str | None, bool]:
    """`metric` (default the task's main one) and whether higher is better."""
    metric = metric or next(iter(_task_metrics(task)), None)
    return metric, bool((task.higher_is_better() or {}).get(metric, True))


def _check_metric_choice(key: str, metric: str, available: list[str]) -> None:
    if metric not in available:
        raise UserError(
            f"evaluation.general_metrics: task {key!r} reports no metric {metric!r}; "
            f"it reports: {', '.join(available) or 'none'}"
        )


def _primary_key(task_results: Mapping[str, Any], metric: str | None) -> str:
    """The result key of `metric` under its first filter (e.g. 'acc,none'); the first numeric
    metric if absent."""
    keys = [k for k in task_results if "," in k and "_stderr," not in k and k != "sample_count"]
    chosen = [k for k in keys if k.split(",", 1)[0] == metric] or keys
    if not chosen:
        raise RuntimeError(f"lm-eval returned no metric values: {dict(task_results)}")
    return chosen[0]


def _primary_value(task_results: Mapping[str, Any], metric: str | None) -> float:
    return float(task_results[_primary_key(task_results, metric)])


@dataclass(frozen=True)
class GeneralResult:
    """One evaluation: per output key its score, standard error, chance floor and doc count.

    `stderr` is None where the task's aggregation is neither a mean of per-document values nor a
    perplexity (lm-eval reports none either, e.g. SQuAD 2.0's). `chance` is what picking a
    choice uniformly at random scores (multiple-choice accuracies), 0 for generated answers and
    None for a perplexity (no floor). `scale` is a metric's full scale (100 for SQuAD 2.0's
    percent scores, else 1; absent means 1), which bounds an unknown SE (`noise_floor_stderr`).
    """

    scores: dict[str, float]
    stderr: dict[str, float | None]
    chance: dict[str, float | None]
    n_docs: dict[str, int]
    metrics: dict[str, str | None]
    higher_is_better: dict[str, bool]
    settings: dict[str, Any] = field(default_factory=dict)  # the evaluator's `settings`, to record
    # Per task (not group) whose metric is a mean of per-document values: those values, in
    # document order. Two evaluations on the same documents line up (paired comparisons).
    # A perplexity's per_doc holds each document's NLL and `doc_weights` its words (or bytes).
    per_doc: dict[str, list[float]] = field(default_factory=dict)
    doc_weights: dict[str, list[float]] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)
    doc_chance: dict[str, list[float]] = field(default_factory=dict)  # per task: 1 / each document's choices

    def flat(self, prefix: str = "general") -> dict[str, float]:
        """Flat metric names for a tracker: `<prefix>.<task>` and `<prefix>.<task>.stderr`."""
        out = {}
        for key, value in self.scores.items():
            out[f"{prefix}.{key}"] = value
            if self.stderr.get(key) is not None:
                out[f"{prefix}.{key}.stderr"] = self.stderr[key]
        return out

    def summary(self) -> list[str]:
        """Per task one line: metric, score ± SE, chance floor (none for a perplexity), documents."""
        out = []
        for key, score in self.scores.items():
            se, floor = self.stderr.get(key), self.chance.get(key)
            out.append(f"{key} ({self.metrics.get(key)}): {score:.4g}" + (f" ± {se:.2g}" if se is not None else "")
                       + (f", chance floor {floor:.3g}" if floor is not None else ", no floor (lower is better)")
                       + f", {self.n_docs.get(key, 0)} documents")
        return out

    def check_noise(self, z: float = NOISE_Z) -> None:
        """`check_task_noise` on these (the base model's) results: UserError for noisy tasks."""
        check_task_noise(self.scores, self.stderr, self.chance, self.n_docs,
                         self.higher_is_better, self.metrics, z=z, scale=self.scale)


class GeneralEvaluator:
    """lm-eval on a resident model: tasks and the HFLM wrapper are built once, scores per call.

    `tasks` are lm-eval names (tasks, groups or tags) from the built-in index or `include_path`.
    `limit` caps documents per task (int) or takes a fraction (float in (0, 1]). `seed` seeds Python,
    NumPy, torch and the few-shot samplers before every call, so repeated calls on the same
    weights give identical numbers; the caller's RNG state is restored afterwards. `metrics`
    picks a task's metric by output key (e.g. {"drop": "f1"}); by default its first.
    `apply_chat_template` wraps every prompt in the tokenizer's chat template (lm-eval's own
    option); `for_prompt_format("chat")` turns it on, as a model edited in chat format needs.
    `shared_context` (default) scores each shared context once (`shared_context_lm`; same
    per-document results as lm-eval's own HFLM, which `shared_context=False` uses).
    """

    def __init__(
        self,
        model,
        tokenizer,
        tasks: list[str],
        include_path: str | Path | Sequence[str | Path] | None = None,
        limit: int | float | None = None,
        batch_size: int = 8,
        seed: int = 0,
        apply_chat_template: bool = False,
        metrics: Mapping[str, str] | None = None,
        shared_context: bool = True,
        max_length: int | None = None,
    ):
        tasks = list(tasks)
        if not tasks:
            raise UserError("general tasks list is empty: name at least one lm-eval task")
        _check_limit(limit)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"batch_size must be an int >= 1, got {batch_size!r}")
        validate_tasks(tasks, include_path)
        if apply_chat_template and not getattr(tokenizer, "chat_template", None):
            raise UserError(
                "general tasks in chat format need a tokenizer with a chat template; "
                "use data.prompt_format: plain"
            )
        # lm-eval reads a float limit >= 1.0 as a document count: 1.0 would mean one document.
        self.limit = None if limit == 1.0 and isinstance(limit, float) else limit
        self.model, self.tasks, self.seed = model, tasks, seed
        self.apply_chat_template = bool(apply_chat_template)
        self._chosen = dict(metrics or {})
        self.task_dict, self.outputs = self._build_task_dict(tasks, include_path)
        self.shared_context = bool(shared_context)
        # max_length: lm-eval's context window (default: the model's). A perplexity task's rolling
        # windows fill it; a batch of 8 windows of 8,192 tokens took 18 GB on CPU for a 135M model.
        self.max_length = max_length
        extra = {"max_length": max_length} if max_length else {}
        self.lm = _quiet_hflm_class(self.shared_context)(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                                                         **extra)

    @classmethod
    def for_prompt_format(cls, model, tokenizer, tasks, prompt_format: str = "plain", **kwargs):
        """An evaluator whose prompts are formatted as the model was edited: chat -> template."""
        return cls(model, tokenizer, tasks, apply_chat_template=prompt_format == "chat", **kwargs)

    def _build_task_dict(self, tasks, include_path):
        """Load each requested name on its own, so each output key maps to what it came from.

        `outputs` lists (key, 'task'|'group', metric, higher_is_better): a task or an aggregating
        group gives one key (its name); a tag, or a group without aggregate metrics, gives one
        key per leaf task. `_leaves` maps a group key to its leaf tasks (for stderr and chance).
        """
        try:
            loaded = load_each(task_manager(tasks, include_path), tasks)
        except KeyError:  # a local group referring to built-in tasks needs the full index
            loaded = load_each(task_manager(tasks, include_path, full=True), tasks)
        merged: dict[str, dict] = {"tasks": {}, "groups": {}, "group_map": {}}
        outputs: list[tuple[str, str, str | None, bool]] = []
        owner: dict[str, str] = {}
        self._leaves: dict[str, tuple[list[str], bool]] = {}
        for name, part in zip(tasks, loaded, strict=True):
            for leaf in part["tasks"]:
                if leaf in owner:
                    raise UserError(
                        f"task '{leaf}' is requested twice (via '{owner[leaf]}' and '{name}'); request it once"
                    )
                owner[leaf] = name
            for k in merged:
                merged[k].update(part.get(k) or {})
            group = (part.get("groups") or {}).get(name)
            if name in part["tasks"]:
                outputs.append((name, "task", *self._choose(name, part["tasks"][name])))
            elif group is not None and group.has_aggregation:
                available = [m.metric for m in group.aggregate_metric_list]
                metric = self._chosen.get(name, available[0])
                _check_metric_choice(name, metric, available)
                leaves = group.get_all_tasks()
                hib = leaves[0].higher_is_better().get(metric, True) if leaves else True
                outputs.append((name, "group", metric, bool(hib)))
                by_size = next(m.weight_by_size for m in group.aggregate_metric_list if m.metric == metric)
                self._leaves[name] = (list(part["tasks"]), bool(by_size))
            else:
                outputs += [(leaf, "task", *self._choose(leaf, t)) for leaf, t in part["tasks"].items()]
        unknown = sorted(set(self._chosen) - {key for key, *_ in outputs})
        if unknown:
            raise UserError(
                f"evaluation.general_metrics names {unknown}, not among the evaluated tasks "
                f"{[key for key, *_ in outputs]}"
            )
        return merged, outputs

    def _choose(self, key: str, task) -> tuple[str | None, bool]:
        if key in self._chosen:
            _check_metric_choice(key, self._chosen[key], _task_metrics(task))
        return _task_metric(task, self._chosen.get(key))

    @property
    def higher_is_better(self) -> dict[str, bool]:
        """Direction of each primary metric, keyed like `evaluate()`'s result."""
        return {key: hib for key, _, _, hib in self.outputs}

    @property
    def settings(self) -> dict[str, Any]:
        """How the general tasks are run, flat, for a tracker to record with every run."""
        out: dict[str, Any] = {
            "general.apply_chat_template": self.apply_chat_template,
            "general.limit": self.limit,
            "general.shared_context": self.shared_context,
            "general.max_length": self.max_length,
        }
        out.update({f"general.{key}.metric": metric for key, _, metric, _ in self.outputs})
        return out

    def layers_below_unchanged(self, layer: int | None):
        """Context manager: calls within it reuse the outputs of blocks below `layer` (the caller
        vouches they are unchanged, as for merge candidates of one delta); a no-op without
        `shared_context` or with `layer` None/0."""
        if not self.shared_context:
            return contextlib.nullcontext()
        return self.lm.layers_below_unchanged(layer)

    def docs_per_task(self) -> dict[str, int]:
        """Per leaf task, how many documents a full call evaluates (after `limit`), in the keys
        of `evaluate_full(samples=...)`: a subset is a list of indices below this count."""
        from lm_eval.evaluator_utils import get_sample_size

        out = {}
        for name, task in self.task_dict["tasks"].items():
            n = len(task.eval_docs)
            limit = get_sample_size(task, self.limit)
            out[name] = n if limit is None else min(n, limit)
        return out

    def evaluate_full(self, log_samples: bool = True, samples: Mapping[str, list[int]] | None = None) -> dict[str, Any]:
        """lm-eval's full result dict (results, groups, configs, n-samples, samples, ...).

        `samples` ({leaf task: document indices}, indices below `docs_per_task()`) evaluates only
        those documents, in place of `limit` (lm-eval takes one or the other)."""
        from lm_eval.evaluator import evaluate

        for task in self.task_dict["tasks"].values():
            task.set_fewshot_seed(seed=self.seed)  # samplers consume their RNG each call
        with _seeded(self.seed), eval_mode(self.model):
            return evaluate(
                lm=self.lm,
                task_dict=self.task_dict,
                limit=self.limit if samples is None else None,
                samples=None if samples is None else {k: list(v) for k, v in samples.items()},
                bootstrap_iters=0,  # stderr: closed form from the samples (`result`), no bootstrap pool
                log_samples=log_samples,
                apply_chat_template=self.apply_chat_template,
            )

    def evaluate(self) -> dict[str, float]:
        """One primary metric per requested task (first metric of its metric_list), on the model as it is now."""
        full = self.evaluate_full(log_samples=False)
        return primary_scores(full, self.outputs)

    def evaluate_result(self, samples: Mapping[str, list[int]] | None = None) -> GeneralResult:
        """Scores with their standard errors, chance floors and doc counts (one lm-eval call);
        on the documents `samples` names only, when given (see `evaluate_full`)."""
        return self.result(self.evaluate_full(log_samples=True, samples=samples))

    def result(self, full: Mapping[str, Any]) -> GeneralResult:
        """A `GeneralResult` out of an lm-eval result dict that holds samples (`log_samples`)."""
        from lm_eval.api.metrics import pooled_sample_stderr, unweighted_mean_stderr

        scores = primary_scores(full, self.outputs)
        stderr, chance, n_docs, per_doc, weights, scale, doc_chance = {}, {}, {}, {}, {}, {}, {}
        for key, kind, metric, _ in self.outputs:
            if kind == "task":
                filt = _primary_key(full["results"][key], metric).split(",", 1)[1]
                leaf = self._leaf_stats(full, key, metric, filt)
                stderr[key], chance[key], n_docs[key], scale[key] = leaf.stderr, leaf.floor, leaf.n_docs, leaf.scale
                if leaf.values is not None:
                    per_doc[key] = leaf.values
                if leaf.weights is not None:
                    weights[key] = leaf.weights
                if leaf.chance_items is not None:
                    doc_chance[key] = leaf.chance_items
                continue
            leaves, by_size = self._leaves[key]
            filt = _primary_key(full["groups"][key], metric).split(",", 1)[1]
            parts = [self._leaf_stats(full, leaf, metric, filt) for leaf in leaves]
            ses, sizes = [p.stderr for p in parts], [p.n_docs for p in parts]
            n_docs[key] = n = sum(sizes)
            scale[key] = max((p.scale for p in parts), default=1.0)
            weights_ = [size / n if by_size else 1 / len(parts) for size in sizes] if n else []
            floors = [p.floor for p in parts]
            chance[key] = None if None in floors else sum(w * f for w, f in zip(weights_, floors, strict=True))
            # lm-eval's own group formulas: pooled for a size-weighted mean, else in quadrature.
            if None in ses or not n:
                stderr[key] = None
            elif by_size:
                stderr[key] = float(pooled_sample_stderr(ses, sizes))
            else:
                stderr[key] = float(unweighted_mean_stderr(ses))
        return GeneralResult(scores, stderr, chance, n_docs,
                             {key: metric for key, _, metric, _ in self.outputs}, self.higher_is_better,
                             self.settings, per_doc, weights, scale, doc_chance)

    def _leaf_stats(self, full, name: str, metric: str | None, filt: str) -> LeafStats:
        """`task_stats.leaf_stats` of one leaf task's `metric` under filter `filt`."""
        samples = sorted((s for s in full["samples"][name] if s.get("filter") == filt), key=lambda s: s["doc_id"])
        return leaf_stats(self.task_dict["tasks"][name], name, samples, metric)


def primary_scores(full: Mapping[str, Any], outputs) -> dict[str, float]:
    """Pick each output key's primary metric out of an lm-eval result dict."""
    scores = {}
    for key, kind, metric, _ in outputs:
        table = full.get("groups", {}) if kind == "group" else full["results"]
        scores[key] = _primary_value(table[key], metric)
    return scores


def _check_limit(limit) -> None:
    if limit is None:
        return
    ok_int = isinstance(limit, int) and not isinstance(limit, bool) and limit >= 1
    ok_frac = isinstance(limit, float) and 0.0 < limit <= 1.0
    if not (ok_int or ok_frac):
        raise UserError(
            f"limit must be an int >= 1 (documents) or a float in (0, 1] (fraction), got {limit!r}"
        )


@contextlib.contextmanager
def _seeded(seed: int):
    """Seed Python/NumPy/torch for the call and give the caller its RNG state back afterwards."""
    import numpy as np

    py_state, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
