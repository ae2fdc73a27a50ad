"""Ray's fixed costs measured here and now, for `mm4ke-ray plan --probe` (planning/ray_probe.py).

A local Ray's start and stop, and one trial's start-up without its work: a Ray task standing in
for Tune's trial actor (a fresh process that imports this module, hence the trial's modules:
torch, transformers, Ray Train, the project's R-SFT), which for runner `train` fits a one-worker
Ray Train trainer as `rsft_runner` does, its worker importing the same (the sweep's worker imports
a little less since `rsft_worker.py`: ~0.1 s of Optuna and the evaluators, within the probe's noise).
"""

from __future__ import annotations

import shutil
import tempfile
import time

import ray
from ray.train import RunConfig, ScalingConfig
from ray.train.backend import BackendConfig
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

import mm4ke_ray.search.rsft_runner  # noqa: F401 - a trial's own imports, paid by the probe's processes
from mm4ke_ray.search.local_ray import init_local_ray


def _worker_body(_config: dict | None = None) -> None:
    """An R-SFT worker's start without its work (its imports came with this module)."""


def _trial_body(runner: str, storage: str) -> None:
    if runner in ("train", "train-local"):  # local mode: no worker, the body runs here
        workers = ScalingConfig(num_workers=0) if runner == "train-local" else ScalingConfig(
            num_workers=1, resources_per_worker={"CPU": 1})
        DataParallelTrainer(_worker_body, backend_config=BackendConfig(), scaling_config=workers,
                            run_config=RunConfig(storage_path=storage, name="probe")).fit()


def time_ray_start_and_trial(runner: str, cpus: int) -> tuple[float, float]:
    """(seconds of a local Ray's start + stop, seconds of one empty trial's start-up by `runner`)."""
    temp = tempfile.mkdtemp(prefix="mp", dir="/tmp")  # short: Ray's socket paths are length-limited
    start = time.perf_counter()
    init_local_ray(num_cpus=max(2, cpus), include_dashboard=False, log_to_driver=False, configure_logging=False,
                   _temp_dir=temp)
    ray_start = time.perf_counter() - start
    try:
        start = time.perf_counter()
        ray.get(ray.remote(num_cpus=0)(_trial_body).remote(runner, f"{temp}/train"))
        startup = time.perf_counter() - start
    finally:
        start = time.perf_counter()
        ray.shutdown()
        ray_start += time.perf_counter() - start
        shutil.rmtree(temp, ignore_errors=True)  # the probe's Ray session logs: nothing reads them after
    return ray_start, startup
