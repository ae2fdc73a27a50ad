"""A trial's merge candidates of its delta: chosen (the sampled point, the pure R-SFT point and
random extras, or a per-delta surrogate over the α × sparsity grid) and evaluated on the
merge-eval actor pool through halving's rungs, each rung kept in a record for a restarted trial."""

from __future__ import annotations

import logging
import zlib

import ray

from mm4ke_ray.evaluate.fidelity import (
    EDIT_SE,
    EVAL_DOCS,
    EVAL_RECORDS,
    GENERAL_SE,
    RungPlan,
    RungResult,
    run_rungs,
    rung_result,
)
from mm4ke_ray.evaluate.rung_reuse import REUSE, REUSED_DOCS, REUSED_RECORDS, scored_items
from mm4ke_ray.evaluate.scores import COMBINED, OBJECTIVES
from mm4ke_ray.schema import ALPHA, EXTRA, SPARSITY
from mm4ke_ray.search.front_board import read_front
from mm4ke_ray.search.rung_store import RungStore, delta_digest
from mm4ke_ray.search.space import candidate_seed, mark_in_space, merge_candidates
from mm4ke_ray.search.surrogate import candidate_grid, choose_mode, surrogate_search
from mm4ke_ray.search.trial_context import TrialContext

log = logging.getLogger(__name__)
SURROGATE_INITIAL = 4  # merge.candidates surrogate: evaluations before its first fit (sampled, pure R-SFT, 2 more)


def _rung_plan(ctx: TrialContext) -> RungPlan:
    """The sweep's rung plan (`rung_plan.py`: sizes, skipped rungs), as the merge-eval actors
    built it from the edit set and the tasks' documents; the same in every actor. Asked once per
    process and pool: an actor busy with other trials' candidates answers only after them."""
    key = f"{ctx.actors[0]!r} {ctx.settings!r}"  # an actor handle's repr names its actor id
    if key not in _PLANS:
        _PLANS[key] = ray.get(ctx.actors[0].rung_plan.remote())
    return _PLANS[key]


_PLANS: dict[str, RungPlan] = {}  # per process, by pool and settings


def evaluate_merges(ctx: TrialContext, params: dict, delta_ref, trial_id: str,
                     digest: str | None) -> tuple[list[dict], list[dict], dict]:
    """The trial's merge candidates, chosen and evaluated: (full, pruned, compute), as
    `_evaluate_candidates` returns them, the sampled candidate first among the full ones.

    `merge.candidates random`: the sampled point, the pure R-SFT point and seeded random extras,
    all evaluated at once. `surrogate`: the first two and space-filling points of the α × sparsity
    grid, then batches (one per merge-eval actor) where the per-delta surrogate expects the front to
    move, `extra_candidates + 1` evaluations at most (`surrogate.surrogate_search`); halving runs
    inside each batch, and only full results teach the surrogate. Falls back to the whole grid or to
    random extras where the surrogate cannot help (`surrogate.choose_mode`)."""
    alpha, sparsity = float(params["alpha"]), float(params["sparsity"])
    seed = candidate_seed(ctx.search.seed, params)
    budget = ctx.extra_candidates + 1
    pool = candidate_grid(ctx.search.space, ctx.merge_grid) if ctx.merge_candidates == "surrogate" else []
    mode = choose_mode(len(pool), budget, SURROGATE_INITIAL) if pool else "random"
    if mode == "random":
        cands = merge_candidates(ctx.search, alpha, sparsity, ctx.extra_candidates, seed)
        return _evaluate_candidates(ctx, cands, delta_ref, trial_id, _store(ctx, trial_id, digest, cands))
    first = merge_candidates(ctx.search, alpha, sparsity, 1, seed)  # the sampled and the pure R-SFT points
    batches: list[dict] = []

    def evaluate(group: list[dict]) -> tuple[list[dict], list[dict]]:
        mark_in_space(ctx.search.space, group)
        n, offset = len(batches), sum(b["size"] for b in batches)
        key = trial_id if n == 0 else f"{trial_id}-b{n}"  # each batch its own rung record
        full, pruned, compute = _evaluate_candidates(ctx, group, delta_ref, key, _store(ctx, key, digest, group),
                                                     keep_first=n == 0)
        for c in group:
            c["index"] += offset  # unique across the trial's batches
        batches.append({"size": len(group), "compute": compute})
        return full, pruned

    if mode == "exhaustive":
        seen = {(c[ALPHA], c[SPARSITY]) for c in first}
        full, pruned = evaluate([*first, *({"kind": EXTRA, ALPHA: a, SPARSITY: s} for a, s in pool if (a, s) not in seen)])
        info = {"surrogate.evaluations": len(full) + len(pruned), "surrogate.batches": 1,
                "surrogate.stopped": "exhaustive", "surrogate.grid": len(pool)}
    else:
        full, pruned, info = surrogate_search(first, pool, budget, evaluate, batch_size=len(ctx.actors),
                                              initial=SURROGATE_INITIAL, kind=EXTRA)
    compute = {k: sum(b["compute"][k] for b in batches) for k in batches[0]["compute"]}
    log.info("trial %s: merge.candidates surrogate (%s) evaluated %d of %d grid merges in %d batch(es); %s",
             trial_id, mode, info["surrogate.evaluations"], len(pool), info["surrogate.batches"],
             info["surrogate.stopped"])
    return full, pruned, {**compute, **{k: v for k, v in info.items() if isinstance(v, int | float)}}


def rung_digest(ctx: TrialContext, delta: dict) -> str | None:
    """The delta's digest where rung records are kept (halving on and a folder for them), else None."""
    if ctx.settings.fidelity_rungs <= 1 or ctx.rungs_path is None:
        return None
    return delta_digest(delta)


def _rung_store(ctx: TrialContext, trial_id: str, delta: dict, cands: list[dict]) -> RungStore | None:
    """The trial's rung record (rung_store.py), with halving on and a folder to keep it in."""
    return _store(ctx, trial_id, rung_digest(ctx, delta), cands)


def _store(ctx: TrialContext, trial_id: str, digest: str | None, cands: list[dict]) -> RungStore | None:
    """A rung record of these candidates of the delta with `digest`; None where none is kept."""
    s = ctx.settings
    if digest is None:
        return None
    key = {"delta": digest, "candidates": [[c["alpha"], c["sparsity"]] for c in cands],
           "rungs": s.fidelity_rungs, "reduction_factor": s.fidelity_reduction_factor, "seed": s.fidelity_seed,
           "plan": _rung_plan(ctx).summary()}
    return RungStore(ctx.rungs_path, trial_id, key)


def _evaluate_candidates(ctx: TrialContext, cands: list[dict], delta_ref, trial_id: str,
                         store: RungStore | None = None, keep_first: bool = True) -> tuple[list[dict], list[dict], dict]:
    """Evaluate a trial's candidates on the actor pool: (full-fidelity candidates, pruned ones,
    the trial's evaluation compute). Each candidate gets `index` (its place among the trial's
    candidates, its stable id) and `metrics`.

    Without halving every candidate is evaluated in full, once. With it (`evaluation.fidelity`,
    `fidelity.run_rungs`) the candidates go through the rungs, promotion among this trial's own
    candidates; the sampled one (index 0) always reaches the full rung. A full candidate's
    metrics are its full evaluation's plus `rung{r}.*` for its lower rungs; a pruned one holds
    only `rung{r}.*`. Only full candidates are reported as candidates (Optuna, front, export):
    a lower rung's score is a noisy estimate on fewer items, and telling it to the sampler as if
    it were a full value would mix two fidelities in one TPE/NSGA model and bias it toward
    whatever the subsets happen to favour; so lower rungs are logged to MLflow only.

    With `ctx.front_key`, promotion also drops candidates that the sweep's full results so far
    beat (`front_board.py`, read once here); `fidelity.front_points` says how many points it had.

    With a `store`, each rung's results are recorded as soon as they are in, and a rung result
    already recorded (this trial started before and died) is read back instead of evaluated:
    `fidelity.reused_rungs` counts them per candidate.

    Rungs the plan skips (too few items for the sign test, `rung_plan.py`) are not evaluated
    (`fidelity.skipped_rungs`); a promoted candidate's next rung scores only the items it adds
    to the candidate's last one (`rung_reuse.py`; `compute.reused_records` / `_docs`).
    """
    n = len(ctx.actors)
    offset = zlib.crc32(trial_id.encode()) % n
    done = 0

    def fan_out(rung: int | None, indices: list[int], priors: dict[int, dict | None] | None = None) -> dict[int, dict]:
        nonlocal done  # round-robin over the pool across rungs, from the trial's own offset
        futures = [ctx.actors[(offset + done + j) % n].evaluate.remote(
            delta_ref, cands[i]["alpha"], cands[i]["sparsity"], ctx.search.seed,
            *(() if rung is None else (rung, (priors or {}).get(i)))) for j, i in enumerate(indices)]
        done += len(indices)
        return dict(zip(indices, ray.get(futures), strict=True))

    for i, c in enumerate(cands):
        c["index"] = i
    s = ctx.settings
    if s.fidelity_rungs <= 1:
        for i, metrics in fan_out(None, list(range(len(cands)))).items():
            cands[i]["metrics"] = {**metrics, **_compute([metrics], prefix="compute.")}
        return cands, [], _compute([c["metrics"] for c in cands], prefix="eval_compute_")
    last = s.fidelity_rungs - 1
    plan = _rung_plan(ctx)
    by_rung: dict[int, dict[int, dict]] = {}
    reused: dict[int, int] = {}  # per candidate, rung results read back from `store`

    def evaluate_at(rung: int, keys: list[str]) -> dict[str, RungResult]:
        indices = [int(k) for k in keys]
        saved = store.get(rung) if store else {}
        todo = [i for i in indices if i not in saved]
        below = [r for r in sorted(by_rung) if r < rung]  # the rung each candidate last scored, to reuse
        priors = {i: by_rung[below[-1]].get(i, {}).get(REUSE) if below else None for i in todo}
        fresh = fan_out(rung, todo, priors) if todo else {}
        if store and fresh:
            store.put(rung, fresh)
        for i in indices:
            reused[i] = reused.get(i, 0) + (i in saved)
        got = {i: fresh[i] if i in fresh else saved[i] for i in indices}
        by_rung[rung] = got
        return {str(i): rung_result(str(i), m) for i, m in got.items()}

    front = read_front(ctx.front_key)
    run_rungs([str(i) for i in range(len(cands))], evaluate_at, s.fidelity_rungs, s.fidelity_reduction_factor,
              ctx.fidelity_error_rate, keep=["0"] if keep_first else [], front=front, skip=plan.skipped)
    full, pruned = [], []
    for i, c in enumerate(cands):
        runs = {r: by_rung[r][i] for r in sorted(by_rung) if i in by_rung[r]}
        lower = {f"rung{r}.{k}": v for r, m in runs.items() if r < last for k, v in m.items()
                 if k in RUNG_METRICS and isinstance(v, int | float)}
        reached = max(runs)
        own = {k: v for k, v in runs[last].items() if k not in (REUSE, REUSED_RECORDS, REUSED_DOCS)} \
            if reached == last else {}
        c["metrics"] = {**own, **lower, "fidelity.rung": reached, "fidelity.reused_rungs": reused.get(i, 0),
                        "fidelity.front_points": len(front), "fidelity.skipped_rungs": len(plan.skipped),
                        **{f"rung{r}.skipped": 1 for r in plan.skipped},
                        **_compute(list(runs.values()), prefix="compute.")}
        (full if reached == last else pruned).append(c)
    evaluations = [m for got in by_rung.values() for m in got.values()]
    return full, pruned, _compute(evaluations, prefix="eval_compute_")


# What a lower rung logs of a candidate's evaluation (MLflow `rung{r}.<name>`): its objectives,
# their standard errors and how many records and documents it scored.
RUNG_METRICS = (*(o.name for o in (*OBJECTIVES, COMBINED)), EDIT_SE, GENERAL_SE, EVAL_RECORDS, EVAL_DOCS,
                REUSED_RECORDS, REUSED_DOCS, "eval_seconds")


def _compute(evaluations: list[dict], prefix: str) -> dict:
    """Evaluation compute of some evaluations: records and documents scored (those a rung read
    back from the rung below apart: `reused_*`), seconds spent."""
    scored = [scored_items(m) for m in evaluations]
    return {f"{prefix}records": sum(r for r, _ in scored), f"{prefix}docs": sum(d for _, d in scored),
            f"{prefix}reused_records": sum(int(m.get(REUSED_RECORDS, 0)) for m in evaluations),
            f"{prefix}reused_docs": sum(int(m.get(REUSED_DOCS, 0)) for m in evaluations),
            f"{prefix}seconds": sum(float(m.get("eval_seconds", 0.0)) for m in evaluations)}
