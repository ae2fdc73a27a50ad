"""Replay the product's own search over a tabulated benchmark, in seconds (issue 24 §2).

A table holds, per R-SFT configuration × α × sparsity, a merged candidate's measured objectives
(and, where the build kept them, its per-record and per-document values): `build_real_table.py`
writes one on SmolLM2-135M-Instruct as JSON lines, `synthetic_table` makes a small one for tests.
The replay runs the sweep's search unchanged: `CandidateAwareOptunaSearch` with the sampler of
`make_sampler` (start-up counted in R-SFT runs), the trial's merge candidates (random extras by
`merge_candidates`, or the per-delta surrogate by `surrogate_search`), every evaluated candidate
told as `search/trial.py` tells it. Only R-SFT + merge + evaluation is a look-up: a suggested
point takes the objectives of the nearest table point, parameter by parameter (log distance for
log-scaled ones).

    table = load_table(Path("benchmarks/results/real_table"))
    run = replay(table, "tpe", seed=0, num_trials=16, extra_candidates=4)
    run["rows"]   # every evaluated candidate: params, table cell, edit_score, general_score, trial
"""

from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path

from search_replay import snap

RSFT_NAMES = ("layer", "lr", "threshold", "epochs", "steps")
LOG_SCALED = ("lr", "threshold")
MERGE_NAMES = ("alpha", "sparsity")
OBJECTIVES = ("edit_score", "general_score")
TABLE_FILE = "table.jsonl"
META_FILE = "meta.json"

# Optuna samplers the product does not offer as `search.sampler`, replayed as Optuna ships them
# (their start-up, where they have one, counted in told points, not R-SFT runs).
EXTRA_SAMPLERS = ("tpe_plain", "gp_plain", "qmc", "nsga3")


def _reliability_locality(row: dict) -> tuple[float, float]:
    """(mean of edit success, generalization and portability; locality), as fractions."""
    reliability = sum(float(row[k]) for k in ("edit_succ", "generalization", "portability")) / 300
    return reliability, float(row["locality"]) / 100


# Objective pairs a table can be replayed with: name -> row -> (first, second), both maximised.
# "product": the sweep's own objectives as the build's config defines them (edit_score, a weighted
# mean of the edit metrics locality included, and general_score, the general tasks' retention).
# "reliability_locality": what the edit does against what it leaves alone, teacher-forced.
OBJECTIVE_PAIRS = {
    "product": lambda row: (float(row["edit_score"]), float(row["general_score"])),
    "reliability_locality": _reliability_locality,
}


def _cell_key(params: dict) -> tuple:
    return tuple(float(params[k]) for k in RSFT_NAMES)


def rows_to_table(meta: dict, rows: list[dict]) -> dict:
    """A table from its meta and its candidate rows (one per R-SFT configuration × α × sparsity;
    rows of kind 'rsft' carry a configuration's training status)."""
    configs: dict[tuple, dict] = {}
    for r in rows:
        key = _cell_key(r["config"])
        entry = configs.setdefault(key, {"params": {k: r["config"][k] for k in RSFT_NAMES}, "status": "ok",
                                         "points": {}})
        if r.get("kind") == "rsft":
            entry["status"] = r.get("status", "ok")
            entry["rsft"] = r
            continue
        entry["points"][(float(r["alpha"]), float(r["sparsity"]))] = r
    grid = {k: sorted({float(c["params"][k]) for c in configs.values()}) for k in RSFT_NAMES}
    merge_grid = {k: sorted({p[i] for c in configs.values() for p in c["points"]}) for i, k in enumerate(MERGE_NAMES)}
    return {"meta": meta, "grid": grid, "merge_grid": merge_grid, "configs": configs,
            "base": meta.get("base", {})}


def load_table(folder: Path, complete_only: bool = True, objectives: str = "product") -> dict:
    """The table in `folder` (meta.json + table.jsonl). `complete_only`: keep the configurations
    whose whole α × sparsity grid is in (a table still being built has a partial last one).
    `objectives`: a name of `OBJECTIVE_PAIRS`; its pair becomes each row's (and the base's)
    edit_score and general_score, the product's kept as product.edit_score / product.general_score."""
    folder = Path(folder)
    meta = json.loads((folder / META_FILE).read_text())
    rows = []
    for line in (folder / TABLE_FILE).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut off while the build writes it
            continue
    pair = OBJECTIVE_PAIRS[objectives]
    rows = [_with_objectives(r, pair) if "alpha" in r else r for r in rows]
    meta = {**meta, "objectives_replayed": objectives, "base": _with_objectives(meta.get("base", {}), pair)}
    table = rows_to_table(meta, rows)
    if complete_only:
        size = len(meta["merge_grid"]["alpha"]) * len(meta["merge_grid"]["sparsity"])
        table["configs"] = {k: c for k, c in table["configs"].items()
                            if c["status"] != "ok" or len(c["points"]) == size}
        table = rows_to_table(meta, [r for c in table["configs"].values()
                                     for r in [*([c["rsft"]] if "rsft" in c else []), *c["points"].values()]])
    return table


def _with_objectives(row: dict, pair) -> dict:
    try:
        first, second = pair(row)
    except KeyError:
        return row
    return {**row, "product.edit_score": row.get("edit_score"), "product.general_score": row.get("general_score"),
            "edit_score": first, "general_score": second}


def table_rows(table: dict) -> list[dict]:
    """Every candidate of the table as a row (for the table's own front)."""
    return [{**c["params"], **p} for c in table["configs"].values() if c["status"] == "ok" for p in c["points"].values()]


def space_of(table: dict) -> dict:
    """The search space a user would write for the table: its hull, log scale for lr and τ,
    the layer as choices; α and sparsity over the merge grid's range."""
    space = {}
    for k in RSFT_NAMES:
        values = table["grid"][k]
        if k == "layer" or len(values) == 1:
            space[k] = {"choices": [int(v) if k in ("layer", "epochs", "steps") else v for v in values]}
        else:
            space[k] = {"low": min(values), "high": max(values), **({"log": True} if k in LOG_SCALED else {})}
    for k in MERGE_NAMES:
        values = table["merge_grid"][k]
        space[k] = {"low": min(values), "high": max(values)}
    return space


def make_extra_sampler(name: str):
    """A factory for one of `EXTRA_SAMPLERS`, with the signature of `space.make_sampler`."""
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    def make(search, points_per_trial=1):
        seed = search.seed
        if name == "tpe_plain":
            return optuna.samplers.TPESampler(seed=seed)
        if name == "gp_plain":
            return optuna.samplers.GPSampler(seed=seed)
        if name == "qmc":
            return optuna.samplers.QMCSampler(seed=seed, scramble=True, warn_independent_sampling=False)
        if name == "nsga3":
            return optuna.samplers.NSGAIIISampler(seed=seed, population_size=max(2, 4 * points_per_trial))
        raise ValueError(f"unknown sampler {name!r}; known: {EXTRA_SAMPLERS}")

    return make


def replay(table: dict, sampler: str, seed: int, num_trials: int, extra_candidates: int,
           candidates: str = "random", startup_trials: int | None = None) -> dict:
    """One sweep's search over the table: `num_trials` R-SFT runs, each with its merge candidates.

    `sampler`: a `search.sampler` of the product (random, tpe, gp, nsga2) or one of
    `EXTRA_SAMPLERS`. `candidates`: 'random' (the product's default extras) or 'surrogate'
    (`merge.candidates surrogate`: up to extra_candidates + 1 merges chosen on the table's α ×
    sparsity grid, which is also its grid) or 'exhaustive' (every merge of the grid: the
    reference the surrogate is measured against; the sampled point counts as a grid point).
    Returns {"rows": every evaluated candidate,
    "trials": per-trial params and status, "merge_evaluations": merges evaluated,
    "extra_points_told": ...}.
    """
    import optuna

    from mm4ke_ray.config import SearchConfig
    from mm4ke_ray.search import space as sp
    from mm4ke_ray.search.searcher import EXTRA_POINTS_KEY, CandidateAwareOptunaSearch
    from mm4ke_ray.search.surrogate import choose_mode, surrogate_search

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    product = sampler in ("random", "tpe", "gp", "nsga2")
    search = SearchConfig(num_trials=num_trials, sampler=sampler if product else "tpe", seed=seed,
                          space=space_of(table))
    if startup_trials is not None:
        search = search.model_copy(update={"startup_trials": startup_trials})
    make = sp.make_sampler if product else make_extra_sampler(sampler)
    searched, fixed = sp.split_space(search)
    searcher = CandidateAwareOptunaSearch(space=searched, metric=list(OBJECTIVES), mode=["max", "max"],
                                          sampler=make(search, points_per_trial=extra_candidates + 1))
    pool = [(a, s) for a in table["merge_grid"]["alpha"] for s in table["merge_grid"]["sparsity"]]
    rows, trials, merges = [], [], 0
    for i in range(num_trials):
        trial_id = f"replay_{i:05d}"
        params = {**fixed, **searcher.suggest(trial_id)}
        cell = snap(params, table["grid"], LOG_SCALED)
        entry = table["configs"].get(_cell_key(cell))
        if entry is None or entry["status"] != "ok":
            trials.append({"params": params, "status": entry["status"] if entry else "missing"})
            searcher.on_trial_complete(trial_id, {"status": "diverged", "params": params,
                                                  **{o: float("nan") for o in OBJECTIVES}})
            continue
        trials.append({"params": params, "status": "ok"})

        def look_up(group: list[dict], entry=entry, cell=cell) -> tuple[list[dict], list[dict]]:
            for c in group:
                g = snap(c, table["merge_grid"], LOG_SCALED)
                point = entry["points"][(g["alpha"], g["sparsity"])]
                c["metrics"] = {o: float(point[o]) for o in OBJECTIVES}
                c["cell"] = {**cell, **g}
            return group, []

        alpha, sparsity = float(params["alpha"]), float(params["sparsity"])
        cseed = sp.candidate_seed(search.seed, params)
        budget = extra_candidates + 1
        if candidates == "surrogate" and choose_mode(len(pool), budget, 4) == "surrogate":
            first = sp.merge_candidates(search, alpha, sparsity, 1, cseed)
            sp.mark_in_space(search.space, first)
            cands, _, info = surrogate_search(first, pool, budget, look_up, batch_size=1, initial=4)
            for c in cands:
                c.setdefault("in_space", True)
            merges += info["surrogate.evaluations"]
        elif candidates == "exhaustive":  # every merge of the grid, the sampled point first
            first = sp.merge_candidates(search, alpha, sparsity, 0, cseed)
            cands, _ = look_up([*first, *({"kind": "extra", "alpha": a, "sparsity": s, "in_space": True}
                                          for a, s in pool)])
            merges += len(pool)
        else:
            cands, _ = look_up(sp.merge_candidates(search, alpha, sparsity, extra_candidates, cseed))
            merges += len(cands)
        for c in cands:
            rows.append({**params, "alpha": c["alpha"], "sparsity": c["sparsity"], "trial": i, "cell": c["cell"],
                         **c["metrics"]})
        result = {"status": "ok", **cands[0]["metrics"], "params": params,
                  EXTRA_POINTS_KEY: [{"params": {**params, "alpha": c["alpha"], "sparsity": c["sparsity"]},
                                      "values": [c["metrics"][o] for o in OBJECTIVES]}
                                     for c in cands[1:] if c.get("in_space", True)]}
        searcher.on_trial_complete(trial_id, result)
    return {"rows": rows, "trials": trials, "merge_evaluations": merges, "rsft_runs": num_trials,
            "extra_points_told": searcher.extra_points_told}


def synthetic_table(seed: int = 0, layers=(2, 4, 6), lrs=(1e-4, 3e-4, 1e-3), thresholds=(0.03, 0.2),
                    epochs_list=(1, 2), steps_list=(4,), alphas=(0.0, 0.18, 0.36, 0.54, 0.72, 0.9),
                    sparsities=(0.0, 0.16, 0.32, 0.48, 0.64, 0.8)) -> dict:
    """A small table of smooth made-up planes (for tests and --smoke-test): per configuration an
    edit strength (which layer, lr and schedule edit best) and a damage; per merge, edits fade with
    α and pruning while general ability returns."""
    rng = random.Random(seed)
    meta = {"source": "synthetic", "seed": seed, "merge_grid": {"alpha": list(alphas), "sparsity": list(sparsities)},
            "base": {"edit_score": 0.25, "general_score": 1.0}, "objectives": list(OBJECTIVES)}
    rows = []
    for layer in layers:
        for lr in lrs:
            for tau in thresholds:
                for epochs, steps in itertools.product(epochs_list, steps_list):
                    config = {"layer": layer, "lr": lr, "threshold": tau, "epochs": epochs, "steps": steps}
                    strength = min(1.0, 0.35 + 0.25 * math.log10(lr / 1e-4) + 0.1 * epochs - 0.3 * tau
                                   - 0.05 * abs(layer - 4) + 0.05 * rng.random())
                    damage = 0.15 * math.log10(lr / 1e-5) * (1.2 - layer / 10) + 0.05 * epochs
                    rows.append({"kind": "rsft", "config": config, "status": "ok"})
                    for a in alphas:
                        for s in sparsities:
                            keep = (1 - a) * (1 - s**3)
                            edit = 0.25 + 0.75 * strength / (1 + math.exp(-(keep - 0.45) / 0.08))
                            general = 1 - damage * keep**1.5
                            rows.append({"config": config, "alpha": a, "sparsity": s, "edit_score": edit,
                                         "general_score": general})
    return rows_to_table(meta, rows)
