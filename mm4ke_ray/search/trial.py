"""One Tune trial, a thin trainable: R-SFT once (a Ray Train worker or a Ray task, calling
`rsft.run.rsft_to_folder`), then its merge candidates fanned out over the merge-eval pool.

The trainable only rebuilds configs and calls library code. The delta is the trial's checkpoint;
R-SFT never re-runs for another α or sparsity.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import ray
import ray.train
import ray.train.torch
import torch
from ray import tune
from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.backend import BackendConfig
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

from mm4ke_ray.config import SearchConfig
from mm4ke_ray.delta import load_delta
from mm4ke_ray.evaluate.candidate import EvalSettings
from mm4ke_ray.evaluate.fidelity import (
    EDIT_SE,
    EVAL_DOCS,
    EVAL_RECORDS,
    GENERAL_SE,
    RungResult,
    run_rungs,
    rung_result,
)
from mm4ke_ray.evaluate.scores import COMBINED, OBJECTIVES
from mm4ke_ray.rsft.config import RSFTConfig
from mm4ke_ray.rsft.run import rsft_to_folder
from mm4ke_ray.schema import ALPHA, EXTRA, MERGE_PARAMS, PRUNED_CANDIDATES, SPARSITY
from mm4ke_ray.search.front_board import read_front
from mm4ke_ray.search.rung_store import RungStore, delta_digest
from mm4ke_ray.search.searcher import EXTRA_POINTS_KEY
from mm4ke_ray.search.space import candidate_seed, mark_in_space, merge_candidates, split_space
from mm4ke_ray.search.surrogate import candidate_grid, choose_mode, surrogate_search
from mm4ke_ray.search.train_placement import (
    new_placement_key,
    record_placement_group,
    release_placement_group,
)
from mm4ke_ray.tracking.system_samples import (
    SYSTEM_METRICS,
    TRIAL_END_MS,
    TRIAL_START_MS,
    now_ms,
    start_sampling,
)

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"  # a trial's final report, inside its checkpoint
SUMMARY_FILE = "rsft-summary.json"  # the R-SFT summary, inside the Ray Train checkpoint
# Ray Train retries a worker group that cannot start (60 s each) without limit by default: a
# trial whose worker can never be placed would wait forever. Past this many, the trial fails with
# the reason and Tune retries it (search.max_failures).
TRAIN_START_RETRIES = 3
SURROGATE_INITIAL = 4  # merge.candidates surrogate: evaluations before its first fit (sampled, pure R-SFT, 2 more)


@dataclass(frozen=True)
class TrialContext:
    """What every trial shares: resolved settings, the search config and the actor pool."""

    settings: EvalSettings
    search: SearchConfig
    extra_candidates: int
    runner: str  # "train" or "task"
    rsft_cpus: float
    rsft_gpus: float
    storage_path: str
    actors: tuple
    allow_pickle: bool = False  # model.allow_pickle: load pickle checkpoints too
    system_metrics_s: float | None = None  # tracking.system_metrics: sample every this many seconds; None: off
    fidelity_error_rate: float = 0.05  # evaluation.fidelity.error_rate (rungs and factor are in `settings`)
    rungs_path: str | None = None  # folder of the trials' rung records (rung_store.py); None: not kept
    front_key: str | None = None  # where the driver publishes the sweep's front (front_board.py); None: not used
    merge_candidates: str = "random"  # merge.candidates: random extras, or a per-delta surrogate (surrogate.py)
    merge_grid: int = 6  # merge.grid: points per axis of the surrogate's α × sparsity grid


def _rsft_config(params: dict, search: SearchConfig, settings: EvalSettings) -> RSFTConfig:
    params = {**_fixed(search), **params}  # a caller's partial params: the space's fixed values fill in
    return RSFTConfig(
        layer=int(params["layer"]), epochs=int(params["epochs"]), steps=int(params["steps"]), lr=float(params["lr"]),
        threshold=float(params["threshold"]), optimizer=search.rsft.optimizer, prompt_format=settings.prompt_format,
        seed=search.seed, lr_schedule=str(params["lr_schedule"]), warmup_ratio=float(params["warmup_ratio"]),
    )


def trial_rsft(settings: EvalSettings, search: SearchConfig, params: dict, out: str, device: str,
          allow_pickle: bool = False) -> dict:
    """R-SFT of this trial's parameters into `out` (`rsft_to_folder`); its summary for Tune."""
    s = settings
    return rsft_to_folder(out, model=s.model, edits=s.edits, config=_rsft_config(params, search, s), device=device,
                          dtype=s.dtype, trust_remote_code=s.trust_remote_code, allow_pickle=allow_pickle,
                          limit=s.limit, skip_invalid=s.skip_invalid, data_format=s.data_format).summary()


def _train_loop(cfg: dict) -> None:
    """Ray Train worker body: R-SFT on this worker's device, the delta reported as checkpoint."""
    record_placement_group(cfg["placement_key"])
    previous = ray.train.get_checkpoint()
    if previous is not None:
        # A retried trial whose R-SFT had already finished: Ray Train restored its delta.
        with previous.as_directory() as folder:
            summary = json.loads((Path(folder) / SUMMARY_FILE).read_text())
        ray.train.report(summary, checkpoint=previous)
        return
    out = tempfile.mkdtemp(prefix="mm4ke-delta-")
    summary = trial_rsft(cfg["settings"], cfg["search"], cfg["params"], out, str(ray.train.torch.get_device()),
                    cfg.get("allow_pickle", False))
    checkpoint = None
    if summary["status"] == "ok":
        (Path(out) / SUMMARY_FILE).write_text(json.dumps(summary))
        checkpoint = ray.train.Checkpoint.from_directory(out)
    ray.train.report(summary, checkpoint=checkpoint)


def _rsft_via_train(ctx: TrialContext, params: dict, trial_id: str) -> tuple[dict, str | None]:
    # One worker, so no torch process group: TorchTrainer would start one, and its rendezvous
    # store (torch's TCPStore) listens on every interface, whatever the node's IP.
    placement_key = new_placement_key()
    trainer = DataParallelTrainer(
        _train_loop,
        backend_config=BackendConfig(),
        train_loop_config={"settings": ctx.settings, "search": ctx.search, "params": params,
                           "allow_pickle": ctx.allow_pickle, "placement_key": placement_key},
        scaling_config=ScalingConfig(num_workers=1, use_gpu=ctx.rsft_gpus > 0,
                                     resources_per_worker={"CPU": ctx.rsft_cpus, "GPU": ctx.rsft_gpus}),
        run_config=RunConfig(storage_path=ctx.storage_path, name=trial_id,
                             failure_config=FailureConfig(controller_failure_limit=TRAIN_START_RETRIES)),
    )
    try:
        result = trainer.fit()
    finally:
        release_placement_group(placement_key)  # one Ray Train may leave behind (train_placement.py)
    summary = dict(result.metrics or {})
    if result.checkpoint is None:
        return summary, None
    local = tempfile.mkdtemp(prefix="mm4ke-delta-")
    result.checkpoint.to_directory(local)
    return summary, local


@ray.remote
def _rsft_task(settings, search, params, allow_pickle: bool = False) -> tuple[dict, dict]:
    out = tempfile.mkdtemp(prefix="mm4ke-delta-")
    summary = trial_rsft(settings, search, params, out, "cuda" if torch.cuda.is_available() else "cpu", allow_pickle)
    files = {p.name: p.read_bytes() for p in Path(out).iterdir()} if summary["status"] == "ok" else {}
    return summary, files


def _rsft_via_task(ctx: TrialContext, params: dict) -> tuple[dict, str | None]:
    # "DEFAULT": outside the trial's placement group, which holds only the trial's CPU-free reservation.
    task = _rsft_task.options(num_cpus=ctx.rsft_cpus, num_gpus=ctx.rsft_gpus, scheduling_strategy="DEFAULT")
    summary, files = ray.get(task.remote(ctx.settings, ctx.search, params, ctx.allow_pickle))
    if not files:
        return summary, None
    local = tempfile.mkdtemp(prefix="mm4ke-delta-")
    for name, data in files.items():
        (Path(local) / name).write_bytes(data)
    return summary, local


def sweep_trial(params: dict, ctx: TrialContext) -> None:
    """The Tune function trainable: R-SFT once (runner 'train' or 'task'), then the candidates.

    With `ctx.system_metrics_s`, this machine's system metrics are sampled while the trial runs
    and returned with its result (`tracking.system_samples`); the driver logs them."""
    trial_clock = time.perf_counter()  # the trial's own wall (search/timings.py)
    started = now_ms()
    trial_id = tune.get_context().get_trial_id()
    if _report_again(tune.get_checkpoint()):
        return
    sampler = start_sampling(ctx.system_metrics_s)
    try:
        report, folder = _run_trial({**_fixed(ctx.search), **params}, ctx, trial_id)
    finally:
        samples = sampler.stop() if sampler else None
    report.update({"trial_wall_seconds": time.perf_counter() - trial_clock, TRIAL_START_MS: started,
                   TRIAL_END_MS: now_ms()})
    if samples and samples["rows"]:
        report[SYSTEM_METRICS] = samples
    _report_final(report, folder)


def _run_trial(params: dict, ctx: TrialContext, trial_id: str) -> tuple[dict, str]:
    """R-SFT, then the candidates: the trial's report and the folder to checkpoint with it."""
    start = time.perf_counter()
    if ctx.runner == "train":
        summary, delta_dir = _rsft_via_train(ctx, params, trial_id)
    else:
        summary, delta_dir = _rsft_via_task(ctx, params)
    rsft_wall = time.perf_counter() - start
    if delta_dir is None:
        # Diverged (or otherwise no delta): a final, clear status; checkpointed so a resumed
        # sweep does not train it again. Tune refuses a result without the objectives, so they
        # are NaN: the searcher tells Optuna a FAIL, never a point.
        nan = float("nan")
        return {"status": summary.get("status", "failed"), "reason": summary.get("reason", ""),
                **{o.name: nan for o in (*OBJECTIVES, COMBINED)},
                "rsft_wall_seconds": rsft_wall, "params": params}, tempfile.mkdtemp(prefix="mm4ke-result-")
    delta, _ = load_delta(delta_dir)
    delta_ref = ray.put(delta)
    digest = _digest(ctx, delta)  # for the rung records: the delta itself is freed before evaluating
    del delta
    eval_start = time.perf_counter()
    cands, pruned, compute = _evaluate_merges(ctx, params, delta_ref, trial_id, digest)
    eval_wall = time.perf_counter() - eval_start
    sampled = cands[0]["metrics"]
    extra_points = [
        {"params": {**params, **{k: c[k] for k in MERGE_PARAMS}},
         "values": [c["metrics"][o.name] for o in OBJECTIVES]}
        for c in cands[1:] if c["in_space"]
    ]
    report = {
        "status": "ok",
        **{k: v for k, v in sampled.items() if isinstance(v, int | float)},
        **{k: v for k, v in summary.items() if k in ("rsft_updates", "rsft_seconds")},
        "rsft_wall_seconds": rsft_wall,
        "eval_wall_seconds": eval_wall,
        "num_candidates": len(cands) + len(pruned),
        **compute,
        "params": params,
        "candidates": cands,
        EXTRA_POINTS_KEY: extra_points,
    }
    if pruned:
        report[PRUNED_CANDIDATES] = pruned
    return report, delta_dir


def _evaluate_merges(ctx: TrialContext, params: dict, delta_ref, trial_id: str,
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


def _digest(ctx: TrialContext, delta: dict) -> str | None:
    """The delta's digest where rung records are kept (halving on and a folder for them), else None."""
    if ctx.settings.fidelity_rungs <= 1 or ctx.rungs_path is None:
        return None
    return delta_digest(delta)


def _rung_store(ctx: TrialContext, trial_id: str, delta: dict, cands: list[dict]) -> RungStore | None:
    """The trial's rung record (rung_store.py), with halving on and a folder to keep it in."""
    return _store(ctx, trial_id, _digest(ctx, delta), cands)


def _store(ctx: TrialContext, trial_id: str, digest: str | None, cands: list[dict]) -> RungStore | None:
    """A rung record of these candidates of the delta with `digest`; None where none is kept."""
    s = ctx.settings
    if digest is None:
        return None
    key = {"delta": digest, "candidates": [[c["alpha"], c["sparsity"]] for c in cands],
           "rungs": s.fidelity_rungs, "reduction_factor": s.fidelity_reduction_factor, "seed": s.fidelity_seed}
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
    """
    n = len(ctx.actors)
    offset = zlib.crc32(trial_id.encode()) % n
    done = 0

    def fan_out(rung: int | None, indices: list[int]) -> dict[int, dict]:
        nonlocal done  # round-robin over the pool across rungs, from the trial's own offset
        futures = [ctx.actors[(offset + done + j) % n].evaluate.remote(
            delta_ref, cands[i]["alpha"], cands[i]["sparsity"], ctx.search.seed,
            *(() if rung is None else (rung,))) for j, i in enumerate(indices)]
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
    by_rung: dict[int, dict[int, dict]] = {}
    reused: dict[int, int] = {}  # per candidate, rung results read back from `store`

    def evaluate_at(rung: int, keys: list[str]) -> dict[str, RungResult]:
        indices = [int(k) for k in keys]
        saved = store.get(rung) if store else {}
        todo = [i for i in indices if i not in saved]
        fresh = fan_out(rung, todo) if todo else {}
        if store and fresh:
            store.put(rung, fresh)
        for i in indices:
            reused[i] = reused.get(i, 0) + (i in saved)
        got = {i: fresh[i] if i in fresh else saved[i] for i in indices}
        by_rung[rung] = got
        return {str(i): rung_result(str(i), m) for i, m in got.items()}

    front = read_front(ctx.front_key)
    history = run_rungs([str(i) for i in range(len(cands))], evaluate_at, s.fidelity_rungs,
                        s.fidelity_reduction_factor, ctx.fidelity_error_rate, keep=["0"] if keep_first else [],
                        front=front)
    full, pruned = [], []
    for i, c in enumerate(cands):
        runs = [by_rung[r][i] for r in range(len(history)) if i in by_rung[r]]
        lower = {f"rung{r}.{k}": v for r, m in enumerate(runs) if r < last for k, v in m.items()
                 if k in RUNG_METRICS and isinstance(v, int | float)}
        reached = len(runs) - 1
        c["metrics"] = {**(runs[-1] if reached == last else {}), **lower, "fidelity.rung": reached,
                        "fidelity.reused_rungs": reused.get(i, 0), "fidelity.front_points": len(front),
                        **_compute(runs, prefix="compute.")}
        (full if reached == last else pruned).append(c)
    evaluations = [m for got in by_rung.values() for m in got.values()]
    return full, pruned, _compute(evaluations, prefix="eval_compute_")


# What a lower rung logs of a candidate's evaluation (MLflow `rung{r}.<name>`): its objectives,
# their standard errors and how many records and documents it scored.
RUNG_METRICS = (*(o.name for o in (*OBJECTIVES, COMBINED)), EDIT_SE, GENERAL_SE, EVAL_RECORDS, EVAL_DOCS,
                "eval_seconds")


def _compute(evaluations: list[dict], prefix: str) -> dict:
    """Evaluation compute of some evaluations: records and documents scored, seconds spent."""
    return {f"{prefix}records": sum(int(m.get(EVAL_RECORDS, 0)) for m in evaluations),
            f"{prefix}docs": sum(int(m.get(EVAL_DOCS, 0)) for m in evaluations),
            f"{prefix}seconds": sum(float(m.get("eval_seconds", 0.0)) for m in evaluations)}


def _report_final(report: dict, folder: str) -> None:
    """Report the trial's one result with its checkpoint: the delta plus the result itself."""
    (Path(folder) / RESULT_FILE).write_text(json.dumps(report))
    tune.report(report, checkpoint=tune.Checkpoint.from_directory(folder))


def _report_again(checkpoint) -> bool:
    """A trial restored from its checkpoint (driver restart, retry) reports its saved result
    instead of training and evaluating again. True when it did."""
    if checkpoint is None:
        return False
    with checkpoint.as_directory() as folder:
        saved = Path(folder) / RESULT_FILE
        if not saved.is_file():
            return False
        report = json.loads(saved.read_text())
    tune.report({**report, "restored": True})
    return True


def _fixed(search: SearchConfig) -> dict:
    return split_space(search)[1]
