"""The `evaluation:` section: edit and general evaluation, successive halving (`fidelity`), and
general tasks read from local files (`local_tasks`). Re-exported by `mm4ke_ray.config`."""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Literal

from pydantic import Field, model_validator

from mm4ke_ray.config.base import MAX_RUNGS, Section


class FidelityConfig(Section):
    """Successive halving over evaluation fidelity (mm4ke_ray/evaluate/fidelity.py); off by default.

    On, a trial's merge candidates are scored on growing seeded subsets of the edit records and
    lm-eval documents; only those no other of the trial's own candidates dominates beyond doubt
    (`error_rate` per comparison) go on, up to the full evaluation; with `against_front`, also only those the
    sweep's full
    results so far do not beat. The sampled candidate always reaches it; only full results are
    candidates (Optuna, front, best pick, export)."""

    enabled: bool = Field(
        False,
        description="Score a trial's merge candidates on growing record/document subsets first; "
        "only those not dominated beyond doubt go on to the full evaluation.",
    )
    rungs: int = Field(3, ge=1, le=MAX_RUNGS, description="Rungs; the last is the full evaluation (1: no halving).")
    reduction_factor: float = Field(
        3.0,
        gt=1,
        le=1000,
        description="Rung r evaluates reduction_factor^-(rungs-1-r) of the records and documents.",
    )
    error_rate: float = Field(
        0.05,
        gt=0,
        le=0.5,
        description="Chance per comparison of dropping a candidate the "
        "other does not truly dominate: dropped when the rung's items show another better in "
        "both objectives (sign test on differing items + paired z test; evaluate/evidence.py).",
    )
    margin_z: float | None = Field(
        None,
        ge=0,
        description="Replaced by error_rate; an old margin_z z runs as "
        "error_rate 1 - Phi(z) (z 1: 0.159) under the evidence rule.",
    )
    against_front: bool = Field(
        True,
        description="Also drop a candidate that the sweep's full results so far (base, earlier trials, "
        "--warm-start) beat beyond doubt (error_rate); such a one is not kept to fill the minimum.",
    )

    @model_validator(mode="before")
    @classmethod
    def _margin_z_as_error_rate(cls, data):
        # Issue 23: an old config (or a sweep's stored one) keeps running at its margin's error rate.
        z = data.get("margin_z") if isinstance(data, dict) else None
        if not isinstance(z, int | float) or isinstance(z, bool) or z < 0 or not math.isfinite(z):
            return data
        rate, given = 1 - NormalDist().cdf(z), data.get("error_rate")
        if given is not None and not math.isclose(given, rate, rel_tol=1e-9):
            raise ValueError(
                f"margin_z {z} (error rate {rate:.4g}) and error_rate {given} disagree: margin_z was "
                "replaced by error_rate; give error_rate only"
            )
        return {**data, "error_rate": rate, "margin_z": None}


# General tasks readable from a local file (evaluate/real_tasks.py, as lm-eval builds the hub task).
LOCAL_TASK_NAMES = ("boolq", "logiqa", "rte", "sst2", "wikitext")


class LocalTask(Section):
    """A general task read from a local file: a bare path, or the path with a budget."""

    path: str = Field(description="The task's file (SST-2/RTE TSV, LogiQA Test.txt, BoolQ JSONL, WikiText-2 test.txt).")
    limit: int | None = Field(None, ge=1, description="Keep the first N documents of the file.")
    max_words: int | None = Field(None, ge=1, description="wikitext only: keep the file's first N words.")

    @model_validator(mode="before")
    @classmethod
    def _bare_path(cls, v):
        return {"path": v} if isinstance(v, str) else v


class EvaluationConfig(Section):
    batch_size: int = Field(32, ge=1, description="Teacher-forced evaluation batch size.")
    fluency: bool = Field(False, description="Also compute Fluency (sampled generations; slower).")
    general_tasks: list[str] = Field(default_factory=list, description="lm-eval task names for general ability.")
    task_include_path: str | None = Field(None, description="Folder of local lm-eval task YAMLs.")
    general_limit: int | float | None = Field(None, gt=0, description="lm-eval `limit` per task.")
    general_metrics: dict[str, str] = Field(
        default_factory=dict,
        description="Metric per general task, e.g. {drop: f1}; a task not named uses its first metric.",
    )
    local_tasks: dict[Literal[LOCAL_TASK_NAMES], LocalTask] = Field(  # type: ignore[valid-type]
        default_factory=dict,
        description="General tasks read from local files, not the hub, e.g. {sst2: /d/test-SentimentAnalysis.tsv, "
        "wikitext: {path: /d/wikitext-2/test.txt, max_words: 16000}}; each must be in general_tasks.",
    )
    general_chat_template: bool | None = Field(
        None,
        description="Wrap general-task prompts in the model's chat template (lm-eval's apply_chat_template); "
        "unset: on when data.prompt_format is chat. A small model may score at chance through the template.",
    )
    general_max_length: int | None = Field(
        None,
        ge=16,
        description="lm-eval's context window in tokens (default the model's); a perplexity's rolling "
        "windows fill it, so it bounds their memory and sets the context each token is scored with.",
    )
    general_se_threshold: float = Field(
        0.05,
        gt=0,
        description="plan/validate warn when a task's retention SE at the configured limit exceeds this.",
    )
    shared_context: bool = Field(
        True,
        description="General tasks: score each shared context once and reuse the blocks below a candidate's "
        "delta (same per-document results as lm-eval's HFLM); false: lm-eval's HFLM as it is.",
    )
    protocol: Literal["sequential"] = Field(
        "sequential", description="Edit all records, then evaluate the final model on all of them (the paper's)."
    )
    mode: Literal["teacher-forced", "generation", "both"] = Field(
        "teacher-forced",
        description="Edit metrics: teacher-forced token accuracy (EasyEdit's classic), the "
        "greedily generated answer (logged as gen.<metric>), or both.",
    )
    generation_match: Literal["starts_with", "equals", "contains"] = Field(
        "equals",
        description="Generation mode: how the normalised answer must match the normalised target "
        "(equals: WILD's exact match; starts_with, contains: lenient, recorded as such).",
    )
    generation_stop: Literal["wild", "newline"] = Field(
        "wild",
        description="Generation mode: where an answer ends besides EOS/end of turn (wild: a "
        "sentence-ending '.' (not 'Dr.', initials or 3.5) or a newline; newline: a newline only, the old rule).",
    )
    generation_max_new_tokens: int = Field(
        64,
        ge=1,
        description="Generation mode: new tokens an answer may take (WILD's generous budget; "
        "generation stops earlier at the stop, and a batch when all its rows have stopped).",
    )
    generation_extra_tokens: int | None = Field(
        None,
        ge=0,
        description="Generation mode, the pre-WILD bound (unset by default): also cap an answer "
        "at the target's own token count + this.",
    )
    fidelity: FidelityConfig = Field(
        default_factory=FidelityConfig,
        description="Successive halving over evaluation fidelity among a trial's merge candidates (off by default).",
    )

    @model_validator(mode="after")
    def _metrics_name_tasks(self):
        # Whether the task reports that metric is checked when lm-eval loads it (GeneralEvaluator).
        unknown = sorted(set(self.general_metrics) - set(self.general_tasks))
        if unknown:
            raise ValueError(
                f"general_metrics names {unknown}, not in general_tasks {self.general_tasks}: add "
                "them to evaluation.general_tasks or drop them from evaluation.general_metrics"
            )
        unlisted = sorted(set(self.local_tasks) - set(self.general_tasks))
        if unlisted:
            raise ValueError(
                f"local_tasks names {unlisted}, not in general_tasks {self.general_tasks}: add them "
                "to evaluation.general_tasks or drop them from evaluation.local_tasks"
            )
        budget = sorted(t for t, lt in self.local_tasks.items() if lt.max_words is not None and t != "wikitext")
        if budget:
            raise ValueError(f"local_tasks {budget}: max_words applies to wikitext only; use limit (documents)")
        empty = sorted(t for t, m in self.general_metrics.items() if not m.strip())
        if empty:
            raise ValueError(f"general_metrics: give a metric name for {empty}")
        return self
