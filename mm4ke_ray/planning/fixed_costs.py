"""The sweep's fixed costs, fitted from the demo sweep benchmark measured on this machine.

`benchmarks/results/sweep.json` holds, per R-SFT runner, two demo sweeps ("ours": T trials x
8 candidates; "naive": 8T trials x 1 candidate) with their wall time split into Ray start,
R-SFT start-up, R-SFT compute, evaluation and the rest (driver, Tune, MLflow, pool start). The
two sweeps differ in trial count at the same candidate count, which separates what the rest
costs per trial (a Tune actor, a checkpoint, the trial's MLflow runs) from what it costs once
per sweep. These are costs of Ray, Tune and MLflow on this machine, not of the model; on a
cluster they are small next to a 7B trial, and the plan shows them as their own line.
The per-sweep part includes the demo's own pool start (~3 s), which the plan also counts from
the probe: a demo plan errs that much high. `plan --probe` replaces Ray's start and a trial's
start-up with figures measured at the load of the moment (`ray_probe.py`).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from mm4ke_ray.errors import UserError

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


@dataclass(frozen=True)
class FixedCosts:
    ray_start_s: float  # a local `ray.init` (median of the benchmark's sweeps)
    trial_startup_s: dict[str, float]  # per trial, by runner: worker start + model/data load (demo model)
    driver_per_trial_s: dict[str, float]  # per trial, by runner: Tune actor, checkpoint, MLflow runs
    driver_per_sweep_s: float  # once: merge-eval pool start, the MLflow parent run, Tune's start and end
    dispatch_per_candidate_s: float  # a candidate's trip to an actor and back, beyond its evaluation
    basis: str
    probed: bool = False  # Ray start and trial start-up measured now (`ray_probe.py`), not the benchmark's

    def as_json(self) -> dict:
        return asdict(self)


def _run(runs: dict, runner: str, which: str, path: Path) -> dict:
    try:
        run = runs[runner][which]
        run["breakdown_s"], run["trials"], run["candidates"]  # noqa: B018 - the fields the fit needs
    except (KeyError, TypeError):
        raise UserError(f"{path}: no runs.{runner}.{which} with breakdown_s, trials and candidates; "
                        "rerun python benchmarks/bench_sweep.py") from None
    return run


def load_fixed_costs(path: Path | None = None) -> FixedCosts:
    """Fit the fixed costs from a sweep benchmark result (default: this checkout's sweep.json)."""
    path = Path(path) if path else RESULTS / "sweep.json"
    if not path.is_file():
        raise UserError(f"{path}: no sweep benchmark result; run python benchmarks/bench_sweep.py first")
    data = json.loads(path.read_text())
    runs = data.get("runs") or {}
    startup, per_trial, per_sweep, ray_start, dispatch = {}, {}, [], [], []
    for runner in runs:
        ours, naive = _run(runs, runner, "ours", path), _run(runs, runner, "naive", path)
        b_ours, b_naive = ours["breakdown_s"], naive["breakdown_s"]
        # The "ours" sweep is shaped like a real one (many candidates per delta); the naive one's 8x as
        # many short trials ran back to back, which this machine's other jobs slowed differently.
        startup[runner] = b_ours["rsft_startup"] / ours["trials"]
        extra_trials = naive["trials"] - ours["trials"]
        slope = (b_naive["driver_tune_mlflow"] - b_ours["driver_tune_mlflow"]) / extra_trials if extra_trials else 0.0
        per_trial[runner] = max(0.0, slope)
        per_sweep.append(max(0.0, b_ours["driver_tune_mlflow"] - per_trial[runner] * ours["trials"]))
        for run in (ours, naive):
            ray_start.append(run["breakdown_s"]["ray_start"])
            dispatch.append(run["breakdown_s"].get("eval_dispatch", 0.0) / max(1, run["candidates"]))
    if not startup:
        raise UserError(f"{path}: no runs; rerun python benchmarks/bench_sweep.py")
    machine = data.get("machine", {})
    # A runner measured on its own later (bench_sweep.py --runners) carries its own date.
    dates = {r: str(runs[r].get("date") or machine.get("date", "?"))[:10] for r in startup}
    by_date = {d: [r for r in sorted(startup) if dates[r] == d] for d in sorted(set(dates.values()))}
    basis = (f"{path.name}: demo sweeps on {machine.get('cpu_count', '?')} CPUs of "
             + "; ".join(f"{d} (runners {', '.join(rs)})" for d, rs in by_date.items()))
    return FixedCosts(
        ray_start_s=statistics.median(ray_start), trial_startup_s=startup, driver_per_trial_s=per_trial,
        driver_per_sweep_s=statistics.mean(per_sweep), dispatch_per_candidate_s=statistics.mean(dispatch),
        basis=basis,
    )
