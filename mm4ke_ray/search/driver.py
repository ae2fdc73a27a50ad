"""The sweep driver: preflight, Ray, the merge-eval pool, Tune + Optuna, MLflow, the summary."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from rich.console import Console

from mm4ke_ray.config import DEMO, SweepConfig
from mm4ke_ray.evaluate.candidate import EvalSettings
from mm4ke_ray.evaluate.scores import COMBINED, OBJECTIVES
from mm4ke_ray.preflight import preflight

console = Console(stderr=True)


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
        device=device,
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


def _storage(path: str) -> str:
    return path if "://" in path else str(Path(path).expanduser().resolve())


def run_sweep(config: SweepConfig, *, source: str = "<config>", address: str | None = None,
              num_trials: int | None = None, smoke_test: bool = False) -> SweepOutcome:
    """Run a whole sweep and return its candidates; everything is also in MLflow."""
    import ray
    from ray import tune

    from mm4ke_ray.search.actors import start_pool
    from mm4ke_ray.search.callback import SweepCallback
    from mm4ke_ray.search.pareto import pareto_front
    from mm4ke_ray.search.resources import plan_resources
    from mm4ke_ray.search.searcher import CandidateAwareOptunaSearch
    from mm4ke_ray.search.space import make_sampler, split_space
    from mm4ke_ray.search.trial import TRIAL_CPUS, TrialContext, sweep_trial
    from mm4ke_ray.tracking.mlflow_tracker import SweepTracker
    from mm4ke_ray.tracking.pareto_artifacts import ParetoPublisher

    start = time.time()
    if smoke_test:
        config = config.with_overrides(**{"search.num_trials": 4, "merge.extra_candidates": max(2, min(3, config.merge.extra_candidates))})
    if num_trials:
        config = config.with_overrides(**{"search.num_trials": num_trials})
    preflight(config, source)
    config = resolve_demo(config)
    preflight(config, source)

    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    cluster = ray.cluster_resources()
    plan = plan_resources(config.resources, cluster)
    device = "cuda" if config.resources.eval_gpus > 0 else "cpu"

    # A tracking server keeps artifacts where its --artifacts-destination says, unless the
    # config names a location explicitly; a local path would land on the driver's own disk.
    location = config.tracking.artifact_location
    if config.tracking.uri.startswith(("http://", "https://")) and "artifact_location" not in config.tracking.model_fields_set:
        location = None
    tracker = SweepTracker(config.tracking.uri, config.tracking.experiment, location)
    config_yaml = yaml.safe_dump(config.model_dump(), sort_keys=False)
    parent = tracker.start_sweep(
        config.name,
        params={"protocol": config.evaluation.protocol, "prompt_format": config.data.prompt_format,
                "model": config.model.name, "edits": config.data.edits, "num_trials": config.search.num_trials,
                "sampler": config.search.sampler, "merge_method": config.merge.method,
                "extra_candidates": config.merge.extra_candidates, "seed": config.search.seed,
                "eval_actors": plan.actors, "max_concurrent": plan.max_concurrent},
        tags={"mm4ke.git_revision": _git_revision(), "mm4ke.protocol": config.evaluation.protocol,
              "mm4ke.prompt_format": config.data.prompt_format,
              **{f"mm4ke.version.{k}": v for k, v in _versions().items()}},
    )
    tracker.client.log_text(parent, config_yaml, "config.yaml")
    console.print(f"[bold]sweep {config.name}[/]: {config.search.num_trials} trials, {plan.actors} merge-eval actor(s), "
                  f"{plan.max_concurrent} trial(s) at once · MLflow run {parent}")

    settings = eval_settings(config, device)
    actors, reference = start_pool(settings, plan.actors, config.resources.eval_cpus, config.resources.eval_gpus,
                                   config.resources.eval_resource)
    base = {"candidate": "base", "kind": "base", **reference.metrics}
    tracker.log_candidate("base", {"alpha": None}, reference.metrics, {"mm4ke.kind": "base", "mm4ke.status": "ok"})

    searched, fixed = split_space(config.search)
    searcher = CandidateAwareOptunaSearch(
        space=searched, metric=[o.name for o in OBJECTIVES], mode=[o.mode for o in OBJECTIVES],
        sampler=make_sampler(config.search),
    )
    storage = _storage(config.storage_path)
    ctx = TrialContext(
        settings=eval_settings(config, "cpu"), search=config.search, extra_candidates=config.merge.extra_candidates,
        runner=config.search.rsft.runner, rsft_cpus=config.resources.rsft_cpus, rsft_gpus=config.resources.rsft_gpus,
        storage_path=storage, actors=tuple(actors),
    )
    publisher = ParetoPublisher(tracker, base, every=3)
    callback = SweepCallback(tracker, config.search.num_trials, on_rows=publisher)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Tune's CSV/TensorBoard loggers cannot hold the per-candidate list; MLflow is the record.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(sweep_trial, ctx=ctx), {"CPU": TRIAL_CPUS}),
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=config.search.num_trials,
                                    max_concurrent_trials=plan.max_concurrent),
        run_config=tune.RunConfig(name=config.name, storage_path=storage, callbacks=[callback], verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=config.max_failures)),
    )
    status = "FAILED"
    try:
        grid = tuner.fit()
        publisher.final(callback.rows)
        status = "FINISHED"
    finally:
        tracker.finish(status)
    rows = callback.rows
    front_idx = pareto_front([base, *rows])
    front = [([base, *rows])[i] for i in front_idx]
    rsft_runs = sum(1 for r in grid if r.metrics and r.metrics.get("status"))
    outcome = SweepOutcome(parent, rows, base, front, len(searcher.study.trials), searcher.extra_points_told,
                           rsft_runs, storage, time.time() - start)
    _print_summary(outcome, config)
    return outcome


def _print_summary(out: SweepOutcome, config: SweepConfig) -> None:
    from rich.table import Table

    table = Table(title=f"Pareto front of {config.name} ({len(out.rows)} candidates, {out.rsft_runs} R-SFT runs)")
    cols = ["candidate", "kind", "layer", "lr", "alpha", "sparsity", "edit_succ", "generalization", "portability",
            "locality", *[o.name for o in OBJECTIVES], COMBINED.name]
    for c in cols:
        table.add_column(c)
    pure = [r for r in out.rows if r.get("kind") == "pure_rsft"]
    best_pure = max(pure, key=lambda r: r.get(COMBINED.name, 0)) if pure else None
    shown = [out.base, *([best_pure] if best_pure and best_pure not in out.front else []),
             *sorted([r for r in out.front if r is not out.base], key=lambda r: -r.get(COMBINED.name, 0))]
    for r in shown:
        table.add_row(*[_fmt(r.get(c)) for c in cols])
    out = Console()
    (out if out.is_terminal else Console(width=200)).print(table)
    uri = config.tracking.uri
    console.print(f"[bold]Open MLflow:[/] mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
                  if uri.startswith("sqlite") else f"[bold]MLflow:[/] {uri}")


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
