"""The trial's R-SFT, once: on a Ray Train worker (runner 'train'), in Ray Train's local mode in
the trial's own process ('train-local'), or as a Ray task ('task').

Either way `rsft.to_folder.rsft_to_folder` trains and writes the delta; this returns the R-SFT summary
and a local folder holding the delta (None when there is none: diverged, failed).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import ray
import torch
from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.backend import BackendConfig
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

from mm4ke_ray.config import SearchConfig
from mm4ke_ray.evaluate.candidate import EvalSettings
from mm4ke_ray.rsft.config import RSFTConfig
from mm4ke_ray.rsft.to_folder import rsft_to_folder
from mm4ke_ray.search.rsft_worker import rsft_job, rsft_local_loop, rsft_train_loop
from mm4ke_ray.search.space import split_space
from mm4ke_ray.search.train_placement import new_placement_key, release_placement_group
from mm4ke_ray.search.trial_context import TrialContext

# Ray Train retries a worker group that cannot start (60 s each) without limit by default: a
# trial whose worker can never be placed would wait forever. Past this many, the trial fails with
# the reason and Tune retries it (search.max_failures).
TRAIN_START_RETRIES = 3
LOCAL_RUNNER = "train-local"


def run_trial_rsft(ctx: TrialContext, params: dict, trial_id: str) -> tuple[dict, str | None]:
    """R-SFT of `params` by the sweep's runner: its summary and the local folder of its delta."""
    if ctx.runner in ("train", LOCAL_RUNNER):
        return _rsft_via_train(ctx, params, trial_id, local=ctx.runner == LOCAL_RUNNER)
    return _rsft_via_task(ctx, params)


def rsft_config(params: dict, search: SearchConfig, settings: EvalSettings) -> RSFTConfig:
    params = {**split_space(search)[1], **params}  # a caller's partial params: the space's fixed values fill in
    return RSFTConfig.from_setting(params, search, settings.prompt_format)


def rsft_arguments(settings: EvalSettings, search: SearchConfig, params: dict) -> dict:
    """`rsft_to_folder`'s keyword arguments for this trial's parameters, all but the folder and device."""
    s = settings
    return {"model": s.model, "edits": s.edits, "config": rsft_config(params, search, s), "dtype": s.dtype,
            "trust_remote_code": s.trust_remote_code, "allow_pickle": s.allow_pickle, "limit": s.limit,
            "skip_invalid": s.skip_invalid, "data_format": s.data_format}


def trial_rsft(settings: EvalSettings, search: SearchConfig, params: dict, out: str, device: str) -> dict:
    """R-SFT of this trial's parameters into `out` (`rsft_to_folder`); its summary for Tune."""
    return rsft_to_folder(out, device=device, **rsft_arguments(settings, search, params)).summary()


def _rsft_via_train(ctx: TrialContext, params: dict, trial_id: str, local: bool = False) -> tuple[dict, str | None]:
    # One worker, so no torch process group: TorchTrainer would start one, and its rendezvous
    # store (torch's TCPStore) listens on every interface, whatever the node's IP. Local mode
    # (num_workers=0): the same training function in this process, no controller or worker
    # group; this process holds R-SFT's resources (`resources.trial_resources`).
    placement_key = None if local else new_placement_key()
    scaling = ScalingConfig(num_workers=0) if local else ScalingConfig(
        num_workers=1, use_gpu=ctx.rsft_gpus > 0, resources_per_worker={"CPU": ctx.rsft_cpus, "GPU": ctx.rsft_gpus})
    trainer = DataParallelTrainer(
        rsft_local_loop if local else rsft_train_loop,  # a worker imports only rsft_worker.py until R-SFT runs
        backend_config=BackendConfig(),
        train_loop_config={"job": rsft_job(rsft_arguments(ctx.settings, ctx.search, params)),
                           "placement_key": placement_key},
        scaling_config=scaling,
        run_config=RunConfig(storage_path=ctx.storage_path, name=trial_id,
                             failure_config=FailureConfig(controller_failure_limit=TRAIN_START_RETRIES)),
    )
    try:
        result = trainer.fit()
    finally:
        if placement_key is not None:
            release_placement_group(placement_key)  # one Ray Train may leave behind (train_placement.py)
    if local:
        return result.return_value["summary"], result.return_value["folder"]
    summary = dict(result.metrics or {})
    if result.checkpoint is None:
        return summary, None
    local = tempfile.mkdtemp(prefix="mm4ke-delta-")
    result.checkpoint.to_directory(local)
    return summary, local


@ray.remote
def _rsft_task(settings, search, params) -> tuple[dict, dict]:
    out = tempfile.mkdtemp(prefix="mm4ke-delta-")
    summary = trial_rsft(settings, search, params, out, "cuda" if torch.cuda.is_available() else "cpu")
    files = {p.name: p.read_bytes() for p in Path(out).iterdir()} if summary["status"] == "ok" else {}
    return summary, files


def _rsft_via_task(ctx: TrialContext, params: dict) -> tuple[dict, str | None]:
    # "DEFAULT": outside the trial's placement group, which holds only the trial's CPU-free reservation.
    task = _rsft_task.options(num_cpus=ctx.rsft_cpus, num_gpus=ctx.rsft_gpus, scheduling_strategy="DEFAULT")
    summary, files = ray.get(task.remote(ctx.settings, ctx.search, params))
    if not files:
        return summary, None
    local = tempfile.mkdtemp(prefix="mm4ke-delta-")
    for name, data in files.items():
        (Path(local) / name).write_bytes(data)
    return summary, local
