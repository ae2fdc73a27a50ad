"""Benchmark 11 — multi-fidelity: the search-quality search with and without successive halving.

Issue 13 part 3. The search of `bench_search_quality.py` (the 4-block world of
`search_world.py`, its space, TPE, 4 extra merge candidates per R-SFT run, 16 R-SFT runs, seeds
0, 1, 2) runs for real, twice per seed, interleaved (seed 0 full, seed 0 halving, seed 1 full,
...), in one process without Ray, as `search_grid.py` does: the product's searcher
(`CandidateAwareOptunaSearch`, `make_sampler`, `merge_candidates`, `candidate_seed`), R-SFT with
`run_rsft` and the sweep's `CandidateEvaluator`. The cached grid cannot stand in here: it holds no
per-record scores, so promotion could not be replayed from it.
- arm "full": every candidate is evaluated in full (`evaluation.fidelity` off);
- arm "halving": each trial's candidates go through `fidelity.run_rungs` as `search/trial.py`'s
  `_evaluate_candidates` does it (product defaults: 3 rungs, reduction factor 3, drop only on
  evidence at error rate 0.05 per comparison (issue 23: sign test + paired z per objective,
  `evaluate/evidence.py`), `against_front`: the sweep's full results so far, base included, as
  the driver publishes them before the trial (`front_board.front_points`); the sampled candidate
  always reaches the full rung; a lower rung raised to the sign test's minimum items or skipped
  where it cannot give evidence (`rung_plan.py`); a promoted candidate scores only the items its
  next rung adds (`rung_reuse.py`)); only candidates that reached the full rung are rows, and
  only they are told to Optuna (in-space extras as extra points);
- arm "halving-in-trial" (information): the same with `against_front: false`, promotion among
  the trial's own candidates only.
R-SFT is seeded and deterministic on CPU, so a delta is trained once per (seed, parameters) and
reused when the other arm asks for the same point (the two arms diverge once their told points
differ). One evaluator per fidelity setting for the whole run (the halving one per seed, since a
sweep's rung subsets are seeded by its seed; it shares the full one's base reference).

Measure per seed and arm: hypervolume of every full-fidelity candidate, reference point (base
model's edit score, 0) as in search quality; evaluation compute summed over every evaluation of
every rung, as the trial's `_compute` does: records + documents scored (`eval_records`,
`eval_docs`, less those read back from the rung below: `rung_reuse.scored_items`) and `eval_seconds` (the wall around each evaluate call is reported beside it: it
also holds the one-time base reference of each lower rung); candidates evaluated per rung.
True-front drop rate (issue 23): every candidate a halving arm pruned is also evaluated in full,
for this measurement only (not counted as compute, not a row, not told); of the candidates on the
front of all that arm's candidates (pruned ones at their full values), the share halving pruned.
Goals, median over seeds of the per-seed ratio halving / full:
- hypervolume >= 0.98;
- evaluation compute, records + documents, <= 0.5;
- evaluation compute, seconds, <= 0.5;
- true-front drop rate (pooled over seeds) <= 0.02.

    python benchmarks/bench_multifidelity.py               # 16 R-SFT runs x 3 seeds x 2 arms, 4-block world (~11 min)
    python benchmarks/bench_multifidelity.py --smoke-test  # 3 runs x 1 seed, the everyday 2-block demo (~35 s)
    python benchmarks/bench_multifidelity.py --model smollm2  # the real model: 6 runs x 1 seed, full and halving
    python benchmarks/bench_multifidelity.py --edits 100     # the same world with 100 edits instead of 25

`--model smollm2` (issue 23 §4, "on the real model too"): SmolLM2-135M-Instruct offline with
search_spaces/smollm2_zsre.yaml's space, 25 real ZsRE records in chat format and WikiText-2, as
bench_real.py loads it, except that the edit objective is teacher-forced and WikiText-2 is cut to
`REAL_WORDS` words: a generated (WILD) candidate costs minutes on a 2-core CPU. The result goes to
`multifidelity_real.json` (the demo world's `multifidelity.json` stays).

Resumable (`disk_memo.py`): every R-SFT delta and every evaluation is kept in `--work` (default
`results/multifidelity-work/<model>`, ignored by git) as it is made; a rerun with the same
arguments replays the seeded search and reads them back, so a killed run loses at most the
evaluation it was in (`--fresh` starts over). Smoke runs keep theirs in a temporary folder.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import common
import search_grid
import search_world
from disk_memo import KEPT_WALL, DiskMemo, tensors_digest

TRIALS = 16  # the search-quality budget: 25% of the grid's 64 R-SFT runs
SEEDS = (0, 1, 2)
SMOKE_TRIALS = 3
REAL_TRIALS, REAL_SEEDS, REAL_WORDS = 6, (0,), 2000
REAL_ARMS = ("full", "halving")  # the in-trial arm is information only: left out where an evaluation costs a minute
EXTRA = 4
SAMPLER = "tpe"
ARMS = ("full", "halving", "halving-in-trial")
GOAL_HV = 0.98
GOAL_COMPUTE = 0.5
GOAL_FRONT_DROP = 0.02
# The everyday demo has 2 blocks: the search-quality space with its layer choices cut to them.
SMOKE_SPACE = {**search_world.SPACE, "layer": {"choices": [0, 1]}}
# The result's per-candidate lists, as rows of these fields (floats to 5 decimals: a small file).
ROW_FIELDS = ("trial", "kind", "alpha", "sparsity", "edit_score", "general_score", "combined_score")
RUNG_FIELDS = ("edit", "general", "edit_se", "general_se", "dominated", "dominated_beyond_doubt", "beaten_by_front")


def main() -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=None, help="R-SFT runs per search (default: 16; smoke 3)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="search seeds (default: 0 1 2; smoke 0)")
    p.add_argument("--model", choices=["demo", "smollm2"], default="demo",
                   help="demo: the 4-block search world (default); smollm2: the real model (see the module doc)")
    p.add_argument("--edits", type=int, default=None,
                   help="demo world: its number of edits (default 25; the result goes to multifidelity_edits<N>.json)")
    p.add_argument("--work", type=Path, default=None,
                   help="folder of the kept deltas and evaluations (default: results/multifidelity-work/<model>)")
    p.add_argument("--fresh", action="store_true", help="forget what a killed run kept; start over")
    args = p.parse_args()
    from mm4ke_ray.quiet import quiet_libraries

    quiet_libraries()  # before torch, transformers, lm-eval: their per-call progress bars would drown the rows
    common.setup(args)
    from mm4ke_ray.config import FidelityConfig
    from mm4ke_ray.demo.build import build_demo
    from mm4ke_ray.evaluate.candidate import CandidateEvaluator
    from mm4ke_ray.evaluate.evidence import DROP_RULE, min_sign_items
    from mm4ke_ray.modeling import load_model, load_tokenizer

    smoke = args.smoke_test
    real = args.model == "smollm2" and not smoke
    trials = args.trials or (SMOKE_TRIALS if smoke else REAL_TRIALS if real else TRIALS)
    seeds = tuple(args.seeds or ((0,) if smoke else REAL_SEEDS if real else SEEDS))
    arms = REAL_ARMS if real else ARMS
    if real:
        settings, space = _real_world()
        world, demo_key = f"SmolLM2-135M-Instruct, teacher-forced edit objective, WikiText-2 {REAL_WORDS} words", None
    else:
        space = SMOKE_SPACE if smoke else search_world.SPACE
        assets = build_demo() if smoke else build_demo(config=search_world.demo_config(), num_edits=args.edits or 25,
                                                       progress=print)
        settings = search_grid._settings(assets)
        world = "everyday demo (2 blocks)" if smoke else f"search_world ({search_world.DEMO_LAYERS} blocks" + (
            f", {args.edits} edits)" if args.edits else ")")
        demo_key = assets.manifest["key"]
    fid = FidelityConfig()  # the product's defaults: what `evaluation.fidelity: {enabled: true}` runs
    work = args.work or (Path(tempfile.mkdtemp(prefix="mm4ke-mf-")) if smoke
                         else common.RESULTS / "multifidelity-work" / (args.model + (f"-{args.edits}" if args.edits else "")))
    memo = DiskMemo(work, {"model": args.model, "smoke": smoke, "trials": trials, "seeds": list(seeds),
                           "arms": list(arms), "space": space, "settings": repr(settings), "fidelity": fid.model_dump(),
                           "extra": EXTRA, "sampler": SAMPLER}, fresh=args.fresh)
    print(f"kept results: {work} ({len(memo.values)} evaluations from an earlier run)", flush=True)
    t0 = time.perf_counter()
    full_eval = CandidateEvaluator(settings)
    setup_s = {"full_evaluator": time.perf_counter() - t0}
    base = full_eval.reference.metrics
    reference = (base["edit_score"], 0.0)
    trainer = _Trainer(load_model(settings.model), load_tokenizer(settings.model),
                       _records(settings), settings.prompt_format, memo)
    print(f"world: {world} ({settings.model}), {len(full_eval.records)} edits, general tasks {list(settings.general_tasks)}; "
          f"{trials} R-SFT runs x {EXTRA + 1} candidates, seeds {list(seeds)}; halving: {fid.rungs} rungs, "
          f"factor {fid.reduction_factor:g}, error rate {fid.error_rate:g}; HV reference {reference}", flush=True)
    runs = []
    for seed in seeds:
        t0 = time.perf_counter()
        halving_eval = CandidateEvaluator(
            dataclasses.replace(settings, fidelity_rungs=fid.rungs, fidelity_reduction_factor=fid.reduction_factor,
                                fidelity_seed=seed, fidelity_min_items=min_sign_items(fid.error_rate)),
            reference=full_eval.reference,
        )
        setup_s[f"halving_evaluator_seed{seed}"] = time.perf_counter() - t0
        for arm in arms:
            evaluator = full_eval if arm == "full" else halving_eval
            arm_fid = fid.model_copy(update={"against_front": arm == "halving"})
            evaluator = _Kept(evaluator, memo, "full" if arm == "full" else f"halving-seed{seed}")
            run = _search(arm, seed, trials, space, evaluator, trainer, arm_fid, reference, base)
            runs.append(run)
            print(_line(run), flush=True)
    ratios = [_seed_ratios(runs, seed) for seed in seeds]
    median = {k: statistics.median(r[k] for r in ratios) for k in ratios[0]}
    in_trial = [_seed_ratios(runs, seed, "halving-in-trial") for seed in seeds] if "halving-in-trial" in arms else []
    median_in_trial = {k: statistics.median(r[k] for r in in_trial) for k in in_trial[0]} if in_trial else {}
    n = len(seeds)
    drops = {arm: _front_drops([r for r in runs if r["arm"] == arm]) for arm in arms[1:]}
    print("true-front drop rate: " + ", ".join(f"{arm} {d['dropped']}/{d['front']}" for arm, d in drops.items()))
    print(f"median halving / full over {n} seed(s): " + ", ".join(f"{k} {v:.3f}" for k, v in median.items()))
    if median_in_trial:
        print("(information) median halving-in-trial / full: "
              + ", ".join(f"{k} {v:.3f}" for k, v in median_in_trial.items()))
    goals = [
        common.goal_line(f"multi-fidelity: hypervolume with successive halving / full evaluation, ref "
                         f"({reference[0]:.3g}, 0), {trials} R-SFT runs, median of {n} seeds (x)",
                         median["hypervolume"], GOAL_HV),
        common.goal_line(f"multi-fidelity: evaluation compute (records + documents) with halving / full, "
                         f"median of {n} seeds (fraction)", median["records_docs"], GOAL_COMPUTE,
                         higher_is_better=False),
        common.goal_line(f"multi-fidelity: evaluation compute (seconds) with halving / full, median of {n} "
                         f"seeds (fraction)", median["seconds"], GOAL_COMPUTE, higher_is_better=False),
        common.goal_line(f"multi-fidelity: true-front drop rate with halving (pruned candidates on the front of all "
                         f"the arm's candidates at full fidelity / that front), {n} seeds pooled (fraction)",
                         drops["halving"]["rate"], GOAL_FRONT_DROP, higher_is_better=False),
    ]
    plan = halving_eval.rung_plan()
    name = "multifidelity_real" if real else f"multifidelity_edits{args.edits}" if args.edits else "multifidelity"
    common.write_result(name, args, {
        "reference_point": reference,
        "base": {k: base[k] for k in ("edit_score", "general_score", "combined_score") if k in base},
        "setup": {
            "world": world, "model": settings.model, "demo_key": demo_key, "space": space, "sampler": SAMPLER,
            "rsft_runs": trials, "extra_candidates": EXTRA, "seeds": list(seeds), "arms": list(arms),
            "fidelity": {"rungs": fid.rungs, "reduction_factor": fid.reduction_factor, "error_rate": fid.error_rate,
                         "drop_rule": DROP_RULE,
                         "against_front": {"halving": True, "halving-in-trial": False},
                         "seed": "the search seed"},
            "records_per_rung": [len(plan.records(r)) for r in range(plan.rungs)],
            "docs_per_rung": [sum(len(d[r]) for d in plan.general_docs.values()) for r in range(plan.rungs)],
            "skipped_rungs": list(plan.skipped), "rungs_described": plan.describe(), "min_items": plan.min_items,
            "general_tasks": list(settings.general_tasks), "edit_weights": settings.edit_weights,
            "eval_mode": settings.eval_mode, "setup_seconds": setup_s,
            "rsft_trained": trainer.trained, "rsft_reused": trainer.reused, "rsft_seconds": trainer.seconds,
            "kept_results": {"folder": str(work), "read_back": memo.read_back},
        },
        "row_fields": ROW_FIELDS, "rung_fields": RUNG_FIELDS,
        "per_seed_ratios": dict(zip(map(str, seeds), ratios, strict=True)), "median_ratios": median,
        "in_trial_only": {"per_seed_ratios": dict(zip(map(str, seeds), in_trial, strict=True)) if in_trial else {},
                          "median_ratios": median_in_trial},
        "true_front_drops": drops, "runs": runs, "goals": goals,
    })


def _real_world() -> tuple:
    """(EvalSettings, search space) of the real config offline, as bench_real.py loads it, with a
    teacher-forced edit objective and WikiText-2 cut to REAL_WORDS words."""
    import bench_real

    from mm4ke_ray.evaluate.candidate import eval_settings

    overrides = bench_real.offline_overrides()
    overrides["evaluation.local_tasks.wikitext"]["max_words"] = REAL_WORDS
    overrides.update({"evaluation.mode": "teacher-forced", "objectives.edit_mode": "teacher-forced"})
    config = bench_real.load(bench_real.CONFIG, overrides)
    return eval_settings(config, "cpu"), config.search.space.model_dump(exclude_none=True)


def _records(settings) -> list:
    """The edit records R-SFT trains on: those the evaluator scores (the config's limit applies;
    without it the real world's R-SFT trained on all 1,301 ZsRE records instead of 25)."""
    from mm4ke_ray.data import load_edit_records

    return load_edit_records(settings.edits, limit=settings.limit, skip_invalid=settings.skip_invalid,
                             fmt=settings.data_format).records


class _Trainer:
    """R-SFT of a trial's parameters as the sweep's trial configures it (`search/trial.py`'s
    `_rsft_config`), cached per (seed, parameters): seeded and deterministic on CPU."""

    def __init__(self, model, tokenizer, records, prompt_format: str, memo: DiskMemo):
        self.model, self.tokenizer, self.records, self.prompt_format = model, tokenizer, records, prompt_format
        self.memo = memo
        self.cache: dict[str, dict | None] = {}
        self.trained = self.reused = 0
        self.seconds = 0.0

    def delta(self, search, params: dict) -> tuple[dict | None, bool]:
        """(the delta, or None if R-SFT diverged; whether it came from the cache)."""
        from mm4ke_ray.rsft import DivergedError, RSFTConfig, run_rsft

        config = RSFTConfig(
            layer=int(params["layer"]), epochs=int(params["epochs"]), steps=int(params["steps"]),
            lr=float(params["lr"]), threshold=float(params["threshold"]), optimizer=search.rsft.optimizer,
            prompt_format=self.prompt_format, seed=search.seed, lr_schedule=str(params["lr_schedule"]),
            warmup_ratio=float(params["warmup_ratio"]),
        )
        key = config.model_dump_json()
        if key in self.cache:
            self.reused += 1
            return self.cache[key], True
        start = time.perf_counter()

        def train() -> dict | None:
            try:
                return run_rsft(self.model, self.tokenizer, self.records, config).delta
            except DivergedError:
                return None

        delta, _ = self.memo.tensors(key, train)  # read back if a killed run trained it
        self.seconds += self.memo.get(("rsft_seconds", key), lambda: time.perf_counter() - start)
        self.trained += 1
        self.cache[key] = delta
        return delta, False


class _Kept:
    """An evaluator whose results are kept on disk (`disk_memo`) under its fidelity setting's tag:
    evaluations are deterministic, so a resumed run reads back what the killed one measured."""

    def __init__(self, evaluator, memo: DiskMemo, tag: str):
        self.evaluator, self.memo, self.tag = evaluator, memo, tag
        self.rung_plan = evaluator.rung_plan

    def evaluate(self, delta: dict, alpha: float, sparsity: float, seed: int = 0, rung: int | None = None,
                 prior: dict | None = None) -> dict:
        key = (self.tag, tensors_digest(delta), alpha, sparsity, seed, rung, prior is not None)

        def measured() -> dict:
            start = time.perf_counter()
            metrics = self.evaluator.evaluate(delta, alpha, sparsity, seed, rung, prior)
            return {**metrics, KEPT_WALL: time.perf_counter() - start}

        return self.memo.get(key, measured)


def _search(arm: str, seed: int, trials: int, space: dict, evaluator, trainer: _Trainer, fid,
            reference: tuple[float, float], base: dict) -> dict:
    """One sweep's search, trial by trial as Tune would drive the searcher: suggest, R-SFT,
    evaluate the candidates (in full, or through the rungs), tell the trial's result."""
    import optuna

    from mm4ke_ray.config import SearchConfig
    from mm4ke_ray.evaluate.pareto_front import hypervolume
    from mm4ke_ray.evaluate.rung_reuse import REUSED_DOCS, REUSED_RECORDS, scored_items
    from mm4ke_ray.evaluate.scores import COMBINED, OBJECTIVES
    from mm4ke_ray.search import space as sp
    from mm4ke_ray.search.front_board import front_points
    from mm4ke_ray.search.searcher import EXTRA_POINTS_KEY, CandidateAwareOptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search = SearchConfig(num_trials=trials, sampler=SAMPLER, seed=seed, space=space)
    searched, fixed = sp.split_space(search)
    searcher = CandidateAwareOptunaSearch(
        space=searched, metric=[o.name for o in OBJECTIVES], mode=[o.mode for o in OBJECTIVES],
        sampler=sp.make_sampler(search, points_per_trial=EXTRA + 1),
    )
    names = [o.name for o in (*OBJECTIVES, COMBINED)]
    rows, evaluations, per_rung, trial_log, shadow = [], [], [0] * fid.rungs, [], []
    start = time.perf_counter()
    for i in range(trials):
        trial_id = f"{arm}_{seed}_{i:05d}"
        params = {**fixed, **searcher.suggest(trial_id)}
        delta, reused = trainer.delta(search, params)
        if delta is None:
            trial_log.append({"params": params, "status": "diverged", "rsft_reused": reused})
            searcher.on_trial_complete(trial_id, {"status": "diverged", "params": params,
                                                  **dict.fromkeys(names, float("nan"))})
            continue
        cands = sp.merge_candidates(search, float(params["alpha"]), float(params["sparsity"]), EXTRA,
                                    sp.candidate_seed(search.seed, params))
        # The front the driver would have published before this trial: base and every full row so far.
        front = front_points([base, *rows]) if arm != "full" and fid.against_front else []
        full, evals, reached, rung_logs = _evaluate(arm, cands, delta, evaluator, seed, fid, front)
        shadow += [[i, c["index"], c["index"] in {f["index"] for f in full},
                    *(_round(c["shadow"][o.name]) for o in OBJECTIVES)] for c in cands]
        evaluations += evals
        for r, count in enumerate(reached):
            per_rung[r] += count
        for c in full:
            rows.append({"trial": i, "kind": c["kind"], "alpha": c["alpha"], "sparsity": c["sparsity"],
                         **{k: c["metrics"][k] for k in names}})
        sampled = full[0]["metrics"]  # index 0, the sampled candidate, always reaches the full rung
        searcher.on_trial_complete(trial_id, {
            "status": "ok", **{o.name: sampled[o.name] for o in OBJECTIVES}, "params": params,
            EXTRA_POINTS_KEY: [{"params": {**params, **{k: c[k] for k in sp.MERGE_PARAMS}},
                                "values": [c["metrics"][o.name] for o in OBJECTIVES]}
                               for c in full[1:] if c["in_space"]],
        })
        trial_log.append({"params": params, "status": "ok", "rsft_reused": reused, "candidates_per_rung": reached,
                          "full_candidates": [c["index"] for c in full], "lower_rungs": rung_logs})
    scored = [scored_items(m) for m in evaluations]
    compute = {"records": sum(r for r, _ in scored), "docs": sum(d for _, d in scored),
               "reused_records_docs": sum(int(m.get(REUSED_RECORDS, 0)) + int(m.get(REUSED_DOCS, 0))
                                          for m in evaluations),
               "seconds": sum(float(m["eval_seconds"]) for m in evaluations),
               "wall_seconds": sum(float(m["wall_seconds"]) for m in evaluations)}
    compute["records_docs"] = compute["records"] + compute["docs"]
    # Per rung: a low rung's evaluation also pays fixed costs (merge, restore, lm-eval's set-up per
    # call) that do not shrink with its items, so seconds fall less than records + documents.
    compute["seconds_per_rung"] = [sum(float(m["eval_seconds"]) for m in evaluations if m["rung"] == r)
                                   for r in range(fid.rungs)]
    return {"arm": arm, "seed": seed, "rsft_runs": trials, "hypervolume": hypervolume(rows, reference),
            "full_candidates": len(rows), "evaluations": len(evaluations), "candidates_per_rung": per_rung,
            "eval_compute": compute, "extra_points_told": searcher.extra_points_told,
            "layers": sorted({int(t["params"]["layer"]) for t in trial_log}),
            "diverged": sum(t["status"] == "diverged" for t in trial_log),
            "lower_rungs": _rung_counts(trial_log, fid.rungs), "seconds": time.perf_counter() - start,
            "rows": [[_round(r[k]) for k in ROW_FIELDS] for r in rows], "trials": trial_log,
            "all_candidates": shadow}


def _rung_counts(trial_log: list[dict], rungs: int) -> list[dict]:
    """Per lower rung, over all trials: candidates evaluated, dominated at all among their trial's
    candidates, dominated beyond doubt, promoted (survivors, the quota's fill, the sampled one)."""
    out = []
    for r in range(rungs - 1):
        logs = [t["lower_rungs"][r] for t in trial_log if len(t.get("lower_rungs", [])) > r]
        cands = [c for log in logs for c in log.values()]
        out.append({"evaluated": len(cands), "dominated": sum(c[4] for c in cands),
                    "dominated_beyond_doubt": sum(c[5] for c in cands), "beaten_by_front": sum(c[6] for c in cands),
                    "promoted": sum(t["candidates_per_rung"][r + 1] for t in trial_log
                                    if len(t.get("lower_rungs", [])) > r)})
    return out


def _evaluate(arm: str, cands: list[dict], delta: dict, evaluator, seed: int, fid, front: list
              ) -> tuple[list[dict], list[dict], list[int]]:
    """(the full-fidelity candidates in index order with their `metrics`, every evaluation's
    metrics, candidates evaluated per rung). The halving arm is `_evaluate_candidates`'s logic
    in `search/trial.py`, one candidate after another instead of over an actor pool."""
    from mm4ke_ray.evaluate.fidelity import run_rungs, rung_result
    from mm4ke_ray.evaluate.rung_reuse import REUSE

    for i, c in enumerate(cands):
        c["index"] = i

    def score(i: int, rung: int | None, prior: dict | None = None) -> dict:
        c = cands[i]
        start = time.perf_counter()
        metrics = dict(evaluator.evaluate(delta, c["alpha"], c["sparsity"], seed, *(() if rung is None else (rung, prior))))
        wall = metrics.pop(KEPT_WALL, None)  # as first measured, where the evaluation was read back
        last = rung is None or rung == fid.rungs - 1
        return {**metrics, "wall_seconds": time.perf_counter() - start if wall is None else wall,
                "rung": fid.rungs - 1 if last else rung}

    if arm == "full":
        for i, c in enumerate(cands):
            c["metrics"] = c["shadow"] = score(i, None)
        return cands, [c["metrics"] for c in cands], [len(cands)] + [0] * (fid.rungs - 1), []
    by_rung: dict[int, dict[int, dict]] = {}

    def evaluate_at(rung: int, keys: list[str]) -> dict:
        below = [r for r in sorted(by_rung) if r < rung]  # the candidates' last rung: its items are reused
        by_rung[rung] = {int(k): score(int(k), rung, by_rung[below[-1]][int(k)].get(REUSE) if below else None)
                         for k in keys}
        return {str(i): rung_result(str(i), m) for i, m in by_rung[rung].items()}

    history = run_rungs([str(i) for i in range(len(cands))], evaluate_at, fid.rungs, fid.reduction_factor,
                        fid.error_rate, keep=["0"], front=front, skip=evaluator.rung_plan().skipped)
    last = fid.rungs - 1
    full = []
    for i, c in enumerate(cands):
        if i in by_rung.get(last, {}):
            c["metrics"] = c["shadow"] = by_rung[last][i]
            full.append(c)
        else:  # pruned: its full value, for the true-front drop rate only (not compute, not a row)
            c["shadow"] = evaluator.evaluate(delta, c["alpha"], c["sparsity"], seed, last)
    reached = [len(h) for h in history] + [0] * (fid.rungs - len(history))
    rungs = [_rung_log(h, fid.error_rate, front) for h in history[:-1]]
    return full, [m for got in by_rung.values() for m in got.values()], reached, rungs


def _rung_log(results: dict, error_rate: float, front: list) -> dict:
    """A lower rung of one trial: each candidate's scores and SEs, whether another candidate
    dominates it at all (plain Pareto dominance on the rung's scores) and beyond doubt, and
    whether the sweep's front beats it (the last two are what drop it)."""
    from mm4ke_ray.evaluate.fidelity import beaten_by_exact, dominators

    group = list(results.values())

    def plain(a) -> bool:
        return any(b is not a and all(x >= y for x, y in zip(b.values(), a.values(), strict=True))
                   and b.values() != a.values() for b in group)

    return {k: [*map(_round, (r.edit, r.general, r.edit_se, r.general_se)), plain(r),
                dominators(r, group, error_rate) > 0, any(beaten_by_exact(r, pt, error_rate) for pt in front)]
            for k, r in results.items()}


def _front_drops(runs: list[dict]) -> dict:
    """Over `runs` (one arm, every seed): candidates on the front of all of a run's candidates at
    full fidelity (pruned ones at their shadow full values), and how many of them were pruned."""
    from mm4ke_ray.evaluate.pareto_front import pareto_front

    front = dropped = 0
    for run in runs:
        points = [{"edit_score": e, "general_score": g} for *_, e, g in run["all_candidates"]]
        on = pareto_front(points)
        front += len(on)
        dropped += sum(1 for i in on if not run["all_candidates"][i][2])
    return {"front": front, "dropped": dropped, "rate": dropped / front if front else 0.0}


def _round(x):
    return round(x, 5) if isinstance(x, float) else x


def _seed_ratios(runs: list[dict], seed: int, arm: str = "halving") -> dict:
    by_arm = {r["arm"]: r for r in runs if r["seed"] == seed}
    full, halving = by_arm["full"], by_arm[arm]
    return {
        "hypervolume": _ratio(halving["hypervolume"], full["hypervolume"]),
        "records_docs": _ratio(halving["eval_compute"]["records_docs"], full["eval_compute"]["records_docs"]),
        "seconds": _ratio(halving["eval_compute"]["seconds"], full["eval_compute"]["seconds"]),
        "wall_seconds": _ratio(halving["eval_compute"]["wall_seconds"], full["eval_compute"]["wall_seconds"]),
    }


def _line(run: dict) -> str:
    c = run["eval_compute"]
    return (f"seed {run['seed']} {run['arm']:7s}: HV {run['hypervolume']:.4f}, {run['full_candidates']} full "
            f"candidates, per rung {run['candidates_per_rung']}; compute {c['records']} records + {c['docs']} docs, "
            f"eval {c['seconds']:.1f} s (per rung {', '.join(f'{x:.1f}' for x in c['seconds_per_rung'])}; wall "
            f"{c['wall_seconds']:.1f} s); layers {run['layers']}, "
            f"{run['diverged']} diverged; {run['seconds']:.0f} s in all"
            + "".join(f"\n    rung {r}: {x['evaluated']} evaluated, {x['dominated']} dominated, "
                      f"{x['dominated_beyond_doubt']} beyond doubt, {x['beaten_by_front']} beaten by the front, "
                      f"{x['promoted']} promoted"
                      for r, x in enumerate(run["lower_rungs"]) if x["evaluated"]))


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("inf") if a > 0 else 1.0


if __name__ == "__main__":
    main()
