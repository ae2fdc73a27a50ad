"""The sweep driver: preflight, Ray, the merge-eval pool, Tune + Optuna, MLflow, the summary.

`run_sweep` starts a sweep, `resume_sweep` continues one whose driver died (see `resume.py`).
Both take a config whose demo is already resolved (the command layer does that: `demo.resolve`).
Everything the user can get wrong is checked by `preflight`, once, before Ray starts or MLflow is
written. Faults survived while running: a dead R-SFT worker (Tune retries the trial), a dead
merge-eval actor (Ray restarts it and re-sends its calls), a diverged R-SFT (a FAIL for Optuna,
a FAILED run in MLflow), the tracking server away (writes spooled, sent when it is back).

`run_sweep`/`resume_sweep` check, then `_execute` is the recipe, one step a function: set up
(settings, storage, Ray, the pool → a `SweepRun`) → check the base → open the parent run → read
back or record → fit (the Tuner) → finish (Pareto artifacts, parent run closed) → the outcome,
which the command prints (`outcome.print_summary`).
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray
from ray import tune
from rich.console import Console

from mm4ke_ray.config import DEMO, SweepConfig, validate_config
from mm4ke_ray.evaluate.candidate import EvalSettings, eval_settings
from mm4ke_ray.evaluate.evidence import check_halving_evidence
from mm4ke_ray.evaluate.precision import precision_warnings
from mm4ke_ray.evaluate.scores import OBJECTIVES
from mm4ke_ray.fingerprint import fingerprint_fields
from mm4ke_ray.preflight import preflight
from mm4ke_ray.quiet import is_verbose, quiet_libraries
from mm4ke_ray.schema import ALPHA, BASE, Tag
from mm4ke_ray.search.actors import start_pool, stop_pool
from mm4ke_ray.search.callback import SweepCallback
from mm4ke_ray.search.constraints import minimums
from mm4ke_ray.search.front_board import drop_front, new_front_key, publish_front
from mm4ke_ray.search.interrupt import catch_interrupt
from mm4ke_ray.search.local_ray import init_local_ray
from mm4ke_ray.search.outcome import SweepOutcome, sweep_outcome
from mm4ke_ray.search.resources import Plan, plan_resources, trial_resources
from mm4ke_ray.search.resume import (
    MANIFEST,
    Manifest,
    claim_experiment_folder,
    manifest_for,
    read_manifest,
    restore_tuner,
    restored_searcher,
    write_manifest,
)
from mm4ke_ray.search.searcher import STUDY_FILE, CandidateAwareOptunaSearch, journal_storage
from mm4ke_ray.search.space import make_sampler, split_space
from mm4ke_ray.search.timings import SweepTimings, TimedTracker
from mm4ke_ray.search.trial import TrialContext, sweep_trial
from mm4ke_ray.search.warm_start import warm_points
from mm4ke_ray.storage import is_uri, local_storage_warning, normalize_storage_path, probe_storage
from mm4ke_ray.tracking.mlflow_tracker import SweepTracker
from mm4ke_ray.tracking.pareto_artifacts import ParetoPublisher
from mm4ke_ray.tracking.store_check import absolute_uri
from mm4ke_ray.tracking.sweep_run import logged_so_far, open_sweep_run
from mm4ke_ray.tracking.tables import executable, print_command
from mm4ke_ray.tracking.warm_sources import (
    WarmSource,
    load_warm_sources,
    log_warm_rows,
    record_warm_start,
    warm_rows,
)

console = Console(stderr=True)
FINAL_FLUSH_WAIT_S = 60.0  # at the end, how long to wait for an absent tracking server


@dataclass
class SweepRun:
    """One sweep while it runs: what `_execute` set up, handed to the steps after it."""

    config: SweepConfig
    source: str
    manifest: Manifest | None  # set when resuming
    settings: EvalSettings  # built once, on the pool's device
    plan: Plan  # actors and trials at once, from the cluster
    storage: str  # normalized storage_path
    pool: object
    start: float  # time.time() at the sweep's start
    timings: SweepTimings
    clock: float  # perf_counter at the sweep's start
    # Set once the parent run is open (`_open_parent_run`, `_read_back_or_record`):
    experiment_dir: str = ""  # <storage>/<name>: Tune's folder, the manifest, the study
    tracker: SweepTracker | None = None
    parent: str = ""  # the parent run's id
    rows: list[dict] = field(default_factory=list)  # candidates already logged (resume)
    finished: set[str] = field(default_factory=set)  # trial ids already final (resume)
    base_logged: bool = False
    warm: list[WarmSource] = field(default_factory=list)  # --warm-start sources, checked (new sweep)
    warm_rows: list[dict] = field(default_factory=list)  # their candidates as copied into this sweep
    front_key: str | None = None  # halving against the front: where trials read it (front_board.py)
    parent_closed: bool = False  # the parent run got its final status (`_finish`)
    open_clock: float = 0.0  # perf_counter when the parent run began to open (its share of the wall)

    @property
    def resumed(self) -> bool:
        return self.manifest is not None


def run_sweep(config: SweepConfig, *, source: str = "<config>", address: str | None = None,
              num_trials: int | None = None, smoke_test: bool = False,
              warm_start: list[str] | tuple[str, ...] = ()) -> SweepOutcome:
    """Run a whole sweep and return its candidates; everything is also in MLflow.

    `warm_start`: earlier sweeps (`TRACKING_URI:SWEEP`) whose candidates the study is told before
    its first trial and the front starts from; checked here, before Ray (tracking/warm_sources.py).
    """
    if DEMO in (config.model.name, config.data.edits):
        raise ValueError("the config names the demo: resolve it first (mm4ke_ray.demo.resolve.resolve_demo)")
    if smoke_test:
        config = config.with_overrides(**{"search.num_trials": 4, "merge.extra_candidates": max(2, min(3, config.merge.extra_candidates))})
    if num_trials is not None:
        config = config.with_overrides(**{"search.num_trials": num_trials})
    if (uri := absolute_uri(config.tracking.uri)) != config.tracking.uri:
        # Recorded absolute in the manifest: `--resume` from any directory opens the same store.
        config = config.with_overrides(**{"tracking.uri": uri})
    preflight(config, source)
    warm = load_warm_sources(list(warm_start), fingerprint_fields(config)) if warm_start else []
    return _execute(config, source, address, manifest=None, warm=warm)


def resume_sweep(folder: str, *, address: str | None = None) -> SweepOutcome:
    """Continue the sweep in `folder` (its `<storage_path>/<name>`) after its driver died.

    Completed trials are not run again, unfinished ones continue from their checkpoints, the
    Optuna study keeps every point told so far, and logging goes on in the same MLflow parent run.
    """
    manifest = read_manifest(folder)
    config = validate_config(manifest.config, f"{manifest.experiment_dir}/{MANIFEST}")
    preflight(config, manifest.source, existing_store=True)  # a resume never starts an empty store
    return _execute(config, manifest.source, address, manifest=manifest)


def _init_ray(address: str | None) -> None:
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")  # `ray job submit` sets it: the cluster's own settings
    if address:
        ray.init(address=address, log_to_driver=is_verbose())
    else:
        # No dashboard UI, and every socket of this local Ray (GCS, raylet, agents, workers) on
        # 127.0.0.1: a laptop's sweep is not reachable from the network (local_ray.py).
        init_local_ray(include_dashboard=False, dashboard_host="127.0.0.1", log_to_driver=is_verbose(),
                       configure_logging=False)


def _execute(config: SweepConfig, source: str, address: str | None, manifest: Manifest | None,
             warm: list[WarmSource] | None = None) -> SweepOutcome:
    """The recipe. A refused base (exit 2) leaves no folder and no parent run; once the parent run
    is open, whatever fails ends it FAILED (or KILLED) with the reason."""
    run = _set_up(config, source, address, manifest, warm or [])
    try:
        _check_base(run)
        _open_parent_run(run)
        try:
            _read_back_or_record(run)
            return _fit(run)
        except BaseException as exc:
            if not run.parent_closed:
                _fail_parent(run.tracker, exc)
            raise
    finally:
        # Tune's registry keeps the trainable's parameters (and so the pool's handles) for the
        # process's lifetime: without an explicit kill the pool would hold its CPUs/GPUs until
        # the driver exits and starve a next sweep in the same process.
        stop_pool(run.pool)


def _set_up(config: SweepConfig, source: str, address: str | None, manifest: Manifest | None,
            warm: list[WarmSource]) -> SweepRun:
    """Settings, storage, Ray and the merge-eval pool: the sweep's run state."""
    start, clock, timings = time.time(), time.perf_counter(), SweepTimings()
    quiet_libraries()  # before Ray starts: its workers inherit the environment
    _tune_environment()
    device = "cuda" if config.resources.eval_gpus > 0 else "cpu"
    settings = eval_settings(config, device)  # raises for settings this version cannot honour, before any side effect
    storage = normalize_storage_path(config.storage_path)
    probe_storage(storage)
    _init_ray(address)
    timings.ray_start = time.perf_counter() - clock
    if warning := local_storage_warning(storage, len([n for n in ray.nodes() if n.get("Alive")])):
        console.print(f"[yellow]{warning}[/]")
    plan = plan_resources(config.resources, ray.cluster_resources(), config.merge.extra_candidates + 1)
    # The pool first: its base reference decides whether the general tasks are informative.
    pool_clock = time.perf_counter()
    pool = start_pool(settings, plan.actors, config.resources.eval_cpus,
                      config.resources.eval_gpus, config.resources.eval_resource)
    timings.pool_start = time.perf_counter() - pool_clock
    return SweepRun(config, source, manifest, settings, plan, storage, pool, start, timings, clock, warm=warm)


def _tune_environment() -> None:
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Tune's default loggers include TensorBoard's, which cannot log our nested results (a long
    # "invalid value" dump per trial): only the JSON (result.json) and CSV loggers are kept.
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"


def _check_base(run: SweepRun) -> None:
    """The base model's general tasks: printed, and refused when they cannot tell candidates apart;
    halving rungs beyond what the edit set and documents support: said (they are skipped)."""
    plan = ray.get(run.pool.actors[0].rung_plan.remote()) if run.settings.fidelity_rungs > 1 else None
    if plan is not None and (warning := plan.cap_warning()):
        console.print(f"[yellow]{warning}[/]")
    result = run.pool.reference.general_result
    if result is None:
        return
    for line in result.summary():
        console.print(f"base model, general task {line}")
    result.check_noise()
    for line in precision_warnings(result.__dict__, run.config.evaluation.general_se_threshold):
        console.print(f"[yellow]{line}[/]")
    if plan is not None:
        check_halving_evidence(result.stderr, result.higher_is_better, plan.exact_tasks())


def _open_parent_run(run: SweepRun) -> None:
    """Claim the sweep's folder and open (or reopen) its parent run."""
    config, manifest, plan = run.config, run.manifest, run.plan
    run.open_clock = time.perf_counter()
    run.experiment_dir = manifest.experiment_dir if manifest else claim_experiment_folder(run.storage, config.name)
    run.tracker, run.parent = open_sweep_run(config, run.experiment_dir, eval_actors=plan.actors,
                                             max_concurrent=plan.max_concurrent,
                                             parent_run_id=manifest.parent_run_id if manifest else None)


def _read_back_or_record(run: SweepRun) -> None:
    """Read back (resume) or record (new) what the parent run holds; say what starts."""
    config, manifest, plan = run.config, run.manifest, run.plan
    if manifest:
        rows, run.finished, run.base_logged = logged_so_far(run.tracker, run.parent)
        run.rows, run.warm_rows = warm_rows(rows)  # the study holds the warm points already
    else:
        write_manifest(manifest_for(config, run.source, run.parent, run.experiment_dir))
        run.warm_rows = log_warm_rows(run.tracker, run.warm)
    run.timings.tracking += time.perf_counter() - run.open_clock  # the parent run opened (or read back)
    verb = "resuming" if manifest else "starting"
    console.print(f"[bold]{verb} sweep {config.name}[/]: {config.search.num_trials} trials, {plan.actors} merge-eval "
                  f"actor(s), {plan.max_concurrent} trial(s) at once · MLflow run {run.parent}\n"
                  f"  folder {run.experiment_dir}", soft_wrap=True)
    print_command(console, "  if it is interrupted:", f"{executable('mm4ke-ray')} sweep --resume {run.experiment_dir}")


def _trial_context(run: SweepRun) -> TrialContext:
    config = run.config
    return TrialContext(
        # The trial's R-SFT runs on the device Ray gives its worker; its settings say cpu.
        settings=dataclasses.replace(run.settings, device="cpu"), search=config.search,
        extra_candidates=config.merge.extra_candidates, runner=config.search.rsft.runner,
        rsft_cpus=config.resources.rsft_cpus, rsft_gpus=config.resources.rsft_gpus,
        # R-SFT's Ray Train runs live inside the sweep's own folder, one per trial.
        storage_path=f"{run.experiment_dir.rstrip('/')}/rsft", actors=tuple(run.pool.actors),
        system_metrics_s=config.tracking.system_metrics_interval_s if config.tracking.system_metrics else None,
        fidelity_error_rate=config.evaluation.fidelity.error_rate,
        # Halving's finished rungs per trial, kept with the sweep so a restarted trial skips them.
        rungs_path=f"{run.experiment_dir.rstrip('/')}/rungs", front_key=run.front_key,
        merge_candidates=config.merge.candidates, merge_grid=config.merge.grid,
    )


def _fit(run: SweepRun) -> SweepOutcome:
    """The base logged, the front's publisher, the Tuner's fit, then `_finish`; the outcome."""
    config = run.config
    tracker = TimedTracker(run.tracker, run.timings)  # MLflow's share of the wall
    base = {"candidate": BASE, "kind": BASE, **run.pool.reference.metrics}
    if not run.base_logged:
        tracker.log_candidate(BASE, {ALPHA: None}, run.pool.reference.metrics, {Tag.KIND: BASE, Tag.STATUS: "ok"})
    publisher = ParetoPublisher(tracker, base, every=3, warm=run.warm_rows)
    on_rows = publisher
    fid = config.evaluation.fidelity
    if fid.enabled and fid.rungs > 1 and fid.against_front:
        # Halving drops what the sweep's full results already beat: they go where trials read them.
        run.front_key = new_front_key()
        publish_front(run.front_key, [base, *run.warm_rows, *run.rows])

        def on_rows(rows):
            publish_front(run.front_key, [base, *run.warm_rows, *rows])
            publisher(rows)

    callback = SweepCallback(tracker, config.search.num_trials, on_rows=on_rows)
    callback.earlier = list(run.warm_rows)
    if run.resumed:
        callback.resume_from(run.rows, run.finished)
    trainable = tune.with_resources(tune.with_parameters(sweep_trial, ctx=_trial_context(run)),
                                    trial_resources(run.config.resources, run.config.search.rsft.runner))
    status, reason = "FAILED", None
    fit_clock, tracker.in_fit = time.perf_counter(), True
    try:
        # Inside the try: a Tune state that cannot be restored also ends the parent run FAILED.
        if run.resumed:
            tuner, searcher = restore_tuner(run.experiment_dir, trainable, [callback, *_result_loggers()]), None
        else:
            tuner, searcher = _new_tuner(run, trainable, callback)
            _tell_warm_start(run, searcher, tracker)
        with catch_interrupt() as interrupt:
            grid = tuner.fit()
        status, reason = ("KILLED", "interrupted (Ctrl-C)") if interrupt.seen else ("FINISHED", None)
    except BaseException as exc:
        status, reason = ("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"), _reason(exc)
        raise
    finally:
        run.timings.fit, tracker.in_fit = time.perf_counter() - fit_clock, False
        if run.front_key:
            drop_front(run.front_key)
        if reason:
            tracker.set_sweep_tags({Tag.REASON: reason})
        spool = _finish(tracker, publisher, callback, status)
        run.parent_closed = True
    if interrupt.seen:
        console.print(f"[bold yellow]sweep {config.name} interrupted[/]: finished trials are kept in {run.experiment_dir}",
                      soft_wrap=True)
        print_command(console, "  continue it with:", f"{executable('mm4ke-ray')} sweep --resume {run.experiment_dir}")
        raise KeyboardInterrupt
    return sweep_outcome(run, callback.rows, base, grid, searcher or restored_searcher(tuner), spool)


def _reason(exc: BaseException) -> str:
    return "interrupted (Ctrl-C)" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"[:500]


def _fail_parent(tracker, exc: BaseException) -> None:
    """End the parent run FAILED with the reason: a sweep that stopped is never left RUNNING."""
    try:
        tracker.set_sweep_tags({Tag.REASON: _reason(exc)})
        tracker.finish("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        tracker.flush()
    except Exception:  # noqa: BLE001 - the original error is the one to report
        pass


def _new_tuner(run: SweepRun, trainable, callback):
    config, experiment_dir = run.config, run.experiment_dir
    searched, _ = split_space(config.search)
    searcher = CandidateAwareOptunaSearch(
        space=searched, metric=[o.name for o in OBJECTIVES], mode=[o.mode for o in OBJECTIVES],
        sampler=make_sampler(config.search, points_per_trial=config.merge.extra_candidates + 1),
        constraints=minimums(config.objectives), study_name=config.name,
        # The study on disk beside Tune's state: every told point (extra candidates too) survives
        # the driver. A cloud storage_path has no local folder: Tune's own searcher state then.
        storage=None if is_uri(experiment_dir) else journal_storage(Path(experiment_dir) / STUDY_FILE),
    )
    tuner = tune.Tuner(
        trainable,
        # reuse_actors: one trial process for the sweep's trials, not a fresh one (imports and
        # all) per trial. A trial keeps nothing between trials but per-sweep caches keyed by
        # the pool and settings (trial_candidates._PLANS); issue 28 §3.
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=config.search.num_trials,
                                    max_concurrent_trials=run.plan.max_concurrent, reuse_actors=True),
        run_config=tune.RunConfig(
            name=Path(experiment_dir.rstrip("/")).name, storage_path=run.storage,
            callbacks=[callback, *_result_loggers()], verbose=0,
            failure_config=tune.FailureConfig(max_failures=config.max_failures),
            # One checkpoint per trial (delta + result); Tune saves its experiment state right
            # after each one, and SweepCallback records the trial once that state is stored.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )
    return tuner, searcher


def _tell_warm_start(run: SweepRun, searcher: CandidateAwareOptunaSearch, tracker) -> None:
    """Tell the study every --warm-start source's candidates before the first trial; record how many."""
    if not run.warm:
        return
    for source in run.warm:
        points, skipped = warm_points(source.rows, run.config.search, source.name)
        told, refused = searcher.tell_warm_start(points, source.name)
        source.told, source.skipped = told, skipped + refused
        outside = f"; {source.skipped} outside this search space, skipped" if source.skipped else ""
        console.print(f"warm start from sweep {source.name} (run {source.sweep.run_id}): {told} of "
                      f"{len(source.rows)} candidate(s) told to the study{outside}", soft_wrap=True)
    record_warm_start(tracker, run.warm)


def _result_loggers() -> list:
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    return [JsonLoggerCallback(), CSVLoggerCallback()]


def _finish(tracker, publisher, callback, status: str) -> str | None:
    """Publish the final Pareto front and close the parent run; the spool's path if MLflow is away."""
    callback.stop_progress()  # also when the fit failed: the terminal gets its cursor back
    try:
        # Waits for an absent server; one still away at the end gets the publish in the spool.
        publisher.final(callback.rows, wait_s=FINAL_FLUSH_WAIT_S)
    except Exception as exc:  # noqa: BLE001 - the candidates are logged; the front can be rebuilt
        console.print(f"[yellow]could not publish the Pareto artifacts ({exc}); rebuild them with mm4ke-ray pareto[/]")
    tracker.finish(status)
    if tracker.flush() and not tracker.pending:
        return None
    path = str(tracker.spool.path)
    console.print(f"[bold red]MLflow at {tracker.uri} did not answer:[/] {tracker.pending} record(s) are kept in "
                  f"{path}", soft_wrap=True)
    print_command(console, "  send them when it is back:", f"{executable('mm4ke-ray')} sweep --replay-spool {path}")
    return path
