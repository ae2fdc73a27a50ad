"""Benchmark — samplers and the per-delta surrogate, replayed over a tabulated benchmark (issue 24).

The table (`build_real_table.py`: SmolLM2-135M-Instruct, real ZsRE edits, WikiText-2; per R-SFT
configuration × 6 α × 6 sparsity) is replayed by `table_replay.replay`: the product's own
searcher and samplers, the table's measured objectives in place of training. Hypervolume of every
candidate a search evaluated, reference point (base model's edit score, 0), as
bench_search_quality.py.

§2, samplers: random, TPE, GP, NSGA-II (the product's `search.sampler`s) and Optuna's own plain
TPE, GP, QMC and NSGA-III, 10 seeds, hypervolume at 8 / 16 / 32 R-SFT runs and at 25 % of the
table's runs, as a ratio to random (median of per-seed ratios) and to the table's own front.
Goals: the default sampler (TPE) >= 1.1x random and >= 0.95 of the table front at <= 25 % of its
R-SFT runs.

§3, surrogate: per delta of the table, the share of its exhaustive 6 × 6 hypervolume that
`merge.candidates surrogate` finds with <= 8 merges (goal >= 0.97); and the sweep's front with
the surrogate (8 merges per R-SFT run) vs evaluating every merge of each run (goal >= 0.98 at
<= 30 % of the merge evaluations).

    python benchmarks/bench_table_search.py                       # benchmarks/results/real_table
    python benchmarks/bench_table_search.py --table DIR --seeds 3
    python benchmarks/bench_table_search.py --smoke-test          # a synthetic table, seconds
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import common
from table_replay import (
    EXTRA_SAMPLERS,
    OBJECTIVE_PAIRS,
    load_table,
    replay,
    synthetic_table,
    table_rows,
)

PRODUCT_SAMPLERS = ("random", "tpe", "gp", "nsga2")
DEFAULT = "tpe"
EXTRA = 4  # the product's default merge.extra_candidates
BUDGETS = (8, 16, 32)
GOAL_VS_RANDOM, GOAL_VS_FRONT, BUDGET_FRACTION = 1.1, 0.95, 0.25
GOAL_DELTA_SHARE, SURROGATE_BUDGET = 0.97, 8
GOAL_SWEEP_SHARE, GOAL_MERGE_FRACTION = 0.98, 0.30
MIN_CONFIGS = 12  # fewer complete R-SFT configurations: a partial table, samplers not replayed
TABLE = common.REPO / "benchmarks" / "results" / "real_table"


def arguments():
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--table", type=Path, default=TABLE, help="table folder (meta.json + table.jsonl)")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--objectives", default="product", choices=sorted(OBJECTIVE_PAIRS),
                   help="objective pair replayed (table_replay.OBJECTIVE_PAIRS; default: the product's)")
    p.add_argument("--samplers", default=",".join((*PRODUCT_SAMPLERS, *EXTRA_SAMPLERS)))
    p.add_argument("--name", default="table_search", help="result file name (benchmarks/results/NAME.json)")
    return p.parse_args()


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("inf") if a > 0 else 1.0


def sampler_curves(table, samplers, seeds, budgets, reference, front_hv) -> dict:
    """Per sampler: per seed, the hypervolume after each budget of R-SFT runs (one replay each)."""
    from mm4ke_ray.evaluate.pareto_front import hypervolume

    out = {}
    for name in samplers:
        start = time.perf_counter()
        per_seed = []
        for seed in seeds:
            run = replay(table, name, seed, max(budgets), EXTRA)
            per_seed.append({n: hypervolume([r for r in run["rows"] if r["trial"] < n], reference) for n in budgets})
        out[name] = per_seed
        medians = {n: statistics.median(s[n] for s in per_seed) / front_hv for n in budgets}
        print(f"{name:10s} share of the table front by R-SFT runs: "
              + ", ".join(f"{n}: {v:.3f}" for n, v in medians.items()) + f" ({time.perf_counter() - start:.0f} s)",
              flush=True)
    return out


def summarize_samplers(curves: dict, budgets, front_hv) -> dict:
    out = {}
    for name, per_seed in curves.items():
        out[name] = {str(n): {"vs_random": statistics.median(_ratio(s[n], r[n]) for s, r in
                                                            zip(per_seed, curves["random"], strict=True)),
                              "vs_front": statistics.median(s[n] for s in per_seed) / front_hv,
                              "min_vs_front": min(s[n] for s in per_seed) / front_hv}
                     for n in budgets}
    return out


def _scored_deltas(table, ref: tuple[float, float], max_deltas: int | None):
    """Each finished delta of the table with a front above `ref`: its key, its grid's objectives
    {(α, sparsity): (edit, general)}, the grid's hypervolume, and a `look_up` that scores a group
    of merge candidates from the table (what `surrogate_search` calls to evaluate)."""
    from mm4ke_ray.search.surrogate import hypervolume_2d

    for key, c in list(table["configs"].items())[:max_deltas]:
        if c["status"] != "ok":
            continue
        values = {p: (v["edit_score"], v["general_score"]) for p, v in c["points"].items()}
        full = hypervolume_2d(list(values.values()), ref)
        if full <= 0:
            continue

        def look_up(group, values=values):
            for g in group:
                e, gen = values[(g["alpha"], g["sparsity"])]
                g["metrics"] = {"edit_score": e, "general_score": gen}
            return group, []

        yield key, values, full, look_up


def delta_shares(table, reference_edit: float, seeds, max_deltas: int | None = None) -> dict:
    """Per delta: the share of its exhaustive α × sparsity hypervolume the surrogate finds with
    <= SURROGATE_BUDGET merges, the pure R-SFT point and a sampled grid point first (as a trial)."""
    import random

    from mm4ke_ray.search.surrogate import hypervolume_2d, surrogate_search

    shares, spent = [], []
    ref = (reference_edit, 0.0)
    for key, values, full, look_up in _scored_deltas(table, ref, max_deltas):
        for seed in seeds:
            sampled = random.Random(f"{key}-{seed}").choice(sorted(values))
            first = [{"kind": "sampled", "alpha": sampled[0], "sparsity": sampled[1]}]
            if sampled != (0.0, 0.0):
                first.append({"kind": "pure_rsft", "alpha": 0.0, "sparsity": 0.0})
            got, _, info = surrogate_search(first, sorted(values), SURROGATE_BUDGET, look_up, batch_size=1)
            shares.append(hypervolume_2d([(g["metrics"]["edit_score"], g["metrics"]["general_score"]) for g in got],
                                         ref) / full)
            spent.append(info["surrogate.evaluations"])
    if not shares:
        return {"deltas": 0}
    return {"deltas": len(shares) // max(1, len(seeds)), "median_share": statistics.median(shares),
            "min_share": min(shares), "share_at_least_goal": sum(s >= GOAL_DELTA_SHARE for s in shares) / len(shares),
            "mean_evaluations": statistics.mean(spent)}


def self_stopping(table, reference_edit: float, max_deltas: int | None = None) -> dict:
    """Per delta, the surrogate given the whole grid to spend (the pure R-SFT point first): how many
    merges it evaluates before it stops by itself (no grid point expected to add 0.5 % to the
    front's hypervolume) and the share of the grid's hypervolume it has then."""
    from mm4ke_ray.search.surrogate import hypervolume_2d, surrogate_search

    ref = (reference_edit, 0.0)
    spent, shares = [], []
    for _, values, full, look_up in _scored_deltas(table, ref, max_deltas):
        got, _, info = surrogate_search([{"alpha": 0.0, "sparsity": 0.0}], sorted(values), len(values), look_up)
        spent.append(info["surrogate.evaluations"] / len(values))
        shares.append(hypervolume_2d([values[(g["alpha"], g["sparsity"])] for g in got], ref) / full)
    if not spent:
        return {"deltas": 0}
    return {"deltas": len(spent), "median_merge_fraction": statistics.median(spent), "max_merge_fraction": max(spent),
            "median_share": statistics.median(shares), "min_share": min(shares)}


def merge_curves(table, reference_edit: float, budgets=(4, 5, 6, 8, 10, 12, 16, 24, 36), draws: int = 20,
                 max_deltas: int | None = None) -> dict:
    """Per number of merges evaluated for one delta: the mean share of its grid's hypervolume
    found by the surrogate (the pure R-SFT point first) and by as many merges drawn at random (the
    pure R-SFT point among them, as the product's random extras), over the table's deltas."""
    import random

    from mm4ke_ray.search.surrogate import hypervolume_2d, surrogate_search

    ref = (reference_edit, 0.0)
    sur = {b: [] for b in budgets}
    rand = {b: [] for b in budgets}
    for key, values, full, look_up in _scored_deltas(table, ref, max_deltas):
        rng = random.Random(str(key))
        others = [p for p in sorted(values) if p != (0.0, 0.0)]
        for b in budgets:
            got, _, _ = surrogate_search([{"alpha": 0.0, "sparsity": 0.0}], sorted(values), b, look_up, tol=0.0)
            sur[b].append(hypervolume_2d([values[(g["alpha"], g["sparsity"])] for g in got], ref) / full)
            rand[b].append(statistics.mean(
                hypervolume_2d([values[(0.0, 0.0)], *(values[p] for p in rng.sample(others, min(b, 36) - 1))], ref)
                / full for _ in range(draws)))
    return {"budgets": list(budgets), "surrogate": {b: statistics.mean(v) for b, v in sur.items() if v},
            "random": {b: statistics.mean(v) for b, v in rand.items() if v}}


def picture(curves: dict, budgets, front_hv: float, merges: dict, path: Path) -> None:
    """Left: share of the table's front by R-SFT runs, per sampler (median of seeds). Right: share
    of one delta's grid front by merges evaluated, surrogate vs random merges (mean over deltas)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    if not curves:
        a.text(0.5, 0.5, "samplers not replayed:\nthe table is not complete yet", ha="center", va="center",
               transform=a.transAxes)
    if not curves:
        a.text(0.5, 0.5, "samplers not replayed:\nthe table is not complete yet", ha="center", va="center",
               transform=a.transAxes)
    for name, per_seed in curves.items():
        a.plot(budgets, [statistics.median(s[n] for s in per_seed) / front_hv for n in budgets], marker="o",
               label=name, linewidth=2.5 if name == DEFAULT else 1.2)
    a.set(xlabel="R-SFT runs", ylabel="hypervolume / table front (median of seeds)",
          title="samplers, replayed over the table")
    a.legend(fontsize=8)
    for name in ("surrogate", "random"):
        xs = [x for x in merges["budgets"] if x in merges[name]]
        b.plot(xs, [merges[name][x] for x in xs], marker="o", label=f"{name} merges")
    b.axhline(GOAL_DELTA_SHARE, color="grey", linestyle=":", label=f"goal {GOAL_DELTA_SHARE}")
    b.axvline(SURROGATE_BUDGET, color="grey", linestyle="--", linewidth=0.8)
    b.set(xlabel="merges evaluated for one delta (of the 6 x 6 grid)", ylabel="hypervolume / the grid's (mean of deltas)",
          title="one delta's α × sparsity front")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def sweep_with_surrogate(table, seeds, runs: int, reference) -> dict:
    """The sweep's front with the surrogate (<= 8 merges per run) vs every merge of every run,
    the default sampler, the same seeds and number of R-SFT runs."""
    from mm4ke_ray.evaluate.pareto_front import hypervolume

    shares, fractions = [], []
    for seed in seeds:
        full = replay(table, DEFAULT, seed, runs, len(table["merge_grid"]["alpha"]) * len(table["merge_grid"]["sparsity"]),
                      candidates="exhaustive")
        sur = replay(table, DEFAULT, seed, runs, SURROGATE_BUDGET - 1, candidates="surrogate")
        shares.append(_ratio(hypervolume(sur["rows"], reference), hypervolume(full["rows"], reference)))
        fractions.append(sur["merge_evaluations"] / max(1, full["merge_evaluations"]))
    return {"rsft_runs": runs, "median_share": statistics.median(shares), "min_share": min(shares),
            "median_merge_fraction": statistics.median(fractions)}


def main() -> None:
    args = arguments()
    common.setup(args)
    from mm4ke_ray.evaluate.pareto_front import hypervolume

    smoke = args.smoke_test
    table = synthetic_table() if smoke else load_table(args.table, objectives=args.objectives)
    rows = table_rows(table)
    reference = (float(table["base"].get("edit_score", 0.0)), 0.0)
    front_hv = hypervolume(rows, reference)
    n_runs = len(table["configs"])
    quarter = max(1, int(n_runs * BUDGET_FRACTION))
    budgets = sorted({quarter, *((4, 8) if smoke else BUDGETS)})
    seeds = range(2 if smoke else args.seeds)
    samplers = ("random", "tpe", "nsga2", "qmc") if smoke else tuple(args.samplers.split(","))
    print(f"table: {n_runs} R-SFT runs x {len(rows) // max(1, n_runs)} merges, front HV {front_hv:.4f} "
          f"(reference {reference}); budgets {budgets}, {len(seeds)} seeds")
    partial = n_runs < MIN_CONFIGS and not smoke
    if partial:  # a table still being built: the samplers need its whole grid; the deltas do not
        print(f"only {n_runs} complete R-SFT configurations (< {MIN_CONFIGS}): samplers not replayed")
        samplers = ()
    curves = sampler_curves(table, samplers, seeds, budgets, reference, front_hv)
    summary = summarize_samplers(curves, budgets, front_hv) if curves else {}
    deltas = delta_shares(table, reference[0], seeds if smoke else range(3), max_deltas=6 if smoke else None)
    print(f"surrogate per delta: {deltas}")
    stopping = self_stopping(table, reference[0], max_deltas=6 if smoke else None)
    print(f"surrogate left to stop by itself: {stopping}")
    merges = merge_curves(table, reference[0], **({"budgets": (4, 8, 12), "draws": 5, "max_deltas": 6} if smoke else {}))
    print("mean share of a delta's grid by merges evaluated: " + ", ".join(
        f"{b}: surrogate {merges['surrogate'][b]:.3f} / random {merges['random'][b]:.3f}" for b in merges["surrogate"]))
    sweep = sweep_with_surrogate(table, seeds if smoke else range(5), quarter if smoke else 16, reference) \
        if not partial else None
    print(f"surrogate in the sweep: {sweep}")
    source = ("synthetic" if smoke or table["meta"].get("source") == "synthetic" else "real") + \
        ("" if smoke or args.objectives == "product" else f" ({args.objectives})")
    goals = []
    if summary:
        d = summary[DEFAULT][str(quarter)]
        goals += [
            common.goal_line(f"{source} table: hypervolume {DEFAULT} / random at {quarter} R-SFT runs "
                             f"(25% of the table's {n_runs}), median of {len(seeds)} seeds (x)", d["vs_random"],
                             GOAL_VS_RANDOM),
            common.goal_line(f"{source} table: hypervolume {DEFAULT} / table front at {quarter} R-SFT runs, "
                             f"median of {len(seeds)} seeds", d["vs_front"], GOAL_VS_FRONT),
        ]
    if deltas.get("deltas"):
        goals.append(common.goal_line(f"{source} table: surrogate, hypervolume share of each delta's 6x6 grid "
                                      f"with <= {SURROGATE_BUDGET} merge evaluations (median over "
                                      f"{deltas['deltas']} deltas)", deltas["median_share"], GOAL_DELTA_SHARE))
    if sweep:
        goals += [
            common.goal_line(f"{source} table: surrogate sweep front / exhaustive merges' front, hypervolume "
                             f"({sweep['rsft_runs']} R-SFT runs, median of seeds)", sweep["median_share"],
                             GOAL_SWEEP_SHARE),
            common.goal_line(f"{source} table: surrogate merge evaluations / exhaustive",
                             sweep["median_merge_fraction"], GOAL_MERGE_FRACTION, higher_is_better=False),
        ]
    path = common.write_result(args.name, args, {
        "table": "synthetic" if smoke else (str(args.table.resolve().relative_to(common.REPO))
                                            if args.table.resolve().is_relative_to(common.REPO) else str(args.table)),
        "objectives": "synthetic" if smoke else args.objectives,
        "table_meta": {k: v for k, v in table["meta"].items() if k != "base"}, "base": table["base"],
        "rsft_runs_in_table": n_runs, "candidates_in_table": len(rows), "reference_point": reference,
        "table_front_hypervolume": front_hv, "budgets": budgets, "seeds": len(seeds), "extra_candidates": EXTRA,
        "samplers": summary, "hypervolume_by_seed": curves, "surrogate_per_delta": deltas,
        "surrogate_sweep": sweep, "surrogate_self_stopping": stopping, "merge_curves": merges, "partial_table": partial, "goals": goals,
    })
    picture(curves, budgets, front_hv, merges, path.with_suffix(".png"))


if __name__ == "__main__":
    main()
