"""Ray's fixed costs measured at the load of the moment, in place of the benchmark's.

The sweep benchmark's figures (`fixed_costs.py`) are from one day's load on this machine; a
trial's start-up is a process spawn and the imports of torch, transformers and the project
(14-30 s a trial on 2 loaded CPUs), which follows the load of the hour, not of that day: a demo
plan from the stored figures erred from -35 % to +44 % (benchmarks/README). So `plan --probe`
starts a local Ray and times one empty trial as the sweep's runner starts it
(`search/start_probe.py`). What each trial does beyond that (loading the model and edits) is the
probe's `worker_load_s`.
"""

from __future__ import annotations

from dataclasses import replace

from mm4ke_ray.planning.fixed_costs import FixedCosts


def probe_fixed_costs(fixed: FixedCosts, runner: str, cpus: float) -> FixedCosts:
    """`fixed` with Ray start (+ stop) and `runner`'s trial start-up measured now on a local Ray."""
    from mm4ke_ray.search.start_probe import time_ray_start_and_trial  # ray: only when probing

    ray_start, startup = time_ray_start_and_trial(runner, int(cpus))
    basis = (f"Ray start + stop {ray_start:.1f} s and one empty trial's start-up (runner {runner}) "
             f"{startup:.1f} s measured here now; Tune/MLflow from {fixed.basis}")
    return replace(fixed, ray_start_s=ray_start, trial_startup_s={**fixed.trial_startup_s, runner: startup},
                   basis=basis, probed=True)
