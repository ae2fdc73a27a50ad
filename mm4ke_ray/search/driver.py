"""The sweep driver: preflight, Ray, the merge-eval pool, Tune + Optuna, MLflow, the summary.

`run_sweep` starts a sweep, `resume_sweep` continues one whose driver died (see `resume.py`).
Everything the user can get wrong is checked by `preflight` before Ray starts or MLflow is
written. Faults survived while running: a dead R-SFT worker (Tune retries the trial), a dead
merge-eval actor (Ray restarts it and re-sends its calls), a diverged R-SFT (a FAIL for Optuna,
a FAILED run in MLflow), the tracking server away (writes spooled, sent when it is back).
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from rich.console import Console

from mm4ke_ray.config import DEMO, SweepConfig, validate_config
from mm4ke_ray.evaluate.candidate import EvalSettings
from mm4ke_ray.evaluate.scores import COMBINED, OBJECTIVES
from mm4ke_ray.preflight import preflight

console = Console(stderr=True)
FINAL_FLUSH_WAIT_S = 60.0  # at the end, how long to wait for an absent tracking server


@dataclass
class SweepOutcome:
    parent_run_id: str
    rows: list[dict]
    base: dict
    front: list[dict]
    optuna_trials: int
    extra_points_told: int
    rsft_runs: int
    storage: str
    seconds: float
    experiment_dir: str = ""
    spool: str | None = None  # MLflow records left unsent (server away at the end), if any
    resumed: bool = False
    mlflow_spooled: int = 0  # MLflow writes that had to wait on disk (server away) during the sweep


def resolve_demo(config: SweepConfig, build_kwargs: dict | None = None) -> SweepConfig:
    """Replace 'demo' model/data with the locally built (cached) demo assets."""
    if DEMO not in (config.model.name, config.data.edits):
        return config
    from mm4ke_ray.demo.build import build_demo

    assets = build_demo(progress=lambda msg: console.print(f"[dim]demo: {msg}[/]"), **(build_kwargs or {}))
    overrides = {}
    if config.model.name == DEMO:
        overrides["model.name"] = str(assets.model_dir)
    if config.data.edits == DEMO:
        overrides["data.edits"] = str(assets.edits_path)
        overrides["evaluation.task_include_path"] = str(assets.tasks_dir)
    return config.with_overrides(**overrides)


def eval_settings(config: SweepConfig, device: str) -> EvalSettings:
    return EvalSettings(
        model=config.model.name, edits=config.data.edits, dtype=config.model.dtype,
        trust_remote_code=config.model.trust_remote_code, data_format=config.data.format, limit=config.data.limit,
        skip_invalid=config.data.skip_invalid, prompt_format=config.data.prompt_format,
        batch_size=config.evaluation.batch_size, fluency=config.evaluation.fluency,
        general_tasks=tuple(config.evaluation.general_tasks), task_include_path=config.evaluation.task_include_path,
        general_limit=config.evaluation.general_limit, merge_method=config.merge.method,
        edit_weights=dict(config.objectives.edit_weights), combined_edit_weight=config.objectives.combined_edit_weight,
        device=device, allow_pickle=config.model.allow_pickle,
    )


def _git_revision() -> str:
    try:
        here = Path(__file__).resolve().parent
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5).stdout.strip() or "unknown"
    except Exception:  # noqa: BLE001
        return "unknown"


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("mm4ke-ray", "torch", "transformers", "ray", "optuna", "mlflow", "lm_eval"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def run_sweep(config: SweepConfig, *, source: str = "<config>", address: str | None = None,
              num_trials: int | None = None, smoke_test: bool = False) -> SweepOutcome:
    """Run a whole sweep and return its candidates; everything is also in MLflow."""
    if smoke_test:
        config = config.with_overrides(**{"search.num_trials": 4, "merge.extra_candidates": max(2, min(3, config.merge.extra_candidates))})
    if num_trials:
        config = config.with_overrides(**{"search.num_trials": num_trials})
    preflight(config, source)
    config = resolve_demo(config)
    preflight(config, source)
    return _execute(config, source, address, manifest=None)


def resume_sweep(folder: str, *, address: str | None = None) -> SweepOutcome:
    """Continue the sweep in `folder` (its `<storage_path>/<name>`) after its driver died.

    Completed trials are not run again, unfinished ones continue from their checkpoints, the
    Optuna study keeps every point told so far, and logging goes on in the same MLflow parent run.
    """
    from mm4ke_ray.search.resume import MANIFEST, read_manifest

    manifest = read_manifest(folder)
    config = validate_config(manifest.config, f"{manifest.experiment_dir}/{MANIFEST}")
    preflight(config, manifest.source)
    return _execute(config, manifest.source, address, manifest=manifest)


def _init_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        # No dashboard UI; what Ray keeps of it listens on the loopback interface only.
        ray.init(include_dashboard=False, dashboard_host="127.0.0.1", log_to_driver=False, configure_logging=False)


def _start_tracker(config: SweepConfig, experiment_dir: str, manifest, plan):
    from mm4ke_ray.search.storage import is_uri
    from mm4ke_ray.tracking.buffer import SPOOL_FILE
    from mm4ke_ray.tracking.mlflow_tracker import SweepTracker, quick_http_failures

    # A tracking server keeps artifacts where its --artifacts-destination says, unless the
    # config names a location explicitly; a local path would land on the driver's own disk.
    location = config.tracking.artifact_location
    if config.tracking.uri.startswith(("http://", "https://")) and "artifact_location" not in config.tracking.model_fields_set:
        location = None
    quick_http_failures(config.tracking.uri)
    name = Path(experiment_dir.rstrip("/")).name
    spool = (Path("runs") / "spool" / name / SPOOL_FILE).resolve() if is_uri(experiment_dir) else Path(experiment_dir) / SPOOL_FILE
    tracker = SweepTracker(config.tracking.uri, config.tracking.experiment, location, spool_path=spool)
    if manifest is not None:
        tracker.flush()  # what the dead driver could not send goes first
        return tracker, tracker.start_sweep(config.name, {}, {}, parent_run_id=manifest.parent_run_id)
    parent = tracker.start_sweep(
        config.name,
        params={"protocol": config.evaluation.protocol, "prompt_format": config.data.prompt_format,
                "model": config.model.name, "edits": config.data.edits, "num_trials": config.search.num_trials,
                "sampler": config.search.sampler, "merge_method": config.merge.method,
                "extra_candidates": config.merge.extra_candidates, "seed": config.search.seed,
                "eval_actors": plan.actors, "max_concurrent": plan.max_concurrent},
        tags={"mm4ke.git_revision": _git_revision(), "mm4ke.protocol": config.evaluation.protocol,
              "mm4ke.prompt_format": config.data.prompt_format, "mm4ke.sweep_folder": experiment_dir,
              **{f"mm4ke.version.{k}": v for k, v in _versions().items()}},
    )
    tracker.log_text(yaml.safe_dump(config.model_dump(), sort_keys=False), "config.yaml")
    return tracker, parent


def _logged_so_far(tracker, parent: str) -> tuple[list[dict], set[str], bool]:
    """(candidate rows, trial ids finished for good, base logged?) of a resumed sweep, from MLflow."""
    from mm4ke_ray.tracking.query import load_sweep

    sweep = load_sweep(tracker.uri, parent)
    finished = {r["trial_id"] for r in sweep.edited if r.get("trial_id")}
    for failed in sweep.failed:
        tags = sweep.run_tags.get(failed["run_id"], {})
        if failed["status"] == "diverged" and tags.get("mm4ke.trial_id"):
            finished.add(tags["mm4ke.trial_id"])  # a final outcome; 'failed'/'error' may still be retried
    return sweep.edited, finished, sweep.base is not None


def _execute(config: SweepConfig, source: str, address: str | None, manifest) -> SweepOutcome:
    import ray

    from mm4ke_ray.search.actors import start_pool, stop_pool
    from mm4ke_ray.search.resources import plan_resources
    from mm4ke_ray.search.resume import (
        join,
        manifest_for,
        new_experiment_name,
        write_manifest,
    )
    from mm4ke_ray.search.storage import (
        local_storage_warning,
        normalize_storage_path,
        probe_storage,
    )

    start = time.time()
    device = "cuda" if config.resources.eval_gpus > 0 else "cpu"
    settings = eval_settings(config, device)  # raises for settings this version cannot honour, before any side effect
    storage = normalize_storage_path(config.storage_path)
    probe_storage(storage)
    _init_ray(address)
    if warning := local_storage_warning(storage, len([n for n in ray.nodes() if n.get("Alive")])):
        console.print(f"[yellow]{warning}[/]")
    plan = plan_resources(config.resources, ray.cluster_resources(), config.merge.extra_candidates + 1)
    experiment_dir = manifest.experiment_dir if manifest else join(storage, new_experiment_name(storage, config.name))

    tracker, parent = _start_tracker(config, experiment_dir, manifest, plan)
    rows, finished, base_logged = _logged_so_far(tracker, parent) if manifest else ([], set(), False)
    if manifest is None:
        write_manifest(manifest_for(config, source, parent, experiment_dir))
    verb = "resuming" if manifest else "starting"
    console.print(f"[bold]{verb} sweep {config.name}[/]: {config.search.num_trials} trials, {plan.actors} merge-eval "
                  f"actor(s), {plan.max_concurrent} trial(s) at once · MLflow run {parent}\n"
                  f"  folder {experiment_dir} · if it is interrupted: mm4ke-ray sweep --resume {experiment_dir}")

    pool = start_pool(settings, plan.actors, config.resources.eval_cpus,
                      config.resources.eval_gpus, config.resources.eval_resource)
    try:
        return _tune(config, manifest, plan, pool, tracker, parent, storage, experiment_dir,
                     rows, finished, base_logged, start)
    finally:
        # Tune's registry keeps the trainable's parameters (and so the pool's handles) for the
        # process's lifetime: without an explicit kill the pool would hold its CPUs/GPUs until
        # the driver exits and starve a next sweep in the same process.
        stop_pool(pool)


def _tune(config, manifest, plan, pool, tracker, parent, storage, experiment_dir,
          rows, finished, base_logged, start) -> SweepOutcome:
    from ray import tune

    from mm4ke_ray.search.callback import SweepCallback
    from mm4ke_ray.search.resources import TRIAL_RESOURCES
    from mm4ke_ray.search.resume import restore_tuner, restored_searcher
    from mm4ke_ray.search.trial import TrialContext, sweep_trial
    from mm4ke_ray.tracking.pareto_artifacts import ParetoPublisher

    base = {"candidate": "base", "kind": "base", **pool.reference.metrics}
    if not base_logged:
        tracker.log_candidate("base", {"alpha": None}, pool.reference.metrics, {"mm4ke.kind": "base", "mm4ke.status": "ok"})
    ctx = TrialContext(
        settings=eval_settings(config, "cpu"), search=config.search, extra_candidates=config.merge.extra_candidates,
        runner=config.search.rsft.runner, rsft_cpus=config.resources.rsft_cpus, rsft_gpus=config.resources.rsft_gpus,
        # R-SFT's Ray Train runs live inside the sweep's own folder, one per trial.
        storage_path=f"{experiment_dir.rstrip('/')}/rsft", actors=tuple(pool.actors),
        allow_pickle=config.model.allow_pickle,
    )
    publisher = ParetoPublisher(tracker, base, every=3)
    callback = SweepCallback(tracker, config.search.num_trials, on_rows=publisher)
    if manifest:
        callback.resume_from(rows, finished)
    trainable = tune.with_resources(tune.with_parameters(sweep_trial, ctx=ctx), TRIAL_RESOURCES)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if manifest:
        tuner, searcher = restore_tuner(experiment_dir, trainable, [callback]), None
    else:
        tuner, searcher = _new_tuner(config, plan, storage, experiment_dir, trainable, callback)
    status = "FAILED"
    try:
        grid = tuner.fit()
        status = "FINISHED"
    finally:
        spool = _finish(tracker, publisher, callback, status)
    outcome = _outcome(parent, callback.rows, base, grid, searcher or restored_searcher(tuner), storage, start,
                       experiment_dir, spool, bool(manifest))
    outcome.mlflow_spooled = tracker.spooled
    _print_summary(outcome, config)
    return outcome


def _new_tuner(config: SweepConfig, plan, storage: str, experiment_dir: str, trainable, callback):
    from ray import tune

    from mm4ke_ray.search.searcher import STUDY_FILE, CandidateAwareOptunaSearch, journal_storage
    from mm4ke_ray.search.space import make_sampler, split_space
    from mm4ke_ray.search.storage import is_uri

    searched, _ = split_space(config.search)
    searcher = CandidateAwareOptunaSearch(
        space=searched, metric=[o.name for o in OBJECTIVES], mode=[o.mode for o in OBJECTIVES],
        sampler=make_sampler(config.search), study_name=config.name,
        # The study on disk beside Tune's state: every told point (extra candidates too) survives
        # the driver. A cloud storage_path has no local folder: Tune's own searcher state then.
        storage=None if is_uri(experiment_dir) else journal_storage(Path(experiment_dir) / STUDY_FILE),
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=config.search.num_trials,
                                    max_concurrent_trials=plan.max_concurrent),
        run_config=tune.RunConfig(
            name=Path(experiment_dir.rstrip("/")).name, storage_path=storage, callbacks=[callback], verbose=0,
            failure_config=tune.FailureConfig(max_failures=config.max_failures),
            # One checkpoint per trial (delta + result); Tune saves its experiment state right
            # after each one, and SweepCallback records the trial once that state is stored.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )
    return tuner, searcher


def _finish(tracker, publisher, callback, status: str) -> str | None:
    """Publish the final Pareto front and close the parent run; the spool's path if MLflow is away."""
    for row in callback.rows:  # candidates that waited in the spool got their run ids when sent
        if not row.get("run_id") and row.get("candidate") in tracker.run_ids:
            row["run_id"] = tracker.run_ids[row["candidate"]]
    if tracker.flush(wait_s=FINAL_FLUSH_WAIT_S if tracker.offline else 0.0):
        try:
            publisher.final(callback.rows)
        except Exception as exc:  # noqa: BLE001 - the candidates are logged; the front can be rebuilt
            console.print(f"[yellow]could not publish the Pareto artifacts ({exc}); "
                          "rebuild them with mm4ke-ray pareto[/]")
    tracker.finish(status)
    if tracker.flush() and not tracker.pending:
        return None
    path = str(tracker.spool.path)
    console.print(f"[bold red]MLflow at {tracker.uri} did not answer:[/] {tracker.pending} record(s) are kept in "
                  f"{path}\n  send them when it is back: mm4ke-ray sweep --replay-spool {path}")
    return path


def _outcome(parent, rows, base, grid, searcher, storage, start, experiment_dir, spool, resumed) -> SweepOutcome:
    from mm4ke_ray.search.pareto import pareto_front
    from mm4ke_ray.search.searcher import EXTRA_ATTR

    everything = [base, *rows]
    front = [everything[i] for i in pareto_front(everything)]
    rsft_runs = sum(1 for r in grid if r.metrics and r.metrics.get("status"))
    trials = searcher.study.get_trials(deepcopy=False)
    extra = sum(1 for t in trials if EXTRA_ATTR in t.user_attrs)
    return SweepOutcome(parent, rows, base, front, len(trials), extra, rsft_runs, storage, time.time() - start,
                        experiment_dir, spool, resumed)


def _print_summary(out: SweepOutcome, config: SweepConfig) -> None:
    from mm4ke_ray.tracking.tables import print_table

    cols = ["candidate", "kind", "layer", "lr", "alpha", "sparsity", "edit_succ", "generalization", "portability",
            "locality", *[o.name for o in OBJECTIVES], COMBINED.name]
    pure = [r for r in out.rows if r.get("kind") == "pure_rsft"]
    best_pure = max(pure, key=lambda r: r.get(COMBINED.name, 0)) if pure else None
    shown = [out.base, *([best_pure] if best_pure and best_pure not in out.front else []),
             *sorted([r for r in out.front if r is not out.base], key=lambda r: -r.get(COMBINED.name, 0))]
    print_table(shown, cols, f"Pareto front of {config.name} ({len(out.rows)} candidates, {out.rsft_runs} R-SFT runs)")
    uri = config.tracking.uri
    console.print(f"[bold]Open MLflow:[/] mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
                  if uri.startswith("sqlite") else f"[bold]MLflow:[/] {uri}")

