"""Benchmark 4 — sweep throughput on the demo: delta reuse + actor pool vs R-SFT per candidate.

Ours: the demo sweep (`search_spaces/demo.yaml`), T trials, each one R-SFT run whose delta is
evaluated as 8 merge candidates on the resident-model actor pool (`merge.extra_candidates: 7`).
Naive: the same sweep machinery with one candidate per R-SFT run (`extra_candidates: 0`), 8T
trials: the same number of candidates, each paying for its own R-SFT. Candidates per minute of
wall time, each sweep on a fresh local Ray (2 CPUs; `ray.init` counted in the wall time).
Run for the R-SFT runners: `task` (a plain Ray task), `train` (a Ray Train TorchTrainer per
trial, ~15-25 s of start-up each on this machine) and `train-local` (Ray Train's local mode in
the trial's own process, the demo's runner). The planner fits its fixed costs per runner from
this file (`planning/fixed_costs.py`).

Also the share of our sweep's wall time spent outside R-SFT and evaluation (Ray start, Train or
task start-up, model loads, Tune, MLflow): 1 - (sum of R-SFT seconds + sum of candidate
evaluation seconds) / wall. On 2 CPUs the plan runs one trial at a time and one actor, so the
two never overlap and the sum is a union.

    python benchmarks/bench_sweep.py               # T = 4 (task), T = 2 (train), T = 4 (train-local)
    python benchmarks/bench_sweep.py --runners train-local   # that runner again; the others kept
    python benchmarks/bench_sweep.py --smoke-test  # 1 trial x 2 candidates vs 2 trials, task only
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import common

GOAL_THROUGHPUT = 3.0
GOAL_OVERHEAD = 0.15
CANDIDATES_PER_RSFT = 8
TRIALS = {"task": 4, "train": 2, "train-local": 4}  # R-SFT runs of "ours" per runner (naive: 8x as many)


def demo_config(workdir: Path, name: str, trials: int, extra: int, runner: str, sampler: str = "tpe", seed: int = 0):
    """demo.yaml with a private MLflow database and storage under `workdir`."""
    from mm4ke_ray.config import load_config

    config = load_config(common.REPO / "search_spaces" / "demo.yaml")
    return config.with_overrides(**{
        "name": name, "search.num_trials": trials, "merge.extra_candidates": extra,
        "search.rsft.runner": runner, "search.sampler": sampler, "search.seed": seed,
        "tracking.uri": f"sqlite:///{workdir}/{name}.db", "tracking.experiment": name,
        "tracking.artifact_location": str(workdir / f"{name}-artifacts"),
        "storage_path": str(workdir / f"{name}-ray"),
    })


def run_timed(config) -> dict:
    """One sweep on a fresh local Ray; wall time includes `ray.init` and shutdown."""
    import ray

    from mm4ke_ray.commands.sweep import start_sweep as run_sweep

    start = time.perf_counter()
    common.start_local_ray("rb")
    ray_start = time.perf_counter() - start
    try:
        outcome = run_sweep(config)
    finally:
        ray.shutdown()
    wall = time.perf_counter() - start
    rows = outcome.rows
    rsft = {r["trial_id"]: r.get("rsft_seconds") or 0.0 for r in rows}
    rsft_s = sum(rsft.values())
    eval_s = sum(r.get("eval_seconds") or 0.0 for r in rows)
    trial_walls = _trial_walls(Path(outcome.storage) / config.name)
    rsft_wall = sum(t.get("rsft_wall_seconds", 0.0) for t in trial_walls)
    eval_wall = sum(t.get("eval_wall_seconds", 0.0) for t in trial_walls)
    breakdown = {  # seconds; sums to the wall time
        "ray_start": ray_start,
        "rsft_compute": rsft_s,
        "rsft_startup": rsft_wall - rsft_s,  # task/Train start, model + data load, delta hand-over
        "eval_compute": eval_s,
        "eval_dispatch": eval_wall - eval_s,  # delta to the actor, queueing, results back
        "driver_tune_mlflow": wall - ray_start - rsft_wall - eval_wall,  # pool start, Tune, MLflow, ...
    }
    return {
        "trials": len(rsft), "candidates": len(rows), "wall_s": wall, "ray_start_s": ray_start,
        "run_sweep_s": outcome.seconds, "rsft_s": rsft_s, "eval_s": eval_s,
        "candidates_per_min": 60.0 * len(rows) / wall,
        "outside_share": 1.0 - (rsft_s + eval_s) / wall, "breakdown_s": breakdown,
        # The sweep's own "where its time went" figures (search/timings.py), as it prints them.
        "sweep_timings_s": outcome.timings,
        "front": outcome.front, "rows": rows, "base": outcome.base,
    }


def _trial_walls(experiment: Path) -> list[dict]:
    """Each trial's last reported result (rsft_wall_seconds, eval_wall_seconds) from Tune's files."""
    out = []
    for path in experiment.glob("*/result.json"):
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        if lines:
            out.append(json.loads(lines[-1]))
    return out


def _brief(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in ("rows", "front", "base")}


def compare(workdir: Path, runner: str, trials: int, per_rsft: int) -> dict:
    ours = run_timed(demo_config(workdir, f"ours-{runner}", trials, per_rsft - 1, runner))
    naive = run_timed(demo_config(workdir, f"naive-{runner}", trials * per_rsft, 0, runner))
    ratio = ours["candidates_per_min"] / naive["candidates_per_min"]
    print(f"runner {runner}: ours {ours['candidates_per_min']:.1f} candidates/min "
          f"({ours['candidates']} in {ours['wall_s']:.0f} s), naive {naive['candidates_per_min']:.1f} "
          f"({naive['candidates']} in {naive['wall_s']:.0f} s): {ratio:.2f}x; "
          f"ours outside R-SFT+eval {100 * ours['outside_share']:.0f}%")
    print("  ours, seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in ours["breakdown_s"].items()))
    print("  ours, the sweep's own table: " + ", ".join(f"{k} {v:.1f}" for k, v in ours["sweep_timings_s"].items()))
    return {"ours": _brief(ours), "naive": _brief(naive), "throughput_ratio": ratio}


def paper_scale(ours: dict) -> dict:
    """The same fixed costs next to a paper-scale trial, by arithmetic (stated assumptions)."""
    fixed_per_sweep = ours["ray_start_s"] + 10.0  # Ray start + pool start/reference (~10 s, generous)
    per_trial_overhead = max(0.0, (ours["wall_s"] - ours["rsft_s"] - ours["eval_s"] - fixed_per_sweep) / ours["trials"])
    train_startup = 25.0  # Ray Train start-up per trial seen on this machine (upper end)
    model_load = 60.0  # loading a 7B model in bf16 from local NVMe into a GPU worker, per trial
    # R-SFT at the paper's scale: 1,000+ ZsRE edits x E=5 x K<=6 -> ~15,000 steps (with early
    # stopping about half of 30,000), batch 1 on a 7B model at ~8 steps/s on one H100.
    rsft = 15_000 / 8.0
    evals = 8 * 60.0  # 8 candidates, ~60 s each (edit metrics on 1,000 records + lm-eval tasks)
    overhead = per_trial_overhead + train_startup + model_load
    return {
        "assumptions": {"rsft_steps": 15_000, "steps_per_s": 8.0, "candidate_eval_s": 60.0,
                        "train_startup_s": train_startup, "model_load_s": model_load,
                        "demo_per_trial_overhead_s": per_trial_overhead, "fixed_per_sweep_s": fixed_per_sweep},
        "trial_s": rsft + evals + overhead,
        "outside_share_per_trial": overhead / (rsft + evals + overhead),
    }


def _kept_runs(args) -> dict:
    """The runs of an earlier full result, for a benchmark of some runners only."""
    path = (args.out or common.RESULTS) / "sweep.json"
    if not path.is_file():
        return {}
    doc = json.loads(path.read_text())
    date = doc.get("machine", {}).get("date")
    return {r: {"date": date, **run} for r, run in (doc.get("runs") or {}).items()}


def main() -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--runners", nargs="+", choices=list(TRIALS), default=list(TRIALS),
                   help="runners to measure (default all); the others' results in results/sweep.json are kept")
    args = p.parse_args()
    common.setup(args)
    from mm4ke_ray.demo.build import build_demo

    assets = build_demo()  # cached after the first build; outside every timer
    workdir = Path(tempfile.mkdtemp(prefix="mm4ke-bench-sweep-"))
    if args.smoke_test:
        runs = {"task": compare(workdir, "task", trials=1, per_rsft=2)}
    else:
        kept, runs = _kept_runs(args), {}
        for r in TRIALS:  # in this order, measured or kept
            if r in args.runners:
                runs[r] = {**compare(workdir, r, trials=TRIALS[r], per_rsft=CANDIDATES_PER_RSFT),
                           "date": common.machine()["date"]}
            elif r in kept:
                runs[r] = kept[r]
    goals = []
    for runner, r in runs.items():
        goals.append(common.goal_line(f"sweep throughput, runner {runner} (x, candidates/min vs naive)",
                                      r["throughput_ratio"], GOAL_THROUGHPUT))
        goals.append(common.goal_line(f"share of wall time outside R-SFT + eval, runner {runner}",
                                      r["ours"]["outside_share"], GOAL_OVERHEAD, higher_is_better=False))
    scale = paper_scale(runs["task"]["ours"])
    print(f"  at the paper's scale (arithmetic): outside share per trial ~{100 * scale['outside_share_per_trial']:.1f}%")
    common.write_result("sweep", args, {
        "demo": {"model_dir": str(assets.model_dir), "manifest": assets.manifest.get("model", {})},
        "candidates_per_rsft": 2 if args.smoke_test else CANDIDATES_PER_RSFT,
        "runs": runs, "paper_scale": scale, "goals": goals,
    })


if __name__ == "__main__":
    main()
