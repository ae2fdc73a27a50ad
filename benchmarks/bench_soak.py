"""Benchmark 10 — soak: a long demo sweep, bounded, with the driver measured trial by trial.

One sweep of N trials x 2 candidates (R-SFT `task` runner, one extra merge candidate) through
Tune, the merge-eval actor pool and MLflow in a SQLite file, at the demo's smallest settings:
2 edits, K = 2 steps, E = 1 epoch, teacher-forced edit metrics only, no lm-eval tasks (the
general objective is then locality), the demo's TPE sampler (its cost per draw grows with the
told points and is part of the driver's overhead measured here; random search refuses extra merge
candidates). The sweep runs in this process, so this process is the driver: after each finished trial it records its RSS (after `gc.collect()`) and the time.

Checks:
- driver RSS growth from trial `warm` to trial N (users of Ray Tune report driver memory that
  grows with the trial count); goal <= 10 % from trial 20 to trial 200;
- MLflow holds 2N finished candidate runs (+ the base) under the sweep's parent run, each once;
- the parent's pareto/all.csv holds them all and pareto/front.csv is exactly the non-dominated
  set of all.csv over the objectives;
- per-trial overhead does not grow: the driver's seconds per trial outside R-SFT and evaluation
  (finish-to-finish interval minus the trial's R-SFT and evaluation walls), median over the last
  block of trials vs an early block; goal <= 1.2x.

    python benchmarks/bench_soak.py               # N = 200
    python benchmarks/bench_soak.py --trials 100  # a shorter full run
    python benchmarks/bench_soak.py --smoke-test  # N = 8: counts and front asserted, RSS/overhead reported
"""

from __future__ import annotations

import csv
import gc
import statistics
import tempfile
import time
from pathlib import Path

import common
from bench_sweep import demo_config

FULL_TRIALS = 200
SMOKE_TRIALS = 8  # the fewest with an early and a last block
GOAL_RSS_GROWTH = 0.10
GOAL_OVERHEAD_RATIO = 1.2
SMALLEST = {  # the demo at its smallest: fixed R-SFT shape, two edits, no lm-eval
    "data.limit": 2,
    "evaluation.general_tasks": [],
    "evaluation.mode": "teacher-forced",
    "search.space.steps": {"choices": [2]},
    "search.space.epochs": {"choices": [1]},
}


def soak_config(workdir: Path, trials: int):
    config = demo_config(workdir, "soak", trials=trials, extra=1, runner="task", sampler="tpe")
    return config.with_overrides(**SMALLEST)


def record_driver(samples: list[dict]):
    """Wrap `SweepCallback._record` (it runs in the driver once per finished trial result) so each
    newly finished trial appends its number, the driver's RSS after gc, the time and its walls."""
    import psutil

    from mm4ke_ray.search.callback import SweepCallback

    original, process = SweepCallback._record, psutil.Process()

    def recording(self, trial, result):
        before, start = self.done, time.perf_counter()
        original(self, trial, result)  # MLflow runs of its candidates + the Pareto artifacts refreshed
        if self.done > before:
            now = time.perf_counter()
            gc.collect()
            samples.append({
                "trial": self.done, "t": now, "rss": process.memory_info().rss, "callback_s": now - start,
                "status": result.get("status"),
                "rsft_wall_s": float(result.get("rsft_wall_seconds") or 0.0),
                "eval_wall_s": float(result.get("eval_wall_seconds") or 0.0),
            })

    SweepCallback._record = recording
    return original


def run_soak(config) -> tuple[object, list[dict], float]:
    """The sweep on a fresh local Ray in this process; (outcome, per-trial samples, ray start s)."""
    import ray

    from mm4ke_ray.commands.sweep import start_sweep
    from mm4ke_ray.search.callback import SweepCallback

    samples: list[dict] = []
    original = record_driver(samples)
    ray_start = common.start_local_ray("rs")
    try:
        outcome = start_sweep(config)
    finally:
        ray.shutdown()
        SweepCallback._record = original
    return outcome, samples, ray_start


def _dominates(a: dict, b: dict, names) -> bool:
    diffs = [a[n] - b[n] for n in names]  # every objective is maximised
    return all(d >= 0 for d in diffs) and any(d > 0 for d in diffs)


def check_tracking(uri: str, parent_run_id: str, trials: int, dest: Path) -> dict:
    """MLflow's candidate runs and the parent's Pareto artifacts, against what they must hold."""
    from mlflow import MlflowClient

    from mm4ke_ray.evaluate.scores import OBJECTIVES

    assert all(o.higher_is_better for o in OBJECTIVES)
    client = MlflowClient(uri)
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id], f"tags.`mm4ke.role` = 'candidate' AND "
                              f"tags.`mm4ke.sweep_run_id` = '{parent_run_id}'",
                              max_results=10 * trials + 100)
    cands = [r for r in runs if r.data.tags.get("mm4ke.kind") != "base"]
    names = [r.data.tags.get("mm4ke.candidate", r.info.run_name) for r in cands]  # id tag, else run name
    finished = [r for r in cands if r.info.status == "FINISHED" and r.data.tags.get("mm4ke.status") == "ok"]

    def table(path: str) -> list[dict]:
        with open(client.download_artifacts(parent_run_id, path, str(dest))) as f:
            return list(csv.DictReader(f))

    all_rows, front_rows = table("pareto/all.csv"), table("pareto/front.csv")
    objectives = [o.name for o in OBJECTIVES]
    points = {r["candidate"]: {n: float(r[n]) for n in objectives} for r in all_rows}
    expected = sorted(c for c in points if not any(_dominates(points[o], points[c], objectives) for o in points))
    got = sorted(r["candidate"] for r in front_rows)
    return {
        "candidate_runs": len(cands), "candidate_runs_finished_ok": len(finished),
        "distinct_candidate_names": len(set(names)), "base_runs": len(runs) - len(cands),
        "expected_candidates": 2 * trials,
        "all_csv_rows": len(all_rows), "all_csv_candidates_match_mlflow":
            sorted(r["candidate"] for r in all_rows if r["candidate"] != "base") == sorted(names),
        "front_csv_rows": len(got), "front_equals_non_dominated_set": got == expected,
        "on_front_column_agrees": sorted(r["candidate"] for r in all_rows if r["on_front"] == "True") == expected,
    }


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def driver_figures(samples: list[dict], trials: int, warm: int, block: int) -> dict:
    """RSS growth from trial `warm` to the last; overhead per trial, last block vs early block."""
    by_trial = {s["trial"]: s for s in samples}
    rss_warm, rss_last = by_trial[warm]["rss"], by_trial[trials]["rss"]
    intervals = {s["trial"]: s["t"] - by_trial[s["trial"] - 1]["t"] for s in samples if s["trial"] - 1 in by_trial}
    overhead = {n: iv - by_trial[n]["rsft_wall_s"] - by_trial[n]["eval_wall_s"] for n, iv in intervals.items()}
    early_trials, last_trials = range(warm + 1, warm + 1 + block), range(trials - block + 1, trials + 1)
    early = [overhead[n] for n in early_trials if n in overhead]
    last = [overhead[n] for n in last_trials if n in overhead]
    marks = sorted({1, warm, *range(0, trials + 1, max(1, trials // 10)), trials} - {0})
    return {
        "warm_trial": warm, "block": block,
        "rss_mib_at": {str(n): by_trial[n]["rss"] / 2**20 for n in marks if n in by_trial},
        "rss_growth": rss_last / rss_warm - 1.0,
        "overhead_s_early_median": _median(early), "overhead_s_last_median": _median(last),
        "overhead_ratio": _median(last) / _median(early),
        "interval_s_early_median": _median([intervals[n] for n in early_trials if n in intervals]),
        "interval_s_last_median": _median([intervals[n] for n in last_trials if n in intervals]),
        # The driver's own share: the callback that logs a trial's candidates and refreshes pareto/.
        "callback_s_early_median": _median([by_trial[n]["callback_s"] for n in early_trials if n in by_trial]),
        "callback_s_last_median": _median([by_trial[n]["callback_s"] for n in last_trials if n in by_trial]),
        "per_trial": [{"trial": s["trial"], "rss_mib": round(s["rss"] / 2**20, 2),
                       "interval_s": round(intervals.get(s["trial"], float("nan")), 3),
                       "overhead_s": round(overhead.get(s["trial"], float("nan")), 3),
                       "callback_s": round(s["callback_s"], 3)} for s in samples],
    }


def main() -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=None, help=f"N (default {FULL_TRIALS}; {SMOKE_TRIALS} with --smoke-test)")
    args = p.parse_args()
    common.setup(args)
    from mm4ke_ray.demo.build import build_demo

    build_demo()  # cached after the first build; outside every timer
    trials = args.trials or (SMOKE_TRIALS if args.smoke_test else FULL_TRIALS)
    if trials < 8:
        p.error(f"--trials {trials}: the soak needs at least 8 trials (an early and a last block)")
    warm, block = (20, 20) if trials >= 100 else (max(2, trials // 10), max(3, trials // 10))
    workdir = Path(tempfile.mkdtemp(prefix="mm4ke-bench-soak-"))
    config = soak_config(workdir, trials)
    start = time.perf_counter()
    outcome, samples, ray_start = run_soak(config)
    wall = time.perf_counter() - start
    tracking = check_tracking(config.tracking.uri, outcome.parent_run_id, trials, workdir / "dl")
    figures = driver_figures(samples, trials, warm, block)
    print(f"soak: {trials} trials x 2 candidates in {wall:.0f} s ({wall / trials:.1f} s/trial); "
          f"driver RSS {figures['rss_mib_at'][str(warm)]:.0f} MiB at trial {warm}, "
          f"{figures['rss_mib_at'][str(trials)]:.0f} MiB at trial {trials} ({100 * figures['rss_growth']:+.1f}%); "
          f"overhead/trial {figures['overhead_s_early_median']:.2f} s early, {figures['overhead_s_last_median']:.2f} s last "
          f"(driver callback {figures['callback_s_early_median']:.2f} s, {figures['callback_s_last_median']:.2f} s)")
    print("  tracking: " + ", ".join(f"{k} {v}" for k, v in tracking.items()))
    counts_ok = (tracking["candidate_runs"] == tracking["candidate_runs_finished_ok"]
                 == tracking["distinct_candidate_names"] == 2 * trials and tracking["base_runs"] == 1
                 and tracking["all_csv_rows"] == 2 * trials + 1 and tracking["all_csv_candidates_match_mlflow"])
    pareto_ok = tracking["front_equals_non_dominated_set"] and tracking["on_front_column_agrees"]
    goals = [
        common.goal_line(f"driver RSS growth, trial {warm} -> {trials}", figures["rss_growth"], GOAL_RSS_GROWTH,
                         higher_is_better=False),
        common.goal_line(f"per-trial overhead, median of last {block} / trials {warm + 1}-{warm + block}",
                         figures["overhead_ratio"], GOAL_OVERHEAD_RATIO, higher_is_better=False),
        common.goal_line(f"MLflow and all.csv hold the {2 * trials} candidates once (1 = yes)",
                         float(counts_ok), 1.0),
        common.goal_line("front.csv = non-dominated set of all.csv (1 = yes)", float(pareto_ok), 1.0),
    ]
    common.write_result("soak", args, {
        "trials": trials, "candidates_per_trial": 2, "settings": SMALLEST, "sampler": "tpe", "runner": "task",
        "wall_s": wall, "ray_start_s": ray_start, "s_per_trial": wall / trials, "sweep_timings_s": outcome.timings,
        "tracking": tracking, "driver": figures, "goals": goals,
    })
    # Counts and the front are exact in every mode; RSS and overhead are bounded only by the goals above.
    assert len(samples) == trials, f"{len(samples)} trials finished, expected {trials}"
    assert counts_ok, tracking
    assert pareto_ok, tracking


if __name__ == "__main__":
    main()
