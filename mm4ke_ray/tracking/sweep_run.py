"""A sweep's parent run: what it records (params, tags, config.yaml), where its spool lives, and
what a resumed sweep finds already logged in it."""

from __future__ import annotations

import json
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import yaml

from mm4ke_ray.config import SweepConfig
from mm4ke_ray.evaluate.definitions import AGGREGATION, EDIT_DEFINITIONS
from mm4ke_ray.evaluate.evidence import DROP_RULE, min_sign_items
from mm4ke_ray.evaluate.rung_reuse import REUSE_RULE
from mm4ke_ray.evaluate.scores import RETENTION_DEFINITION
from mm4ke_ray.evaluate.stop_rules import STOP_RULE_TEXT
from mm4ke_ray.fingerprint import fingerprint, fingerprint_fields
from mm4ke_ray.modeling.encoding import EVAL_SCORING, SUPERVISED, TRAIN_SUPERVISION
from mm4ke_ray.schema import CONFIG_ARTIFACT, Tag
from mm4ke_ray.storage import is_uri
from mm4ke_ray.tracking.buffer import SPOOL_FILE
from mm4ke_ray.tracking.mlflow_tracker import SweepTracker, quick_http_failures
from mm4ke_ray.tracking.query import load_sweep

VERSIONED = ("mm4ke-ray", "torch", "transformers", "ray", "optuna", "mlflow", "lm_eval")


def git_revision() -> str:
    try:
        here = Path(__file__).resolve().parent
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                              timeout=5).stdout.strip() or "unknown"
    except Exception:  # noqa: BLE001
        return "unknown"


def versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in VERSIONED:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def sweep_params(config: SweepConfig, eval_actors: int, max_concurrent: int) -> dict:
    """The parent run's params (what the MLflow UI shows; `export` reads model/edits/... back)."""
    return {"protocol": config.evaluation.protocol, "prompt_format": config.data.prompt_format,
            "model": config.model.name, "edits": config.data.edits, "num_trials": config.search.num_trials,
            "sampler": config.search.sampler, "merge_method": config.merge.method,
            "extra_candidates": config.merge.extra_candidates, "seed": config.search.seed,
            "eval_actors": eval_actors, "max_concurrent": max_concurrent,
            **recorded_choices(config)}


def recorded_choices(config: SweepConfig) -> dict:
    """How the sweep trains and scores (issues 11, 14): R-SFT's supervision and lr schedule, the
    edit-metric families and the one the edit score uses, and how lm-eval's general tasks run."""
    ev = config.evaluation
    space = config.search.space  # a searched schedule: its choices/range; each candidate run logs its own
    out = {"rsft_lr_schedule": space.lr_schedule.text(), "rsft_warmup_ratio": space.warmup_ratio.text(),
           "train_supervision": TRAIN_SUPERVISION[config.data.prompt_format], "eval_scoring": EVAL_SCORING,
           "rsft_supervised": SUPERVISED[config.data.prompt_format],
           "eval_mode": ev.mode, "edit_mode": config.edit_mode}
    # The front, best pick and export read these back (evaluate.pareto_front.minimums_from_params).
    obj = config.objectives
    out.update({f"min_{name}": low for name, low in (("edit_score", obj.min_edit_score),
                                                     ("general_score", obj.min_general_score)) if low is not None})
    # Which definitions produced the numbers (issue 23): aggregation of both families, and the
    # generated family's match, stop and budget rules.
    out.update(edit_aggregation=AGGREGATION, edit_definitions=EDIT_DEFINITIONS)
    if ev.fidelity.enabled and ev.fidelity.rungs > 1:  # how a lower rung drops (issue 23)
        # ... and the fewest items a lower rung scores: smaller ones are raised, or skipped where
        # the edit set or the tasks' documents are smaller (rung_plan.py; rung{r}.skipped per run)
        out.update(fidelity_drop_rule=DROP_RULE, fidelity_error_rate=ev.fidelity.error_rate,
                   fidelity_min_items=min_sign_items(ev.fidelity.error_rate), fidelity_reuse=REUSE_RULE)
    if ev.mode != "teacher-forced":
        out.update(generation_match=ev.generation_match, generation_stop=ev.generation_stop,
                   generation_stop_rule=STOP_RULE_TEXT[ev.generation_stop],
                   generation_max_new_tokens=ev.generation_max_new_tokens,
                   generation_extra_tokens="none" if ev.generation_extra_tokens is None else ev.generation_extra_tokens)
    if ev.general_tasks:
        # the same rule GeneralEvaluator.for_prompt_format applies: chat-edited models get the template
        out.update(general_apply_chat_template=config.general_chat_template,
                   general_limit=ev.general_limit if ev.general_limit is not None else "all",
                   general_shared_context=ev.shared_context,
                   general_retention=RETENTION_DEFINITION, general_max_length=ev.general_max_length or "model",
                   **{f"general_local_task.{t}": lt.model_dump_json(exclude_none=True) for t, lt in ev.local_tasks.items()},
                   **{f"general_metric.{t}": ev.general_metrics.get(t, "first") for t in ev.general_tasks})
    return out


def sweep_tags(config: SweepConfig, experiment_dir: str) -> dict:
    return {Tag.GIT_REVISION: git_revision(), Tag.PROTOCOL: config.evaluation.protocol,
            Tag.PROMPT_FORMAT: config.data.prompt_format, Tag.SWEEP_FOLDER: experiment_dir,
            **fingerprint_tags(config), **{Tag.version(k): v for k, v in versions().items()}}


def fingerprint_tags(config: SweepConfig) -> dict:
    """`mm4ke.fingerprint` and the fields it was made from, so a later --warm-start can be checked
    against this sweep and a mismatch named field by field."""
    fields = fingerprint_fields(config)
    return {Tag.FINGERPRINT: fingerprint(fields), Tag.FINGERPRINT_FIELDS: json.dumps(fields, sort_keys=True)}


def spool_path(experiment_dir: str) -> Path:
    """Where unsent MLflow writes wait: in the sweep's folder, or under ./runs for a cloud folder."""
    name = Path(experiment_dir.rstrip("/")).name
    return (Path("runs") / "spool" / name / SPOOL_FILE).resolve() if is_uri(experiment_dir) \
        else Path(experiment_dir) / SPOOL_FILE


def open_sweep_run(config: SweepConfig, experiment_dir: str, *, eval_actors: int, max_concurrent: int,
                   parent_run_id: str | None = None) -> tuple[SweepTracker, str]:
    """(tracker, parent run id): a new parent run, or the existing one of a resumed sweep."""
    # A tracking server keeps artifacts where its --artifacts-destination says, unless the
    # config names a location explicitly; a local path would land on the driver's own disk.
    location = config.tracking.artifact_location
    if config.tracking.uri.startswith(("http://", "https://")) and "artifact_location" not in config.tracking.model_fields_set:
        location = None
    quick_http_failures(config.tracking.uri)
    tracker = SweepTracker(config.tracking.uri, config.tracking.experiment, location,
                           spool_path=spool_path(experiment_dir))
    if parent_run_id is not None:
        tracker.flush()  # what the dead driver could not send goes first
        parent = tracker.start_sweep(config.name, {}, {}, parent_run_id=parent_run_id)
    else:
        parent = tracker.start_sweep(config.name, params=sweep_params(config, eval_actors, max_concurrent),
                                     tags=sweep_tags(config, experiment_dir))
        tracker.log_text(yaml.safe_dump(config.model_dump(), sort_keys=False), CONFIG_ARTIFACT)
    if config.tracking.system_metrics:
        tracker.monitor_system(config.tracking.system_metrics_interval_s, resumed=parent_run_id is not None)
    return tracker, parent


def logged_so_far(tracker: SweepTracker, parent: str) -> tuple[list[dict], set[str], bool]:
    """(candidate rows, trial ids finished for good, base logged?) of a resumed sweep, from MLflow."""
    sweep = load_sweep(tracker.uri, parent)
    finished = {r["trial_id"] for r in sweep.edited if r.get("trial_id")}
    for failed in sweep.failed:
        tags = sweep.run_tags.get(failed["run_id"], {})
        if failed["status"] == "diverged" and tags.get(Tag.TRIAL_ID):
            finished.add(tags[Tag.TRIAL_ID])  # a final outcome; 'failed'/'error' may still be retried
    return sweep.edited, finished, sweep.base is not None
