"""A finished sweep: its `SweepOutcome` (candidates, front, counts, timings) and the summary
printed at its end (the same table and count sentence as `mm4ke-ray pareto`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rich.console import Console

from mm4ke_ray.config import SweepConfig
from mm4ke_ray.evaluate.pareto_front import pareto_front, sort_by_combined
from mm4ke_ray.search.constraints import minimums
from mm4ke_ray.search.searcher import EXTRA_ATTR, WARM_ATTR
from mm4ke_ray.search.timings import print_breakdown
from mm4ke_ray.tracking.query import ui_runs_url
from mm4ke_ray.tracking.tables import (
    counts_line,
    executable,
    print_command,
    print_table,
    reference_rows,
)
from mm4ke_ray.tracking.ui_command import absolute_store_uri, ui_command

console = Console(stderr=True)


@dataclass
class SweepOutcome:
    """What `run_sweep` and `resume_sweep` return; everything is also in MLflow."""

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
    timings: dict = field(default_factory=dict)  # wall seconds per step (search/timings.py CATEGORIES)
    warm_rows: list[dict] = field(default_factory=list)  # earlier sweeps' candidates (--warm-start), on the front too
    warm_points_told: int = 0  # of them, told to the study
    config: SweepConfig | None = None  # the sweep's config as it ran (a resume: the manifest's)


def sweep_outcome(run, rows, base, grid, searcher, spool) -> SweepOutcome:
    """What the sweep found and cost, from its run state (driver.SweepRun), Tune's result grid and
    the study."""
    everything = [base, *run.warm_rows, *rows]  # the front starts from the earlier sweeps' (--warm-start)
    front = [everything[i] for i in pareto_front(everything, minimums(run.config.objectives))]  # feasible only
    rsft_runs = sum(1 for r in grid if r.metrics and r.metrics.get("status"))
    trials = searcher.study.get_trials(deepcopy=False)
    warm = sum(1 for t in trials if WARM_ATTR in t.user_attrs)
    extra = sum(1 for t in trials if EXTRA_ATTR in t.user_attrs and WARM_ATTR not in t.user_attrs)
    breakdown = run.timings.breakdown(time.perf_counter() - run.clock, [r.metrics for r in grid])
    return SweepOutcome(run.parent, rows, base, front, len(trials), extra, rsft_runs, run.storage,
                        time.time() - run.start, run.experiment_dir, spool, run.resumed,
                        mlflow_spooled=run.tracker.spooled, timings=breakdown, warm_rows=list(run.warm_rows),
                        warm_points_told=warm, config=run.config)


def print_summary(out: SweepOutcome) -> None:
    """The front table, the time breakdown and how to open MLflow and this front."""
    config = out.config
    # The same table and count sentence as `mm4ke-ray pareto`; base / pure R-SFT rows set apart.
    front = sort_by_combined(out.front)
    counts = counts_line(len(front), len(out.rows) + len(out.warm_rows), warm=len(out.warm_rows))
    print_table(front, f"Pareto front of {config.name}: {counts} ({out.rsft_runs} R-SFT runs)",
                references=reference_rows([out.base, *out.warm_rows, *out.rows], front),
                edit_mode=config.edit_mode)
    print_breakdown(console, out.timings)
    uri = config.tracking.uri
    if uri.startswith("sqlite"):
        print_command(console, "[bold]Open MLflow:[/]", ui_command(executable("mlflow"), uri))
        if url := ui_runs_url(uri, out.parent_run_id):
            print_command(console, "  then open", url)
        # by run id: a later sweep of the same config shares the name (`--sweep NAME` then refuses)
        store = absolute_store_uri(uri)
        print_command(console, "[bold]This sweep's front:[/]",
                      f"{executable('mm4ke-ray')} pareto --tracking-uri {store} --sweep {out.parent_run_id}")
    else:
        console.print(f"[bold]MLflow:[/] {uri}")
