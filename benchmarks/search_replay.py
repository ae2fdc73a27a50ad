"""Replay a sweep's search over the cached grid (fixtures/search_grid.json), without training.

The product's own search logic runs unchanged: `CandidateAwareOptunaSearch` with the sampler of
`make_sampler` (start-up counted in R-SFT configurations), `merge_candidates` for the extra
points of each trial, every candidate told as in `search/trial.py`. Only the R-SFT + merge +
evaluation is replaced by a look-up: a suggested point takes the objectives of the nearest grid
point (per parameter; log distance for log-scaled ones), so the sampler explores a real,
piecewise-constant objective measured once. Ray Tune's searcher class is used directly (no
cluster is started), as Tune's controller would call it: suggest, then on_trial_complete.

    doc = load_grid()
    run = replay(doc, "tpe", seed=0, num_trials=16, extra_candidates=4)
    run["rows"]   # every evaluated candidate: params, grid cell, edit_score, general_score
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import search_world

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "search_grid.json"
LOG_SCALED = tuple(k for k, v in search_world.SPACE.items() if v.get("log"))


def load_grid(path: Path = FIXTURE) -> dict:
    """The cached grid, with a look-up table: R-SFT key -> {(α, sparsity): objectives}."""
    doc = json.loads(Path(path).read_text())
    doc["lookup"] = {_key(c["params"]): c for c in doc["configs"]}
    return doc


def _key(params: dict) -> tuple:
    return tuple(float(params[k]) for k in search_world.RSFT_NAMES)


def snap(params: dict, grid: dict, log_scaled: tuple[str, ...] = LOG_SCALED) -> dict:
    """The grid point nearest to `params`, parameter by parameter (log distance for `log_scaled`)."""
    def nearest(name: str, value: float) -> float:
        if name in log_scaled:
            return min(grid[name], key=lambda g: abs(math.log(g) - math.log(value)))
        return min(grid[name], key=lambda g: abs(g - value))

    return {k: nearest(k, float(params[k])) for k in grid}


def grid_rows(doc: dict) -> list[dict]:
    """Every point of the grid as a candidate row (for the grid's own hypervolume)."""
    rows = []
    for c in doc["configs"]:
        for p in c.get("points", []):
            rows.append({**c["params"], **p})
    return rows


def evaluate(doc: dict, params: dict, merges: list[dict]) -> tuple[dict | None, list[dict]]:
    """(the grid's R-SFT entry for params, the objectives of each merge point), by look-up."""
    cell = snap(params, doc["grid"])
    entry = doc["lookup"][_key(cell)]
    if entry["status"] != "ok":
        return None, []
    points = {(p["alpha"], p["sparsity"]): p for p in entry["points"]}
    out = []
    for m in merges:
        g = snap(m, doc["merge_grid"])
        out.append({**points[(g["alpha"], g["sparsity"])], "cell": {**cell, **g}})
    return entry, out


def tracked_rows(rows: list[dict]) -> list[dict]:
    """Replay rows as an earlier sweep's candidates read back from MLflow (`--warm-start`): each
    with the `trial_id` of its R-SFT run, which groups a run's candidates in `warm_points`."""
    return [{**r, "trial_id": f"replay_{r['trial']:05d}"} for r in rows]


def replay(doc: dict, sampler: str, seed: int, num_trials: int, extra_candidates: int,
           startup_trials: int | None = None, constraints: dict | None = None, make_sampler=None,
           warm: list[tuple[str, list[dict]]] | None = None) -> dict:
    """One sweep's search over the grid: `num_trials` R-SFT runs, each with its merge candidates.

    `make_sampler(search, points_per_trial)` replaces the product's sampler factory (to compare
    another search, e.g. Optuna's plain TPE, on the same grid). `warm`: (source name, candidate
    rows as `tracked_rows` gives them) of earlier sweeps, told to the study before the first trial
    as `mm4ke-ray sweep --warm-start` tells them (`warm_points`, then `tell_warm_start`).

    Returns {"rows": every evaluated candidate, "trials": per-trial params, "study": the Optuna
    study, "extra_points_told": ..., "rsft_runs": num_trials, "warm": per source {"rows", "told",
    "skipped"} (skipped: outside the space, as the sweep counts them)}.
    """
    import optuna

    from mm4ke_ray.evaluate.scores import COMBINED, OBJECTIVES
    from mm4ke_ray.search import space
    from mm4ke_ray.search.searcher import EXTRA_POINTS_KEY, CandidateAwareOptunaSearch

    make_sampler = make_sampler or space.make_sampler
    MERGE_PARAMS, merge_candidates, split_space = space.MERGE_PARAMS, space.merge_candidates, space.split_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search = search_world.search_config(sampler, seed, num_trials)
    if startup_trials is not None:
        search = search.model_copy(update={"startup_trials": startup_trials})
    searched, fixed = split_space(search)
    searcher = CandidateAwareOptunaSearch(
        space=searched, metric=[o.name for o in OBJECTIVES], mode=[o.mode for o in OBJECTIVES],
        sampler=make_sampler(search, points_per_trial=extra_candidates + 1), constraints=constraints,
    )
    warm_told = _tell_warm(searcher, search, warm or [])
    rows, trials = [], []
    nan = float("nan")
    for i in range(num_trials):
        trial_id = f"replay_{i:05d}"
        params = {**fixed, **searcher.suggest(trial_id)}
        # As search/trial.py: the extra draws are seeded by the trial's parameters.
        cand_seed = space.candidate_seed(search.seed, params)
        cands = merge_candidates(search, float(params["alpha"]), float(params["sparsity"]), extra_candidates,
                                 cand_seed)
        entry, scored = evaluate(doc, params, cands)
        trials.append({"params": params, "status": entry["status"] if entry else "diverged"})
        if entry is None:
            searcher.on_trial_complete(trial_id, {"status": "diverged", "params": params,
                                                  **{o.name: nan for o in (*OBJECTIVES, COMBINED)}})
            continue
        for c, s in zip(cands, scored, strict=True):
            rows.append({**params, **{k: c[k] for k in MERGE_PARAMS}, "kind": c["kind"], "trial": i,
                         "cell": s["cell"], **{o.name: s[o.name] for o in (*OBJECTIVES, COMBINED)}})
        sampled = scored[0]
        result = {"status": "ok", **{o.name: sampled[o.name] for o in OBJECTIVES}, "params": params,
                  EXTRA_POINTS_KEY: [{"params": {**params, **{k: c[k] for k in MERGE_PARAMS}},
                                      "values": [s[o.name] for o in OBJECTIVES]}
                                     for c, s in zip(cands[1:], scored[1:], strict=True) if c["in_space"]]}
        searcher.on_trial_complete(trial_id, result)
    return {"rows": rows, "trials": trials, "study": searcher.study, "rsft_runs": num_trials,
            "extra_points_told": searcher.extra_points_told, "warm": warm_told}


def _tell_warm(searcher, search, warm: list[tuple[str, list[dict]]]) -> dict:
    """As the sweep's driver (`_tell_warm_start`): each source's rows as points, told before the
    first trial; {source: {"rows", "told", "skipped"}}."""
    from mm4ke_ray.search.warm_start import warm_points

    out = {}
    for source, rows in warm:
        points, skipped = warm_points(rows, search, source)
        told, refused = searcher.tell_warm_start(points, source)
        out[source] = {"rows": len(rows), "told": told, "skipped": skipped + refused}
    return out
