"""The sweep config: frozen pydantic sections composed into one `SweepConfig`.

Every section forbids unknown keys so a YAML typo fails. `load_config` reports every problem
at once, each naming its field (e.g. `search.space.alpha.high`) and the bad value.
The `search:` section lives in `search_space.py`, the shared base in `base.py`; both are
re-exported here, so `mm4ke_ray.config` stays the one place to import a section from.
"""

from __future__ import annotations

import math
from pathlib import Path
from statistics import NormalDist
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from mm4ke_ray.config.base import MAX_EPOCHS, MAX_LAYER, MAX_RUNGS, MAX_STEPS, MAX_TRIALS, Section
from mm4ke_ray.config.search_space import (
    SCHEDULE_FIELDS,
    LRSchedule,
    Param,
    RSFTFixed,
    ScheduleParam,
    SearchConfig,
    SearchSpace,
)
from mm4ke_ray.errors import ConfigError
from mm4ke_ray.stream_config import StreamConfig
from mm4ke_ray.strict_yaml import load_yaml, yaml_problem

DEMO = "demo"  # model/data value meaning "the embedded demo world, built locally"
# Re-exported: the search section and the limits are imported from here across the package.
__all__ = [
    "DEMO", "LOCAL_TASK_NAMES", "MAX_EPOCHS", "MAX_LAYER", "MAX_RUNGS", "MAX_STEPS", "MAX_TRIALS", "SCHEDULE_FIELDS",
    "ConfigError", "DataConfig", "EditMetric", "EvaluationConfig", "FidelityConfig", "LRSchedule", "LocalTask",
    "MergeConfig", "ModelConfig",
    "ObjectivesConfig", "Param", "RSFTFixed", "ResourcesConfig", "ScheduleParam", "SearchConfig", "SearchSpace",
    "Section", "SweepConfig", "TrackingConfig", "load_config", "validate_config",
]


class ModelConfig(Section):
    name: str = Field(DEMO, description="Local directory, Hugging Face hub id, or 'demo'.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights dtype.")
    trust_remote_code: bool = Field(False, description="Run the model repo's own code. Off unless you trust it.")
    allow_pickle: bool = Field(
        False, description="Also load pickle checkpoints (*.bin/*.pt), which can run code. Off: safetensors only."
    )


class DataConfig(Section):
    edits: str = Field(DEMO, description="Edit set: a KnowEdit/zsre_mend file, a hub dataset id, or 'demo'.")
    format: str | None = Field(None, description="Force a reader (zsre, counterfact, ...); detected when unset.")
    limit: int | None = Field(None, ge=1, description="Use the first N records.")
    skip_invalid: bool = Field(False, description="Drop bad records (and report how many) instead of failing.")
    prompt_format: Literal["plain", "chat"] = Field("plain", description="Same in training and evaluation.")


class FidelityConfig(Section):
    """Successive halving over evaluation fidelity (mm4ke_ray/evaluate/fidelity.py); off by default.

    On, a trial's merge candidates are scored on growing seeded subsets of the edit records and
    lm-eval documents; only those no other of the trial's own candidates dominates beyond doubt
    (`error_rate` per comparison) go on, up to the full evaluation; with `against_front`, also only those the sweep's full
    results so far do not beat. The sampled candidate always reaches it; only full results are
    candidates (Optuna, front, best pick, export)."""

    enabled: bool = Field(
        False, description="Score a trial's merge candidates on growing record/document subsets first; "
        "only those not dominated beyond doubt go on to the full evaluation.",
    )
    rungs: int = Field(3, ge=1, le=MAX_RUNGS, description="Rungs; the last is the full evaluation (1: no halving).")
    reduction_factor: float = Field(
        3.0, gt=1, le=1000, description="Rung r evaluates reduction_factor^-(rungs-1-r) of the records and documents.",
    )
    error_rate: float = Field(0.05, gt=0, le=0.5, description="Chance per comparison of dropping a candidate the "
                              "other does not truly dominate: dropped when the rung's items show another better in "
                              "both objectives (sign test on differing items + paired z test; evaluate/evidence.py).")
    margin_z: float | None = Field(None, ge=0, description="Replaced by error_rate; an old margin_z z runs as "
                                   "error_rate 1 - Phi(z) (z 1: 0.159) under the evidence rule.")
    against_front: bool = Field(
        True, description="Also drop a candidate that the sweep's full results so far (base, earlier trials, "
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
            raise ValueError(f"margin_z {z} (error rate {rate:.4g}) and error_rate {given} disagree: margin_z was "
                             "replaced by error_rate; give error_rate only")
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
        None, description="Wrap general-task prompts in the model's chat template (lm-eval's apply_chat_template); "
        "unset: on when data.prompt_format is chat. A small model may score at chance through the template.",
    )
    general_max_length: int | None = Field(
        None, ge=16, description="lm-eval's context window in tokens (default the model's); a perplexity's rolling "
        "windows fill it, so it bounds their memory and sets the context each token is scored with.",
    )
    general_se_threshold: float = Field(
        0.05, gt=0, description="plan/validate warn when a task's retention SE at the configured limit exceeds this.",
    )
    shared_context: bool = Field(
        True, description="General tasks: score each shared context once and reuse the blocks below a candidate's "
        "delta (same per-document results as lm-eval's HFLM); false: lm-eval's HFLM as it is.",
    )
    protocol: Literal["sequential"] = Field(
        "sequential", description="Edit all records, then evaluate the final model on all of them (the paper's)."
    )
    mode: Literal["teacher-forced", "generation", "both"] = Field(
        "teacher-forced", description="Edit metrics: teacher-forced token accuracy (EasyEdit's classic), the "
        "greedily generated answer (logged as gen.<metric>), or both.",
    )
    generation_match: Literal["starts_with", "equals", "contains"] = Field(
        "equals", description="Generation mode: how the normalised answer must match the normalised target "
        "(equals: WILD's exact match; starts_with, contains: lenient, recorded as such).",
    )
    generation_stop: Literal["wild", "newline"] = Field(
        "wild", description="Generation mode: where an answer ends besides EOS/end of turn (wild: a "
        "sentence-ending '.' (not 'Dr.', initials or 3.5) or a newline; newline: a newline only, the old rule).",
    )
    generation_max_new_tokens: int = Field(
        64, ge=1, description="Generation mode: new tokens an answer may take (WILD's generous budget; "
        "generation stops earlier at the stop, and a batch when all its rows have stopped).",
    )
    generation_extra_tokens: int | None = Field(
        None, ge=0, description="Generation mode, the pre-WILD bound (unset by default): also cap an answer "
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
            raise ValueError(f"general_metrics names {unknown}, not in general_tasks {self.general_tasks}: add "
                             "them to evaluation.general_tasks or drop them from evaluation.general_metrics")
        unlisted = sorted(set(self.local_tasks) - set(self.general_tasks))
        if unlisted:
            raise ValueError(f"local_tasks names {unlisted}, not in general_tasks {self.general_tasks}: add them "
                             "to evaluation.general_tasks or drop them from evaluation.local_tasks")
        budget = sorted(t for t, lt in self.local_tasks.items() if lt.max_words is not None and t != "wikitext")
        if budget:
            raise ValueError(f"local_tasks {budget}: max_words applies to wikitext only; use limit (documents)")
        empty = sorted(t for t, m in self.general_metrics.items() if not m.strip())
        if empty:
            raise ValueError(f"general_metrics: give a metric name for {empty}")
        return self


def _plain_name(v: str) -> str:
    # The sweep's folder is <storage_path>/<name>: '..' or a separator would put it elsewhere.
    if v.strip(".") == "" or any(c in v for c in "/\\") or any(ord(c) < 32 for c in v):
        raise ValueError("must be a plain folder name: no '/' or '\\', not '.' or '..', no control characters")
    return v


class MergeConfig(Section):
    method: str = Field("magnitude", description="Sparsifier: magnitude (the paper's), dare, ...")
    extra_candidates: int = Field(4, ge=0, description="Extra (α, sparsity) points evaluated per R-SFT delta.")
    candidates: Literal["random", "surrogate"] = Field(
        "random", description="How a delta's extra merge points are chosen: random draws from the space, or "
        "surrogate: from a merge.grid × merge.grid α × sparsity grid, a few first, then where a per-delta surrogate "
        "expects the front to move (search/surrogate.py); merge.extra_candidates + 1 is then its budget of "
        "evaluated merges per delta. It falls back to evaluating the whole grid when the budget covers it, and to "
        "random extras when the budget is no more than its 4 first points (merge.extra_candidates 3 or fewer).",
    )
    grid: int = Field(6, ge=2, le=20, description="Points per axis of the α × sparsity grid of "
                      "merge.candidates surrogate (a list of choices in the space is used as it is).")


EditMetric = Literal["edit_succ", "generalization", "portability", "locality"]


class ObjectivesConfig(Section):
    edit_weights: dict[EditMetric, Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: {"edit_succ": 1.0, "generalization": 1.0, "portability": 1.0, "locality": 1.0},
        description="Weights of the edit metrics in the edit score (a weighted mean, 0..1).",
    )
    combined_edit_weight: float = Field(0.5, ge=0, le=1, description="Combined = w·edit + (1-w)·general.")
    edit_mode: Literal["teacher-forced", "generation"] | None = Field(
        None, description="Which family of edit metrics the edit score uses; default: teacher-forced unless "
        "evaluation.mode is generation. Must be a family evaluation.mode computes.",
    )
    min_edit_score: float | None = Field(
        None, ge=0, le=1, description="Constraint: candidates below this edit score are infeasible (the sampler "
        "concentrates above it; the front greys them).",
    )
    min_general_score: float | None = Field(
        None, ge=0, le=1, description="Constraint: candidates below this general score are infeasible.",
    )

    @field_validator("edit_weights")
    @classmethod
    def _some_weight(cls, v):
        if not any(w > 0 for w in v.values()):
            raise ValueError("at least one edit metric needs a positive weight")
        return v


class ResourcesConfig(Section):
    rsft_cpus: float = Field(1, gt=0, description="CPUs per R-SFT worker.")
    rsft_gpus: float = Field(0, ge=0, description="GPUs per R-SFT worker (1 on a GPU cluster).")
    eval_actors: int | Literal["auto"] = Field("auto", description="Merge-eval actors in the pool.")
    eval_cpus: float = Field(1, gt=0, description="CPUs per merge-eval actor.")
    eval_gpus: float = Field(0, ge=0, description="GPUs per merge-eval actor.")
    eval_resource: str | None = Field(None, description="Custom Ray resource the merge-eval actors require.")
    max_concurrent: int | Literal["auto"] = Field("auto", description="Trials at once; auto = what resources allow.")

    @field_validator("eval_actors", "max_concurrent")
    @classmethod
    def _positive(cls, v):
        if v != "auto" and v < 1:
            raise ValueError(f"must be 'auto' or >= 1, got {v}")
        return v


class TrackingConfig(Section):
    uri: str = Field("sqlite:///runs/mlflow.db", description="MLflow tracking URI (SQLite file or http://host:port).")
    experiment: str = Field("mm4ke-ray", description="MLflow experiment name.")
    artifact_location: str = Field("runs/mlartifacts", description="Artifact root for a new experiment.")
    system_metrics: bool = Field(False, description="Log MLflow's system metrics (CPU, memory, disk, network; GPU "
                                 "when present): the driver's machine on the sweep's parent run, and on each trial's "
                                 "run those of the machine the trial ran on, sampled while it ran.")
    system_metrics_interval_s: float = Field(10.0, gt=0, le=86400, description="Seconds between system metric samples (a "
                                             "trial keeps at most 128, sampling less often when it runs long).")


class SweepConfig(Section):
    name: str = Field("sweep", min_length=1, description="Sweep name: the MLflow parent run and storage folder.")

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    merge: MergeConfig = Field(default_factory=MergeConfig)
    objectives: ObjectivesConfig = Field(default_factory=ObjectivesConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    storage_path: str = Field("runs/ray", description="Tune storage: a folder or a URI (file://, s3://, gs://).")
    stream: StreamConfig | None = Field(None, description="Lifelong editing in rounds (`mm4ke-ray stream`).")
    max_failures: int = Field(2, ge=0, le=1000, description="Retries of a failed trial.")
    _name = field_validator("name")(_plain_name)

    @model_validator(mode="after")
    def _edit_mode_is_evaluated(self):
        mode, edit_mode = self.evaluation.mode, self.objectives.edit_mode
        if edit_mode is not None and mode != "both" and edit_mode != mode:
            raise ValueError(
                f"objectives.edit_mode is {edit_mode!r} but evaluation.mode is {mode!r}, which does not "
                f"compute it: set evaluation.mode to 'both' or {edit_mode!r}, or drop objectives.edit_mode"
            )
        return self

    @model_validator(mode="after")
    def _random_learns_nothing_from_extra_candidates(self):
        # Issue 12: every offered sampler uses the points it is told, or the config is refused.
        if self.search.sampler == "random" and self.merge.extra_candidates > 0:
            raise ValueError(
                f"search.sampler 'random' cannot learn from the {self.merge.extra_candidates} extra merge candidates "
                "per trial that the sweep tells it (merge.extra_candidates): random search ignores every result, "
                "so they would steer nothing; set merge.extra_candidates to 0 for a random-search baseline, "
                "or use search.sampler tpe, gp or nsga2, which learn from them"
            )
        return self

    @model_validator(mode="after")
    def _halving_needs_candidates_to_drop(self):
        # Halving promotes among a trial's own candidates and the sampled one always reaches the
        # full rung: with no extra candidate nothing can be dropped, and the lower rungs are waste.
        fid = self.evaluation.fidelity
        if fid.enabled and fid.rungs > 1 and self.merge.extra_candidates == 0:
            raise ValueError(
                "evaluation.fidelity.enabled with merge.extra_candidates 0: successive halving picks among a "
                "trial's own merge candidates and the sampled one is always evaluated in full, so with no extra "
                "candidate it would only add lower-rung evaluations; set merge.extra_candidates to 1 or more, "
                "or set evaluation.fidelity.enabled to false"
            )
        return self

    @property
    def edit_mode(self) -> str:
        """The family the edit objective is computed from (objectives.edit_mode, resolved)."""
        if self.objectives.edit_mode is not None:
            return self.objectives.edit_mode
        return "generation" if self.evaluation.mode == "generation" else "teacher-forced"

    @property
    def general_chat_template(self) -> bool:
        """Whether lm-eval wraps general-task prompts in the chat template (resolved: unset follows
        data.prompt_format, as a model edited in chat format usually needs)."""
        if self.evaluation.general_chat_template is not None:
            return self.evaluation.general_chat_template
        return self.data.prompt_format == "chat"

    def with_overrides(self, **dotted: Any) -> SweepConfig:
        """A copy with `section.field=value` overrides applied (validated again)."""
        data = self.model_dump()
        for key, value in dotted.items():
            node = data
            *parents, leaf = key.split(".")
            for i, p in enumerate(parents):
                node = node.get(p) if isinstance(node, dict) else None
                if not isinstance(node, dict):  # unknown, or a path through a scalar (seed.x)
                    raise ConfigError("--set", [f"{key}: {'.'.join(parents[:i + 1])} is not a config section"])
            node[leaf] = value
        return validate_config(data, f"{self.name} (overridden)")


def _format_error(err: dict) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key (check the spelling; see `mm4ke-ray validate --help` for the schema)"
    value = err.get("input")
    shown = "" if isinstance(value, dict | list) or err["type"] == "missing" else f" (got {value!r})"
    return f"{loc or '<top>'}: {msg}{shown}"


def validate_config(data: Any, source: str = "<config>") -> SweepConfig:
    """Validate a parsed YAML mapping; raise one ConfigError listing every problem."""
    if not isinstance(data, dict):
        raise ConfigError(source, [f"the top level must be a mapping of sections, got {type(data).__name__}"])
    try:
        return SweepConfig.model_validate(data)
    except ValidationError as exc:
        problems = list(dict.fromkeys(_format_error(e) for e in exc.errors()))
        raise ConfigError(source, problems) from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> SweepConfig:
    """Read, validate and return the sweep config in `path`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), ["file does not exist"])
    try:
        data = load_yaml(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), [f"not UTF-8 text (byte {exc.start}); save the config as UTF-8"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [yaml_problem(exc)]) from None
    config = validate_config(data, str(path))
    return config.with_overrides(**overrides) if overrides else config
