"""Benchmark 5 — search quality: the sweep's search (TPE) vs random search, and vs the whole grid.

A world where search matters (`search_world.py`): the demo world on a 4-block model, a space of
two decades of lr, τ, E, the block, α and sparsity, and an exhaustive grid over it (64 R-SFT
configurations x 12 merge points) run once by `search_grid.py` and cached in
`fixtures/search_grid.json`. Each search is replayed over that grid by `search_replay.replay`:
the product's own searcher (`CandidateAwareOptunaSearch`, `make_sampler`, start-up counted in
R-SFT runs, `merge_candidates` with 4 extra candidates, every candidate told), the grid's
measured objectives in place of training.

Measure: hypervolume of all candidates a search evaluated, objectives (edit_score,
general_score) maximised, reference point (base model's edit score, 0) fixed in advance: only
candidates that edit better than the unedited model count (with (0, 0) the base-like merges
alone cover 0.325 of the 0.99). Goals at a budget of 25% of the grid's R-SFT runs (16), 3 seeds:
- median per-seed HV(TPE) / HV(random) >= 1.1;
- median HV(TPE) / HV(grid) >= 0.95.
NSGA-II and GP are reported for information, and so is the search before this change
("tpe_points_startup": Optuna's TPE counting every told point toward its 4 start-up trials),
and the same medians over 10 seeds (3 seeds are noisy).

    python benchmarks/bench_search_quality.py               # 16 R-SFT runs x 3 seeds x 4 samplers
    python benchmarks/bench_search_quality.py --smoke-test  # 4 runs x 1 seed (plumbing only)
"""

from __future__ import annotations

import statistics
import time

import common
from search_replay import FIXTURE, grid_rows, load_grid, replay

GOAL_VS_RANDOM = 1.1
GOAL_VS_GRID = 0.95
BUDGET_FRACTION = 0.25
EXTRA = 4
SAMPLERS = ("tpe", "random", "nsga2", "gp")


def main() -> None:
    args = common.parser(__doc__.split("\n\n")[0]).parse_args()
    common.setup(args)
    from mm4ke_ray.evaluate.pareto_front import hypervolume

    doc = load_grid()
    all_rows = grid_rows(doc)
    reference = (doc["base"]["edit_score"], 0.0)
    grid_runs = len(doc["configs"])
    budget = max(1, int(grid_runs * BUDGET_FRACTION))
    smoke = args.smoke_test
    seeds, trials, samplers = ((0,), 4, ("tpe", "random")) if smoke else ((0, 1, 2), budget, SAMPLERS)
    grid_hv = hypervolume(all_rows, reference)
    print(f"grid: {grid_runs} R-SFT runs, {len(all_rows)} candidates, HV {grid_hv:.4f} (ref {reference})")
    steps = sorted({max(1, trials * k // 4) for k in (1, 2, 3, 4)})
    runs = []
    for seed in seeds:
        for sampler in samplers:
            start = time.perf_counter()
            r = replay(doc, sampler, seed, trials, EXTRA)
            rows = r["rows"]
            curve = {n: hypervolume([x for x in rows if x["trial"] < n], reference) for n in steps}
            runs.append({
                "sampler": sampler, "seed": seed, "rsft_runs": trials, "candidates": len(rows),
                "extra_points_told": r["extra_points_told"], "hypervolume": curve[trials],
                "hypervolume_ref_origin": hypervolume(rows, (0.0, 0.0)), "hypervolume_by_rsft_runs": curve,
                "layers": sorted({t["params"]["layer"] for t in r["trials"]}),
                "distinct_rsft_cells": len({tuple(x["cell"][k] for k in doc["grid"]) for x in rows}),
                "seconds": time.perf_counter() - start,
            })
            print(f"seed {seed} {sampler:6s}: HV {curve[trials]:.4f} ({curve[trials] / grid_hv:.1%} of the grid) "
                  f"by runs {', '.join(f'{n}: {v:.4f}' for n, v in curve.items())}; layers {runs[-1]['layers']}, "
                  f"{runs[-1]['distinct_rsft_cells']} grid cells")
    info = {} if smoke else _ten_seeds(doc, trials, reference, grid_hv)
    hv = {(x["sampler"], x["seed"]): x["hypervolume"] for x in runs}
    median = {s: statistics.median(hv[s, seed] for seed in seeds) for s in samplers}
    ratio_random = statistics.median(_ratio(hv["tpe", s], hv["random", s]) for s in seeds)
    ratio_grid = median["tpe"] / grid_hv if grid_hv > 0 else 0.0
    print(f"median HV at {trials} R-SFT runs: " + ", ".join(f"{s} {v:.4f}" for s, v in median.items())
          + f"; grid {grid_hv:.4f}")
    goals = [
        common.goal_line(f"hypervolume TPE / random at {trials} R-SFT runs, ref {reference}, "
                         f"median of {len(seeds)} seeds (x)", ratio_random, GOAL_VS_RANDOM),
        common.goal_line(f"hypervolume TPE / grid ({grid_runs} R-SFT runs) at {trials} R-SFT runs "
                         f"({trials / grid_runs:.0%} of the grid's), median of {len(seeds)} seeds (x)",
                         ratio_grid, GOAL_VS_GRID),
    ]
    common.write_result("search_quality", args, {
        "reference_point": reference, "objectives": doc["objectives"],
        "setup": {"rsft_runs": trials, "extra_candidates": EXTRA, "seeds": list(seeds), "samplers": list(samplers),
                  "fixture": str(FIXTURE.relative_to(common.REPO)), "grid": doc["grid"],
                  "merge_grid": doc["merge_grid"], "grid_rsft_runs": grid_runs, "grid_candidates": len(all_rows),
                  "world": doc["world"]},
        "grid_hypervolume": grid_hv, "median_hypervolume": median, "median_ratio_vs_random": ratio_random,
        "median_ratio_vs_grid": ratio_grid, "ten_seeds_share_of_grid": info, "runs": runs, "goals": goals,
    })


def points_startup_tpe(search, points_per_trial=1):
    """The sampler before issue 12: TPE whose 4 start-up trials are counted in told points."""
    import optuna

    return optuna.samplers.TPESampler(seed=search.seed, multivariate=True, constant_liar=True, n_startup_trials=4)


def _ten_seeds(doc: dict, trials: int, reference, grid_hv: float) -> dict:
    """Information: median share of the grid's hypervolume over 10 seeds, per search."""
    from mm4ke_ray.evaluate.pareto_front import hypervolume

    out = {}
    for name, sampler, make in (("tpe", "tpe", None), ("random", "random", None), ("gp", "gp", None),
                                ("nsga2", "nsga2", None), ("tpe_points_startup", "tpe", points_startup_tpe)):
        shares = [hypervolume(replay(doc, sampler, seed, trials, EXTRA, make_sampler=make)["rows"], reference) / grid_hv
                  for seed in range(10)]
        out[name] = {"median": statistics.median(shares), "min": min(shares), "max": max(shares)}
        print(f"10 seeds, {name:18s}: median {out[name]['median']:.1%} of the grid's HV "
              f"(min {out[name]['min']:.1%}, max {out[name]['max']:.1%})", flush=True)
    return out


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("inf") if a > 0 else 1.0


if __name__ == "__main__":
    main()
