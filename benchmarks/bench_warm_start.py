"""Benchmark 11 — warm start: a second sweep warm-started from a first reaches its hypervolume sooner.

Issue 13, part 3: a second sweep of 4 R-SFT runs warm-started from a first of 8 reaches the
first's hypervolume sooner than a cold one. In the search-quality world (`search_world.py`),
replayed over its cached grid (`search_replay.replay`: the product's searcher, sampler, merge
candidates and telling; no training), per seed s:
- first sweep: TPE, seed s, 8 R-SFT runs x (1 + 4 extra) candidates; HV_first its hypervolume;
- second sweep, warm: TPE, seed s+100 (another trajectory), told the first sweep's candidates
  before its first trial exactly as `mm4ke-ray sweep --warm-start` tells them (`warm_points`,
  then `CandidateAwareOptunaSearch.tell_warm_start`; the 8 earlier R-SFT configurations count
  toward its start-up of 4, so its model draws from the first trial);
- second sweep, cold: the same without the warm points.
Hypervolume as in search quality: (edit_score, general_score), reference (base edit score, 0).

Trials-to-reach: the smallest n such that the second sweep's OWN candidates of its first n
R-SFT runs have a hypervolume >= HV_first. The second sweep runs 16 R-SFT runs so that "not
within 4" still gives a number; not reached within 16 is censored (inf, ">16"; medians sort it
last). The issue's 4-run sweep is the same replay's first 4 runs (the replay is sequential;
checked: a separate 4-run replay gives the same candidates). Over the union with the first
sweep's candidates trials-to-reach is 0 for warm and cold alike (the union holds the first
front), so the union's figure reported is trials-to-improve: the first n whose union HV
exceeds HV_first.

Goals (20 seeds):
- median trials-to-reach, warm / cold <= 0.99 (i.e. < 1: warm reaches it sooner);
- share of seeds reaching HV_first within 4 runs, warm minus cold >= one seed (1/N).

    python benchmarks/bench_warm_start.py               # 20 seeds: 8 + 16 + 16 (+ 4 + 4) runs each
    python benchmarks/bench_warm_start.py --smoke-test  # 2 seeds, 4 + 6 runs (plumbing only)
"""

from __future__ import annotations

import math
import statistics
import time

import common
from search_replay import FIXTURE, load_grid, replay, tracked_rows

SAMPLER = "tpe"
EXTRA = 4
FIRST_TRIALS = 8
SECOND_TRIALS = 4  # the second sweep
HORIZON = 16  # the second sweep continued, so that "not within 4" still gives a number
SEED_OFFSET = 100  # the second sweep's seed: seed + 100, not the first's trajectory again
SEEDS = 20
INFO_SEEDS = 100  # information: the same medians over more seeds (20 are noisy)
GOAL_RATIO = 0.99
SOURCE = "first"
TOL = 1e-9  # hypervolumes are sums of float areas; equal fronts may differ in the last bits


def trials_to_reach(rows: list[dict], target: float, horizon: int, reference, strict: bool = False) -> float:
    """Smallest n (1..horizon) whose first n R-SFT runs' candidates reach `target` (exceed it when
    `strict`); inf when none does."""
    from mm4ke_ray.evaluate.pareto_front import hypervolume

    for n in range(1, horizon + 1):
        hv = hypervolume([r for r in rows if r["trial"] < n], reference)
        if (hv > target + TOL) if strict else (hv >= target - TOL):
            return float(n)
    return math.inf


def one_seed(doc: dict, seed: int, first_trials: int, second_trials: int, horizon: int, reference) -> dict:
    """The first sweep, then the second warm and cold, for one seed; trials-to-reach of each."""
    from mm4ke_ray.evaluate.pareto_front import hypervolume

    start = time.perf_counter()
    first = replay(doc, SAMPLER, seed, first_trials, EXTRA)["rows"]
    hv_first = hypervolume(first, reference)
    warm_from = [(SOURCE, tracked_rows(first))]
    first_before = [{**r, "trial": -1} for r in first]  # in the union from the start: before trial 0
    out = {"seed": seed, "second_seed": seed + SEED_OFFSET, "hv_first": hv_first, "first_candidates": len(first)}
    for mode, warm in (("warm", warm_from), ("cold", None)):
        run = replay(doc, SAMPLER, seed + SEED_OFFSET, horizon, EXTRA, warm=warm)
        own = run["rows"]
        short = replay(doc, SAMPLER, seed + SEED_OFFSET, second_trials, EXTRA, warm=warm)["rows"]
        out[mode] = {
            "trials_to_reach": trials_to_reach(own, hv_first, horizon, reference),
            "union_trials_to_reach": 0.0,  # the union holds the first sweep's front from the start
            "union_trials_to_improve": trials_to_reach([*first_before, *own], hv_first, horizon, reference,
                                                       strict=True),
            "hv_at_second_trials": hypervolume(short, reference),
            "hv_by_rsft_runs": {n: hypervolume([r for r in own if r["trial"] < n], reference)
                                for n in range(1, horizon + 1)},
            "hv_union_at_horizon": hypervolume([*first, *own], reference),
            "short_run_is_prefix": _same_rows(short, [r for r in own if r["trial"] < second_trials]),
            "layers": [t["params"]["layer"] for t in run["trials"]],
            "warm": run["warm"],
        }
    out["seconds"] = time.perf_counter() - start
    return out


def _same_rows(a: list[dict], b: list[dict]) -> bool:
    key = ("trial", "kind", "alpha", "sparsity", "lr", "threshold", "epochs", "layer", "edit_score", "general_score")
    return [tuple(r.get(k) for k in key) for r in a] == [tuple(r.get(k) for k in key) for r in b]


def _show(n: float, horizon: int) -> str:
    return f">{horizon}" if math.isinf(n) else f"{n:g}"


def _ratio(warm: float, cold: float) -> float:
    """warm / cold trials-to-reach; both censored: 1 (no difference seen); only cold censored: 0."""
    if math.isinf(cold):
        return 1.0 if math.isinf(warm) else 0.0
    return warm / cold


def main() -> None:
    args = common.parser(__doc__.split("\n\n")[0]).parse_args()
    common.setup(args)
    smoke = args.smoke_test
    doc = load_grid()
    reference = (doc["base"]["edit_score"], 0.0)
    seeds = (0, 1) if smoke else tuple(range(SEEDS))
    first_trials, second_trials, horizon = (4, 2, 6) if smoke else (FIRST_TRIALS, SECOND_TRIALS, HORIZON)
    print(f"first sweep {first_trials} R-SFT runs, second {second_trials} (continued to {horizon}), "
          f"{SAMPLER}, {EXTRA} extra candidates, ref {reference}, {len(seeds)} seeds")
    runs = []
    for seed in seeds:
        r = one_seed(doc, seed, first_trials, second_trials, horizon, reference)
        runs.append(r)
        w, c = r["warm"], r["cold"]
        print(f"seed {seed:2d}: HV_first {r['hv_first']:.4f}; trials-to-reach warm "
              f"{_show(w['trials_to_reach'], horizon)}, cold {_show(c['trials_to_reach'], horizon)}; HV at "
              f"{second_trials} warm {w['hv_at_second_trials']:.4f}, cold {c['hv_at_second_trials']:.4f}; warm told "
              f"{w['warm'][SOURCE]['told']} of {w['warm'][SOURCE]['rows']} ({r['seconds']:.1f} s)", flush=True)
    stats = _stats(runs, second_trials, horizon)
    n = len(seeds)
    print(f"median trials-to-reach: warm {_show(stats['median_trials_to_reach']['warm'], horizon)}, cold "
          f"{_show(stats['median_trials_to_reach']['cold'], horizon)}; within {second_trials}: warm "
          f"{stats['share_within']['warm']:.0%}, cold {stats['share_within']['cold']:.0%}; per seed warm sooner / "
          f"same / later: {stats['paired']['warm_sooner']} / {stats['paired']['same']} / {stats['paired']['warm_later']} "
          f"(sign test p {stats['paired']['sign_test_p']:.3g})")
    print(f"median HV of own candidates at {second_trials} runs: warm {stats['median_hv_at_second_trials']['warm']:.4f}, "
          f"cold {stats['median_hv_at_second_trials']['cold']:.4f}; median trials-to-improve the union's front: "
          f"warm {_show(stats['median_union_trials_to_improve']['warm'], horizon)}, "
          f"cold {_show(stats['median_union_trials_to_improve']['cold'], horizon)}")
    info = {} if smoke else _more_seeds(doc, first_trials, second_trials, horizon, reference, runs)
    goals = [
        common.goal_line(f"warm start: trials-to-reach the first sweep's hypervolume ({first_trials} R-SFT runs) "
                         f"with the second sweep's own candidates, median of {n} seeds, warm / cold "
                         f"(x; < 1: warm sooner)", stats["ratio_of_medians"], GOAL_RATIO, higher_is_better=False),
        common.goal_line(f"warm start: share of {n} seeds whose second sweep reaches the first's hypervolume within "
                         f"{second_trials} R-SFT runs, warm minus cold ({stats['share_within']['warm']:.0%} vs "
                         f"{stats['share_within']['cold']:.0%}; goal: one seed more)",
                         stats["share_within"]["warm"] - stats["share_within"]["cold"], 1 / n),
    ]
    common.write_result("warm_start", args, {
        "reference_point": reference, "objectives": doc["objectives"],
        "setup": {"sampler": SAMPLER, "extra_candidates": EXTRA, "first_rsft_runs": first_trials,
                  "second_rsft_runs": second_trials, "horizon_rsft_runs": horizon, "seeds": list(seeds),
                  "second_seed_offset": SEED_OFFSET, "fixture": str(FIXTURE.relative_to(common.REPO)),
                  "censored_as": "inf (not reached within the horizon)"},
        **stats, f"{INFO_SEEDS}_seeds": info, "runs": runs, "goals": goals,
    })


def _more_seeds(doc: dict, first_trials: int, second_trials: int, horizon: int, reference, runs: list[dict]) -> dict:
    """Information: the statistics over INFO_SEEDS seeds (the goal's seeds first), without per-seed rows."""
    more = [*runs, *(one_seed(doc, s, first_trials, second_trials, horizon, reference)
                     for s in range(len(runs), INFO_SEEDS))]
    stats = _stats(more, second_trials, horizon)
    m, w, p = stats["median_trials_to_reach"], stats["share_within"], stats["paired"]
    print(f"{INFO_SEEDS} seeds (information): median trials-to-reach warm {_show(m['warm'], horizon)}, cold "
          f"{_show(m['cold'], horizon)}; within {second_trials}: warm {w['warm']:.0%}, cold {w['cold']:.0%}; warm "
          f"sooner / same / later {p['warm_sooner']} / {p['same']} / {p['warm_later']} (sign test p "
          f"{p['sign_test_p']:.3g}); median HV at {second_trials} warm {stats['median_hv_at_second_trials']['warm']:.4f}, "
          f"cold {stats['median_hv_at_second_trials']['cold']:.4f}")
    return stats


def _sign_test(k: int, n: int) -> float:
    """Two-sided exact sign test: P(a split at least as uneven as k of n) under p = 1/2."""
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(k, n - k) + 1)) / 2**n
    return min(1.0, 2 * tail)


def _stats(runs: list[dict], second_trials: int, horizon: int) -> dict:
    modes = ("warm", "cold")

    def med(key: str) -> dict:
        return {m: statistics.median(r[m][key] for r in runs) for m in modes}

    reach = med("trials_to_reach")
    pairs = [(r["warm"]["trials_to_reach"], r["cold"]["trials_to_reach"]) for r in runs]
    return {
        "median_trials_to_reach": reach,
        "ratio_of_medians": _ratio(reach["warm"], reach["cold"]),
        "share_within": {m: sum(r[m]["trials_to_reach"] <= second_trials for r in runs) / len(runs) for m in modes},
        "share_within_horizon": {m: sum(r[m]["trials_to_reach"] <= horizon for r in runs) / len(runs) for m in modes},
        "paired": {"warm_sooner": (sooner := sum(w < c for w, c in pairs)), "same": sum(w == c for w, c in pairs),
                   "warm_later": (later := sum(w > c for w, c in pairs)),
                   "sign_test_p": _sign_test(sooner, sooner + later)},
        "median_hv_at_second_trials": med("hv_at_second_trials"),
        "median_hv_ratio_at_second_trials": statistics.median(
            r["warm"]["hv_at_second_trials"] / r["cold"]["hv_at_second_trials"] if r["cold"]["hv_at_second_trials"] > 0
            else math.inf for r in runs),
        "median_union_trials_to_improve": med("union_trials_to_improve"),
        "median_hv_first": statistics.median(r["hv_first"] for r in runs),
        "short_runs_are_prefixes": all(r[m]["short_run_is_prefix"] for r in runs for m in modes),
    }


if __name__ == "__main__":
    main()
