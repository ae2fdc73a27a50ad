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

`retention` / `general_score` turn candidate and base scores into the "general ability kept"
objective (merged / base, as in the paper).
"""

from __future__ import annotations

import contextlib
import difflib
import math
import os
import random
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mm4ke_ray.errors import UserError
from mm4ke_ray.evaluate.local_tasks import write_multiple_choice_task
from mm4ke_ray.modeling.modes import eval_mode

__all__ = [
    "GeneralEvaluator",
    "general_score",
    "primary_scores",
    "retention",
    "validate_tasks",
    "write_multiple_choice_task",
]

# Full task indexes (built-in + include_path) take ~8 s to build; keyed by the include_path and
# a fingerprint of its files so an edited or added YAML is seen.
_FULL_MANAGERS: dict[tuple, Any] = {}


def _use_offline_defaults() -> None:
    """Default HF to offline unless the user set either variable (then their choice stands)."""
    if "HF_HUB_OFFLINE" in os.environ or "HF_DATASETS_OFFLINE" in os.environ:
        return
    os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    # huggingface_hub and datasets read these once at import; if they are already imported,
    # the new value must reach their module constants too.
    if "huggingface_hub.constants" in sys.modules:
        sys.modules["huggingface_hub.constants"].HF_HUB_OFFLINE = True
    if "datasets.config" in sys.modules:
        cfg = sys.modules["datasets.config"]
        cfg.HF_HUB_OFFLINE = cfg.HF_DATASETS_OFFLINE = True


def _include_paths(include_path: str | Path | None) -> list[Path]:
    if include_path is None:
        return []
    path = Path(include_path)
    if not path.exists():
        raise UserError(
            f"include_path {str(path)!r} does not exist: give a folder of lm-eval task YAMLs"
        )
    return [path.resolve()]


def _fingerprint(paths: list[Path]) -> tuple:
    files = []
    for root in paths:
        candidates = [root] if root.is_file() else sorted(root.rglob("*.y*ml"))
        for f in candidates:
            st = f.stat()
            files.append((str(f), st.st_mtime_ns, st.st_size))
    return tuple(files)


def _full_manager(paths: list[Path]):
    from lm_eval.tasks import TaskManager

    key = _fingerprint(paths)
    if key not in _FULL_MANAGERS:
        _FULL_MANAGERS[key] = TaskManager(include_path=[str(p) for p in paths] or None)
    return _FULL_MANAGERS[key]


def _task_manager(tasks: Sequence[str], include_path: str | Path | None, *, full: bool = False):
    """The TaskManager that knows every name in `tasks`; UserError with suggestions otherwise.

    Local-only indexes are built first (milliseconds); the built-in index (~8 s, cached per
    process) only when a name is not local or `full` is asked for.
    """
    _use_offline_defaults()
    from lm_eval.tasks import TaskManager

    paths = _include_paths(include_path)
    if paths and not full:
        local = TaskManager(include_path=[str(p) for p in paths], include_defaults=False)
        if all(t in local.task_index for t in tasks):
            return local
    manager = _full_manager(paths)
    unknown = [t for t in tasks if t not in manager.task_index]
    if unknown:
        lines = []
        for name in unknown:
            close = difflib.get_close_matches(name, manager.all_tasks, n=5, cutoff=0.6)
            hint = f"did you mean: {', '.join(close)}?" if close else "no similar task name"
            lines.append(f"  - {name!r}: {hint}")
        where = f" (built-in tasks + {paths[0]})" if paths else " (built-in tasks; no include_path)"
        raise UserError(
            f"unknown lm-eval task name(s){where}:\n"
            + "\n".join(lines)
            + "\nFix the name in the eval config, or add a task YAML to the include_path."
        )
    return manager


def validate_tasks(tasks: Sequence[str], include_path: str | Path | None = None) -> None:
    """Check task names against lm-eval's index (built-in + include_path) without loading data.

    Raises UserError listing each unknown name with close matches ("did you mean"). Cheap when
    every name is in include_path; otherwise builds lm-eval's built-in index once per process.
    """
    tasks = list(tasks)
    if not tasks:
        return
    if len(set(tasks)) != len(tasks):
        dupes = sorted({t for t in tasks if tasks.count(t) > 1})
        raise UserError(f"general tasks list names {dupes} more than once; list each task once")
    _task_manager(tasks, include_path)


def _quiet_hflm_class():
    """HFLM without per-call progress bars (one per candidate would flood a worker's log)."""
    from lm_eval.models.huggingface import HFLM

    class QuietHFLM(HFLM):
        def loglikelihood(self, requests, disable_tqdm: bool = True):
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = True):
            return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)

        def generate_until(self, requests, disable_tqdm: bool = True):
            return super().generate_until(requests, disable_tqdm=disable_tqdm)

    return QuietHFLM


def _load_each(manager, tasks: Sequence[str]) -> list[dict]:
    """`manager.load` per name; data problems become a UserError naming the task and the fix."""
    loaded = []
    for name in tasks:
        try:
            loaded.append(manager.load([name]))
        except KeyError:
            raise
        except Exception as e:  # datasets/hub errors vary by cause; the user needs the task name
            raise UserError(
                f"lm-eval task {name!r} could not be loaded ({type(e).__name__}: {e}). Offline "
                "(HF_HUB_OFFLINE=1), a built-in task needs its dataset in the Hugging Face cache: "
                "use a local task YAML, or set HF_HUB_OFFLINE=0 to allow downloads."
            ) from e
    return loaded


def _task_metric(task) -> tuple[str | None, bool]:
    """The task's main metric (first of its metric_list) and whether higher is better."""
    metric_list = getattr(getattr(task, "config", None), "metric_list", None)
    hib = task.higher_is_better() or {}
    if metric_list:
        first = metric_list[0]
        metric = first["metric"] if isinstance(first, dict) else first
        metric = metric if isinstance(metric, str) else getattr(metric, "__name__", str(metric))
    else:  # Python-defined tasks declare metrics through higher_is_better()
        metric = next(iter(hib), None)
    return metric, bool(hib.get(metric, True))


def _primary_value(task_results: Mapping[str, Any], metric: str | None) -> float:
    """`metric` under its first filter (e.g. 'acc,none'); the first numeric metric if absent."""
    keys = [k for k in task_results if "," in k and "_stderr," not in k and k != "sample_count"]
    chosen = [k for k in keys if k.split(",", 1)[0] == metric] or keys
    if not chosen:
        raise RuntimeError(f"lm-eval returned no metric values: {dict(task_results)}")
    return float(task_results[chosen[0]])


class GeneralEvaluator:
    """lm-eval on a resident model: tasks and the HFLM wrapper are built once, scores per call.

    `tasks` are lm-eval names (tasks, groups or tags) from the built-in index or `include_path`.
    `limit` caps documents per task (int) or takes a fraction (float in (0, 1]). `seed` seeds Python,
    NumPy, torch and the few-shot samplers before every call, so repeated calls on the same
    weights give identical numbers; the caller's RNG state is restored afterwards.
    """

    def __init__(
        self,
        model,
        tokenizer,
        tasks: list[str],
        include_path: str | Path | None = None,
        limit: int | float | None = None,
        batch_size: int = 8,
        seed: int = 0,
        apply_chat_template: bool = False,
    ):
        tasks = list(tasks)
        if not tasks:
            raise UserError("general tasks list is empty: name at least one lm-eval task")
        _check_limit(limit)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"batch_size must be an int >= 1, got {batch_size!r}")
        validate_tasks(tasks, include_path)
        # lm-eval reads a float limit >= 1.0 as a document count: 1.0 would mean one document.
        self.limit = None if limit == 1.0 and isinstance(limit, float) else limit
        self.model, self.tasks, self.seed = model, tasks, seed
        self.apply_chat_template = apply_chat_template
        self.task_dict, self.outputs = self._build_task_dict(tasks, include_path)
        self.lm = _quiet_hflm_class()(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)

    def _build_task_dict(self, tasks, include_path):
        """Load each requested name on its own, so each output key maps to what it came from.

        `outputs` lists (key, 'task'|'group', metric, higher_is_better): a task or an aggregating
        group gives one key (its name); a tag, or a group without aggregate metrics, gives one
        key per leaf task.
        """
        try:
            loaded = _load_each(_task_manager(tasks, include_path), tasks)
        except KeyError:  # a local group referring to built-in tasks needs the full index
            loaded = _load_each(_task_manager(tasks, include_path, full=True), tasks)
        merged: dict[str, dict] = {"tasks": {}, "groups": {}, "group_map": {}}
        outputs: list[tuple[str, str, str | None, bool]] = []
        owner: dict[str, str] = {}
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
                outputs.append((name, "task", *_task_metric(part["tasks"][name])))
            elif group is not None and group.has_aggregation:
                metric = group.aggregate_metric_list[0].metric
                leaves = group.get_all_tasks()
                hib = leaves[0].higher_is_better().get(metric, True) if leaves else True
                outputs.append((name, "group", metric, bool(hib)))
            else:
                outputs += [(leaf, "task", *_task_metric(t)) for leaf, t in part["tasks"].items()]
        return merged, outputs

    @property
    def higher_is_better(self) -> dict[str, bool]:
        """Direction of each primary metric, keyed like `evaluate()`'s result."""
        return {key: hib for key, _, _, hib in self.outputs}

    def evaluate_full(self, log_samples: bool = True) -> dict[str, Any]:
        """lm-eval's full result dict (results, groups, configs, n-samples, samples, ...)."""
        from lm_eval.evaluator import evaluate

        for task in self.task_dict["tasks"].values():
            task.set_fewshot_seed(seed=self.seed)  # samplers consume their RNG each call
        with _seeded(self.seed), eval_mode(self.model):
            return evaluate(
                lm=self.lm,
                task_dict=self.task_dict,
                limit=self.limit,
                bootstrap_iters=0,
                log_samples=log_samples,
                apply_chat_template=self.apply_chat_template,
            )

    def evaluate(self) -> dict[str, float]:
        """One primary metric per requested task (first metric of its metric_list), on the model as it is now."""
        full = self.evaluate_full(log_samples=False)
        return primary_scores(full, self.outputs)


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


def retention(
    candidate: Mapping[str, float],
    base: Mapping[str, float],
    higher_is_better: Mapping[str, bool] | None = None,
) -> dict[str, float]:
    """Per task, how much of the base model's score the candidate keeps: candidate / base.

    For a lower-is-better metric (per `higher_is_better`, default all higher) it is base /
    candidate. Edge cases, defined so the mean stays meaningful:
    - both scores 0 -> 1.0 (nothing was lost);
    - the denominator 0 and the other score > 0 -> NaN (no ratio exists; `general_score` skips it);
    - a NaN score -> NaN. Scores must be >= 0. Values above 1 mean the candidate did better.
    """
    missing = sorted(set(base) ^ set(candidate))
    if missing:
        raise ValueError(f"candidate and base scores must name the same tasks; differ on {missing}")
    out = {}
    for task, b in base.items():
        c = candidate[task]
        if c < 0 or b < 0:
            raise ValueError(f"task '{task}': scores must be >= 0, got candidate={c}, base={b}")
        num, den = (c, b) if (higher_is_better or {}).get(task, True) else (b, c)
        if math.isnan(num) or math.isnan(den):
            out[task] = math.nan
        elif den == 0:
            out[task] = 1.0 if num == 0 else math.nan
        else:
            out[task] = num / den
    return out


def general_score(
    candidate: Mapping[str, float],
    base: Mapping[str, float],
    higher_is_better: Mapping[str, bool] | None = None,
) -> float:
    """Mean retention over tasks, skipping undefined (NaN) ratios; NaN if none is defined."""
    if not base:
        raise ValueError("general_score needs at least one task score")
    values = [v for v in retention(candidate, base, higher_is_better).values() if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan
