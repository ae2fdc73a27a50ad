"""How precisely the general objective is measured: each task's retention SE at the configured
limit, a warning where it exceeds `evaluation.general_se_threshold`, and the limit that would
meet it.

A task's retention above chance, (c − f) / (b − f), has SE se / (b − f) for a candidate scored
like the base (se: the task's SE at this limit); a perplexity's retention b / c has SE ≈
se / b (its relative SE). An SE falls as 1 / sqrt(documents), so n · (SE / threshold)^2
documents meet the threshold.

`plan` and `validate` load no weights, so they judge the base model's last measurement on this
machine: every evaluator that scores the base (a sweep's pool, `plan --probe`) stores it in the
task cache under a key of what decides the scores (model, dtype, prompt format, tasks, limits,
metrics, local task files). No measurement yet: they say so, and how to get one.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path

from mm4ke_ray.atomic_write import write_text_atomic
from mm4ke_ray.config import DEMO, SweepConfig
from mm4ke_ray.evaluate.real_tasks import local_task_specs, task_cache_root

DEFAULT_THRESHOLD = 0.05


def retention_stderrs(result: Mapping) -> dict[str, float | None]:
    """Per task, the SE of its retention for a candidate scored like the base; None where the
    task has no SE or no base above its floor. `result`: a `GeneralResult.__dict__`-like mapping
    (scores, stderr, chance, higher_is_better)."""
    out = {}
    for task, b in result["scores"].items():
        se = result["stderr"].get(task)
        if result["higher_is_better"].get(task, True):
            span = b - (result["chance"].get(task) or 0.0)
        else:
            span = b
        out[task] = se / span if se is not None and math.isfinite(se) and span > 0 else None
    return out


def limit_for(stderr: float, n_docs: int, threshold: float) -> int:
    """Documents at which an SE of `stderr` on `n_docs` documents falls to `threshold`."""
    return max(n_docs, math.ceil(n_docs * (stderr / threshold) ** 2))


def precision_warnings(result: Mapping, threshold: float = DEFAULT_THRESHOLD) -> list[str]:
    """One line per task whose retention SE at this limit exceeds `threshold`, with the limit
    (documents) that would meet it."""
    lines = []
    for task, se in retention_stderrs(result).items():
        n = int(result["n_docs"].get(task, 0))
        if se is None or se <= threshold or n < 1:
            continue
        need = limit_for(se, n, threshold)
        lines.append(f"general task {task!r}: retention SE {se:.3f} on {n} documents exceeds {threshold:g}; "
                     f"about {need:,} documents would meet it (evaluation.general_limit, or "
                     f"evaluation.local_tasks.{task}.limit / max_words for a local task)")
    return lines


def measurement_key(settings) -> str:
    """What decides the base's general scores, as a digest. `settings`: an `EvalSettings`, or a
    `SweepConfig` (resolved to the same fields, without importing the evaluator's torch stack)."""
    if isinstance(settings, SweepConfig):
        ev = settings.evaluation
        fields = [settings.model.name, settings.model.dtype, settings.data.prompt_format, list(ev.general_tasks),
                  ev.task_include_path, ev.general_limit, ev.general_max_length, dict(ev.general_metrics),
                  local_task_specs(settings)]
    else:
        fields = [settings.model, settings.dtype, settings.prompt_format, list(settings.general_tasks),
                  settings.task_include_path, settings.general_limit, settings.general_max_length,
                  dict(settings.general_metrics), settings.local_tasks]
    fields[-1] = [[s.name, str(Path(s.path).expanduser().resolve()), s.limit, s.max_words] for s in fields[-1]]
    fields[-2] = sorted(fields[-2].items())
    return hashlib.sha256(json.dumps(fields, default=str).encode()).hexdigest()[:16]


def _path(settings) -> Path:
    return task_cache_root() / "general-base" / f"{measurement_key(settings)}.json"


def save_base_measurement(settings, result) -> None:
    """Store the base model's `GeneralResult` summary for `plan`/`validate` (best effort: a
    read-only cache costs the warning, never the sweep)."""
    summary = {k: getattr(result, k) for k in ("scores", "stderr", "chance", "n_docs", "higher_is_better", "metrics")}
    path = _path(settings)
    try:
        write_text_atomic(path, json.dumps(summary))
    except OSError:
        pass


def load_base_measurement(settings) -> dict | None:
    """The stored base measurement for `settings`, or None."""
    try:
        return json.loads(_path(settings).read_text())
    except (OSError, ValueError):
        return None


def precision_report(config: SweepConfig) -> list[str]:
    """Warnings for the stored base measurement of `config`'s general tasks (at its
    `evaluation.general_se_threshold`), or one line saying there is none yet."""
    if not config.evaluation.general_tasks or config.model.name == DEMO:
        return []  # the demo's model is built where it runs; `plan` resolves it first
    stored = load_base_measurement(config)
    if stored is None:
        return ["general tasks: no base measurement on this machine yet, so their retention SE is unknown; "
                "`mm4ke-ray plan --probe` (or a sweep) measures it"]
    return precision_warnings(stored, config.evaluation.general_se_threshold)
