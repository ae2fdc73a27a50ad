"""Benchmark — the demo's start-up by R-SFT runner (issue 28 §3): 'train' vs 'train-local'.

The demo sweep (`search_spaces/demo.yaml`: 8 trials x 5 candidates, model cached) on a fresh
local Ray per sweep (`bench_sweep.run_timed`: ray.init to shutdown), interleaved A B A B:
- 'train': a Ray Train trainer per trial, whose one worker is a fresh process (controller and
  worker group started per trial; `reuse_actors` keeps only Tune's trial process);
- 'train-local': Ray Train's local mode (`ScalingConfig(num_workers=0)`), R-SFT in the trial's
  own process, which Tune keeps for the next trial (imports paid once).
Measured per sweep: the wall; the share outside R-SFT + evaluation, 1 - (R-SFT + evaluation
seconds) / wall, as bench_sweep.py defines it; the sweep's own time table. The two runners must
give the same candidates and scores (R-SFT is seeded and deterministic on a CPU).

Goals (issue 17.3, restated in 28 §3): the demo sweep <= 90 s with the model cached, and its share
outside R-SFT + evaluation <= 0.4; the wall ratio local / train is stated.

    python benchmarks/bench_runner.py               # 2 x 2 sweeps of 8 trials -> results/runner.json
    python benchmarks/bench_runner.py --smoke-test  # 1 x 2 sweeps of 1 trial x 2 candidates
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import common
from bench_sweep import demo_config, run_timed

GOAL_WALL_S, GOAL_OUTSIDE = 90.0, 0.4
RUNNERS = ("train", "train-local")
SCORES = ("edit_score", "general_score", "combined_score")


def _scores(rows: list[dict]) -> list[tuple]:
    return sorted((r["kind"], r.get("alpha"), r.get("sparsity"), *(r.get(k) for k in SCORES)) for r in rows
                  if r.get("trial_id") is not None)


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=2, help="sweeps per runner, interleaved (default 2)")
    args = p.parse_args()
    common.setup(args)
    from mm4ke_ray.config import load_config

    demo = load_config(common.REPO / "search_spaces" / "demo.yaml")  # the demo's own size
    runs, trials, extra = (1, 1, 1) if args.smoke_test else (args.runs, demo.search.num_trials,
                                                             demo.merge.extra_candidates)
    work = Path(tempfile.mkdtemp(prefix="mm4ke-runner-"))
    results: dict[str, list[dict]] = {r: [] for r in RUNNERS}
    for i in range(runs):
        for runner in RUNNERS:
            measured = run_timed(demo_config(work, f"{runner.replace('-', '')}{i}", trials, extra, runner))
            print(f"{runner:12s} run {i}: wall {measured['wall_s']:.1f} s, outside R-SFT + evaluation "
                  f"{measured['outside_share']:.3f}, {measured['candidates']} candidates", flush=True)
            results[runner].append(measured)
    same = all(_scores(a["rows"]) == _scores(b["rows"]) for a, b in zip(*results.values(), strict=True))
    walls = {r: statistics.median(m["wall_s"] for m in ms) for r, ms in results.items()}
    shares = {r: statistics.median(m["outside_share"] for m in ms) for r, ms in results.items()}
    ratio = walls["train-local"] / walls["train"]
    print(f"median wall: train {walls['train']:.1f} s, train-local {walls['train-local']:.1f} s ({ratio:.2f}x); "
          f"same candidates and scores: {same}")
    goals = [
        common.goal_line("start-up: demo sweep wall, runner train-local (s)", walls["train-local"], GOAL_WALL_S,
                         higher_is_better=False),
        common.goal_line("start-up: demo sweep share outside R-SFT + evaluation, runner train-local",
                         shares["train-local"], GOAL_OUTSIDE, higher_is_better=False),
        {"goal": "start-up: same candidates and scores with runner train-local as with train", "measured": same, "target": True,
         "higher_is_better": True, "met": same},
    ]
    common.write_result("runner", args, {
        "runs": runs, "wall_s": walls, "outside_share": shares, "wall_ratio_local_vs_train": ratio,
        "same_candidates": same,
        "sweeps": {r: [{k: m[k] for k in ("wall_s", "outside_share", "candidates", "breakdown_s", "sweep_timings_s")}
                       for m in ms] for r, ms in results.items()},
        "goals": goals,
    })


if __name__ == "__main__":
    main()
