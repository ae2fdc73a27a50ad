"""What a sweep writes, named once: parameter names, MLflow tag names, artifact paths, row kinds.

Every module that writes or reads a sweep's record (the Tune trial and callback, the tracker,
the MLflow queries, the Pareto artifacts, `pareto`, `export`, the model card) takes its names
from here, so a renamed tag or a new searched parameter cannot leave a reader behind.
Parameter names come from the config's search space (`SearchSpace`), not from a retyped list.
"""

from __future__ import annotations

from mm4ke_ray.config import SearchSpace

# -- parameters ------------------------------------------------------------------------------
SEARCH_PARAMS: tuple[str, ...] = tuple(SearchSpace.model_fields)  # threshold, steps, ..., sparsity
# The parameters code names one by one; each must be a field of the search space.
ALPHA, SPARSITY, LAYER, LR, THRESHOLD = "alpha", "sparsity", "layer", "lr", "threshold"
if _unknown := {ALPHA, SPARSITY, LAYER, LR, THRESHOLD} - set(SEARCH_PARAMS):
    raise ImportError(f"schema names {sorted(_unknown)}, which SearchSpace does not have")
# A candidate's merge parameters; everything else the search space holds is R-SFT's.
MERGE_PARAMS: tuple[str, ...] = (ALPHA, SPARSITY)
RSFT_PARAMS: tuple[str, ...] = tuple(p for p in SEARCH_PARAMS if p not in MERGE_PARAMS)
DENSITY = "density"  # 1 - sparsity, logged beside it (the name mergekit and the paper use)
# The parameter columns of a candidate row, in the order tables, CSVs and MLflow params use.
PARAM_COLUMNS: tuple[str, ...] = (*SEARCH_PARAMS, DENSITY)

# -- identity of a candidate row ---------------------------------------------------------------
ID_COLUMNS = ("candidate", "kind", "trial_id", "run_id")
BASE = "base"  # the unedited base model's row
PURE_RSFT = "pure_rsft"  # α = 0, sparsity = 0: the R-SFT delta as trained
SAMPLED = "sampled"  # the point Optuna asked for
EXTRA = "extra"  # a further merge candidate of the same delta
# successive halving (evaluation.fidelity): a candidate stopped below the full rung. Its run has
# this status tag and only `rung{r}.*` metrics; it is no candidate row (front, best pick, export).
PRUNED = "pruned"
PRUNED_CANDIDATES = "pruned_candidates"  # a trial result's key: its pruned candidates
# Column of a row copied from an earlier sweep (--warm-start): that sweep's name; absent otherwise.
WARM_START = "warm_start"


# -- metrics ---------------------------------------------------------------------------------
# A candidate's edit metrics (percent). Teacher-forced ones carry the bare name; generation-based
# ones (evaluation.mode generation|both) the same name behind GEN_PREFIX, e.g. "gen.edit_succ".
# Per-kind means follow the same rule: "portability.Reasoning" / "gen.portability.Reasoning".
EDIT_METRICS: tuple[str, ...] = ("edit_succ", "generalization", "portability", "locality")
FLUENCY = "fluency"  # teacher-forced side only (n-gram entropy of free generation)
GEN_PREFIX = "gen."
TEACHER_FORCED = "teacher-forced"
GENERATION = "generation"
BOTH = "both"
EVAL_MODES: tuple[str, ...] = (TEACHER_FORCED, GENERATION, BOTH)  # evaluation.mode values


def gen_metric(name: str) -> str:
    """The generation-family name of an edit metric (or per-kind name): "gen." + name."""
    return f"{GEN_PREFIX}{name}"


GEN_EDIT_METRICS: tuple[str, ...] = tuple(gen_metric(m) for m in EDIT_METRICS)
# General ability per lm-eval task: "general.<task>" (score), "general.<task>.stderr",
# "retention/<task>" (candidate / base).
GENERAL_PREFIX = "general"
RETENTION_PREFIX = "retention/"


def metric_families(mode: str) -> tuple[str, ...]:
    """Which edit-metric families an evaluation mode computes: ("", "gen.") prefixes."""
    return {TEACHER_FORCED: ("",), GENERATION: (GEN_PREFIX,), BOTH: ("", GEN_PREFIX)}[mode]


# -- MLflow tags -----------------------------------------------------------------------------
class Tag:
    """The `mm4ke.*` tag names of a sweep's runs (parent run, candidate runs, registry versions)."""

    # parent run
    ROLE = "mm4ke.role"  # ROLE_SWEEP on the parent run, ROLE_TRIAL on an R-SFT trial's run, ROLE_CANDIDATE
    GIT_REVISION = "mm4ke.git_revision"
    PROTOCOL = "mm4ke.protocol"
    PROMPT_FORMAT = "mm4ke.prompt_format"
    SWEEP_FOLDER = "mm4ke.sweep_folder"
    VERSION_PREFIX = "mm4ke.version."  # + package name: the versions the sweep ran with
    PARETO_SIZE = "mm4ke.pareto_size"
    CANDIDATES = "mm4ke.candidates"
    BEST_CANDIDATE = "mm4ke.best_candidate"
    BEST_RUN_ID = "mm4ke.best_run_id"
    BEST_COMBINED_SCORE = "mm4ke.best_combined_score"
    FINGERPRINT = "mm4ke.fingerprint"  # fingerprint.fingerprint of the sweep's config
    FINGERPRINT_FIELDS = "mm4ke.fingerprint_fields"  # the fields it was made from (JSON)
    WARM_START = "mm4ke.warm_start"  # JSON: the earlier sweeps told to the study, points each gave
    # a candidate run copied from an earlier sweep (--warm-start): where it was evaluated
    WARM_START_FROM = "mm4ke.warm_start_from"  # the earlier sweep's name (the row's `warm_start`)
    WARM_START_URI = "mm4ke.warm_start_uri"
    WARM_START_SWEEP_RUN_ID = "mm4ke.warm_start_sweep_run_id"
    WARM_START_RUN_ID = "mm4ke.warm_start_run_id"  # the candidate's run in the earlier sweep
    # trial and candidate runs (a trial run groups the candidate runs of one R-SFT delta)
    CANDIDATE = "mm4ke.candidate"  # the candidate's stable id (the run name is for people); also on exports
    TRIAL_ID = "mm4ke.trial_id"
    KIND = "mm4ke.kind"
    STATUS = "mm4ke.status"
    REASON = "mm4ke.reason"
    ATTEMPT = "mm4ke.attempt"
    RETRIED = "mm4ke.retried"
    DELTA_ARTIFACT = "mm4ke.delta_artifact"
    EXTRA_OF = "mm4ke.extra_of"
    # exports: logged models and registered model versions
    SWEEP = "mm4ke.sweep"
    SWEEP_RUN_ID = "mm4ke.sweep_run_id"  # the parent run's id; also on trial and candidate runs, so a
    # sweep's runs are found however deep they nest (parent → trial → candidate)
    EXPORT_DIR = "mm4ke.export_dir"  # where an export's files are when they were not uploaded
    BASE_MODEL = "mm4ke.base_model"
    ALPHA = "mm4ke.alpha"
    SPARSITY = "mm4ke.sparsity"
    METRIC_PREFIX = "mm4ke.metric."  # + metric name: a recorded metric on a registered version

    @staticmethod
    def version(package: str) -> str:
        return f"{Tag.VERSION_PREFIX}{package}"


ROLE_SWEEP, ROLE_TRIAL, ROLE_CANDIDATE = "sweep", "trial", "candidate"  # values of Tag.ROLE
BEST_TAGS = (Tag.BEST_CANDIDATE, Tag.BEST_RUN_ID, Tag.BEST_COMBINED_SCORE)
# MLflow 3's experiment kind: without it the UI infers one and may open on GenAI traces.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"  # the UI's "custom model development" (runs first)
SUMMARY_DIGITS = 6  # decimals of the parent run's summary metrics (best score so far, ...)

# -- artifacts -------------------------------------------------------------------------------
CONFIG_ARTIFACT = "config.yaml"  # the sweep's config, on the parent run
PARETO_DIR = "pareto"  # all.csv, front.csv, front.png, front.html, on the parent run
DELTAS_DIR = "deltas"


def delta_folder(trial_id: str) -> str:
    """Where a trial's delta folder (delta.safetensors, rsft.json) lives among the parent run's artifacts."""
    return f"{DELTAS_DIR}/{trial_id}"


def delta_artifact_path(trial_id: str) -> str:
    """The delta file of a trial among the parent run's artifacts (the `mm4ke.delta_artifact` tag)."""
    return f"{delta_folder(trial_id)}/delta.safetensors"
