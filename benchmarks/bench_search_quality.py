"""Benchmark 5 — search quality: Optuna TPE (multi-objective) vs random search on the demo.

The demo sweep (`search_spaces/demo.yaml`: 2 objectives, edit_score and general_score, both
maximised, each in [0, 1]) run with `search.sampler: tpe` and `search.sampler: random`, the same
number of trials and the same extra merge candidates per trial, for 3 seeds. The measure is the
hypervolume dominated by all candidates a sweep evaluated (the base model not included), with the
reference point (0, 0) fixed in advance: the natural origin of two [0, 1] scores. Goal: median
over seeds of HV(TPE) / HV(random) >= 1.1. Also reported, for information only, the hypervolume
above the base model's edit score (reference (base edit_score, 0)), where the gains of an edit
show more plainly.

    python benchmarks/bench_search_quality.py               # 10 trials x 3 seeds x 2 samplers
    python benchmarks/bench_search_quality.py --smoke-test  # 1 trial x 1 seed x 2 samplers (plumbing only)
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import common
from bench_sweep import demo_config, run_timed

GOAL = 1.1
REFERENCE = (0.0, 0.0)
SAMPLERS = ("tpe", "random")


def main() -> None:
    args = common.parser(__doc__.split("\n\n")[0]).parse_args()
    common.setup(args)
    from mm4ke_ray.demo.build import build_demo
    from mm4ke_ray.evaluate.pareto import hypervolume, pareto_front

    build_demo()  # cached; outside every timer
    smoke = args.smoke_test
    trials, seeds, extra = (1, (0,), 1) if smoke else (10, (0, 1, 2), 4)
    workdir = Path(tempfile.mkdtemp(prefix="mm4ke-bench-quality-"))
    runs = []
    for seed in seeds:
        for sampler in SAMPLERS:
            r = run_timed(demo_config(workdir, f"{sampler}-s{seed}", trials, extra, "task", sampler=sampler, seed=seed))
            base_edit = r["base"]["edit_score"]
            front = [r["rows"][i] for i in pareto_front(r["rows"])]
            runs.append({
                "sampler": sampler, "seed": seed, "trials": r["trials"], "candidates": r["candidates"],
                "wall_s": r["wall_s"], "hypervolume": hypervolume(r["rows"], REFERENCE),
                "hypervolume_above_base_edit": hypervolume(r["rows"], (base_edit, 0.0)),
                "base": {k: r["base"].get(k) for k in ("edit_score", "general_score")},
                "front": [{k: f.get(k) for k in ("layer", "lr", "epochs", "steps", "threshold", "alpha", "sparsity",
                                                 "edit_score", "general_score")} for f in front],
                "best_combined": max(x.get("combined_score", 0.0) for x in r["rows"]),
            })
            print(f"seed {seed} {sampler:6s}: HV {runs[-1]['hypervolume']:.4f} "
                  f"(above base edit {runs[-1]['hypervolume_above_base_edit']:.4f}), "
                  f"{r['candidates']} candidates in {r['wall_s']:.0f} s")
    per_seed = {}
    for seed in seeds:
        hv = {x["sampler"]: x for x in runs if x["seed"] == seed}
        per_seed[seed] = {
            "ratio": _ratio(hv["tpe"]["hypervolume"], hv["random"]["hypervolume"]),
            "ratio_above_base_edit": _ratio(hv["tpe"]["hypervolume_above_base_edit"],
                                            hv["random"]["hypervolume_above_base_edit"]),
        }
    median = {s: statistics.median(x["hypervolume"] for x in runs if x["sampler"] == s) for s in SAMPLERS}
    median_ratio = statistics.median(v["ratio"] for v in per_seed.values())
    median_ratio_base = statistics.median(v["ratio_above_base_edit"] for v in per_seed.values())
    print(f"median HV: tpe {median['tpe']:.4f}, random {median['random']:.4f}; median per-seed ratio "
          f"{median_ratio:.3f} (above base edit: {median_ratio_base:.3f})")
    goals = [common.goal_line(f"hypervolume TPE / random, ref {REFERENCE}, median of {len(seeds)} seeds (x)",
                              median_ratio, GOAL)]
    common.write_result("search_quality", args, {
        "reference_point": REFERENCE, "objectives": ["edit_score", "general_score"],
        "setup": {"trials": trials, "extra_candidates": extra, "seeds": list(seeds), "runner": "task",
                  "config": "search_spaces/demo.yaml"},
        "median_hypervolume": median, "median_ratio": median_ratio,
        "median_ratio_above_base_edit": median_ratio_base, "per_seed": per_seed, "runs": runs, "goals": goals,
    })


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("inf") if a > 0 else 1.0


if __name__ == "__main__":
    main()
