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
from mm4ke_ray.evaluate.scores import COMBINED, OBJECTIVES
from mm4ke_ray.rsft.config import RSFTConfig
from mm4ke_ray.rsft.run import rsft_to_folder
from mm4ke_ray.schema import MERGE_PARAMS, PRUNED_CANDIDATES
from mm4ke_ray.search.searcher import EXTRA_POINTS_KEY
from mm4ke_ray.search.space import split_space
from mm4ke_ray.search.train_placement import (
    new_placement_key,
    record_placement_group,
    release_placement_group,
)
from mm4ke_ray.search.trial_candidates import _digest, _evaluate_merges
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
SUMMARY_FILE = "rsft-summary.json"  # the R-SFT summary, inside the Ray Train checkpoint
# Ray Train retries a worker group that cannot start (60 s each) without limit by default: a
# trial whose worker can never be placed would wait forever. Past this many, the trial fails with
# the reason and Tune retries it (search.max_failures).
TRAIN_START_RETRIES = 3


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
