"""One Tune trial, a thin trainable: R-SFT once (`search.rsft_runner`: a Ray Train worker or a
Ray task), then its merge candidates fanned out over the merge-eval pool (`search.trial_candidates`).

The trainable only rebuilds configs and calls library code. The delta is the trial's checkpoint;
R-SFT never re-runs for another α or sparsity.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import ray
from ray import tune

from mm4ke_ray.config import SearchConfig
from mm4ke_ray.delta import load_delta
from mm4ke_ray.evaluate.scores import COMBINED, OBJECTIVES
from mm4ke_ray.schema import MERGE_PARAMS, PRUNED_CANDIDATES
from mm4ke_ray.search.rsft_runner import run_trial_rsft
from mm4ke_ray.search.searcher import EXTRA_POINTS_KEY
from mm4ke_ray.search.space import split_space
from mm4ke_ray.search.trial_candidates import evaluate_merges, rung_digest
from mm4ke_ray.search.trial_context import TrialContext
from mm4ke_ray.tracking.system_samples import (
    SYSTEM_METRICS,
    TRIAL_END_MS,
    TRIAL_START_MS,
    now_ms,
    start_sampling,
)

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"  # a trial's final report, inside its checkpoint


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
    summary, delta_dir = run_trial_rsft(ctx, params, trial_id)
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
    digest = rung_digest(ctx, delta)  # for the rung records: the delta itself is freed before evaluating
    del delta
    eval_start = time.perf_counter()
    cands, pruned, compute = evaluate_merges(ctx, params, delta_ref, trial_id, digest)
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
