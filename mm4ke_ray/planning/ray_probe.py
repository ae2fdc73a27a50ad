"""Ray's fixed costs measured here and now: a local Ray's start and stop, and one trial's start-up.

The sweep benchmark's figures (`fixed_costs.py`) are from one day's load on this machine; a
trial's start-up is a process spawn and the imports of torch, transformers and the project
(15-25 s a trial on 2 loaded CPUs), which follows the load of the hour, not of that day: a demo
plan from the stored figures erred from -35 % to +44 % (benchmarks/README). So `plan --probe`
starts a local Ray, and times one empty trial as the sweep's runner starts it: a Ray task
standing in for Tune's trial actor (a fresh process importing the trial's modules), which for
runner `train` fits a one-worker Ray Train trainer whose worker imports what R-SFT imports.
What each trial does beyond that (loading the model and edits) is the probe's `worker_load_s`.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace

from mm4ke_ray.planning.fixed_costs import FixedCosts


def _worker_body(_config: dict | None = None) -> None:
    import mm4ke_ray.rsft.to_folder  # noqa: F401 - what an R-SFT worker imports before it loads the model


def _trial_body(runner: str, storage: str) -> None:
    """A trial's start-up without its work: the trial process, and for `train` its worker group."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.backend import BackendConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    import mm4ke_ray.search.rsft_runner  # noqa: F401 - the trial's own imports

    if runner == "train":
        DataParallelTrainer(_worker_body, backend_config=BackendConfig(),
                            scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
                            run_config=RunConfig(storage_path=storage, name="probe")).fit()
    else:
        _worker_body()


def probe_fixed_costs(fixed: FixedCosts, runner: str, cpus: float) -> FixedCosts:
    """`fixed` with Ray start (+ stop) and `runner`'s trial start-up measured now on a local Ray."""
    import ray

    from mm4ke_ray.search.local_ray import init_local_ray

    temp = tempfile.mkdtemp(prefix="mp", dir="/tmp")  # short: Ray's socket paths are length-limited
    start = time.perf_counter()
    init_local_ray(num_cpus=max(2, int(cpus)), include_dashboard=False, log_to_driver=False,
                   configure_logging=False, _temp_dir=temp)
    ray_start = time.perf_counter() - start
    try:
        start = time.perf_counter()
        ray.get(ray.remote(num_cpus=0)(_trial_body).remote(runner, f"{temp}/train"))
        startup = time.perf_counter() - start
    finally:
        start = time.perf_counter()
        ray.shutdown()
        ray_start += time.perf_counter() - start
    basis = (f"Ray start + stop {ray_start:.1f} s and one empty trial's start-up (runner {runner}) "
             f"{startup:.1f} s measured here now; Tune/MLflow from {fixed.basis}")
    return replace(fixed, ray_start_s=ray_start, trial_startup_s={**fixed.trial_startup_s, runner: startup},
                   basis=basis, probed=True)
