"""Plan a sweep before submitting it: GPU-hours and wall time from the config and unit costs.

Ray-free. `plan_sweep` reads the config (model size from config.json + safetensors headers,
records, trials, candidates, general tasks), measures unit costs with a short probe on this
machine (`probe.py`) or scales stored per-GPU-kind figures (`costs.py`), adds the fixed costs
of Ray, Tune and MLflow measured by the sweep benchmark (`fixed_costs.py`), and returns the
estimate (`estimate.py`); `report.render` prints it.

Flow: config → data → rsft → merge → evaluate → search → tracking → export, commands on top;
planning/ reads the config, the data and search's resource plan, for `mm4ke-ray plan`.
"""

from mm4ke_ray.planning.sweep_plan import SweepPlan, plan_sweep

__all__ = ["SweepPlan", "plan_sweep"]
