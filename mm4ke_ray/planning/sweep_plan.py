"""`plan_sweep`: from a config file to a `SweepPlan` (inputs, unit costs, fixed costs, estimate)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mm4ke_ray.config import DEMO, SweepConfig, load_config
from mm4ke_ray.data import load_edit_records
from mm4ke_ray.errors import UserError
from mm4ke_ray.evaluate.precision import precision_report
from mm4ke_ray.planning.costs import UnitCosts, stored_costs
from mm4ke_ray.planning.estimate import Estimate, estimate
from mm4ke_ray.planning.fixed_costs import RESULTS, FixedCosts, load_fixed_costs
from mm4ke_ray.planning.model_size import ModelShape, go_offline, hub_reachable, read_model_shape
from mm4ke_ray.planning.probe import probe_costs
from mm4ke_ray.planning.ray_probe import probe_fixed_costs
from mm4ke_ray.planning.scaled import scaled_costs
from mm4ke_ray.planning.workload import Workload, cluster_resources, workload


@dataclass
class SweepPlan:
    name: str
    config_path: str
    model_name: str
    source: str  # "probe on this machine" or "stored figures of KIND"
    model: ModelShape
    workload: Workload
    units: UnitCosts
    fixed: FixedCosts
    estimate: Estimate
    precision: list[str] = field(default_factory=list)  # general tasks' retention-SE warnings

    def as_json(self) -> dict:
        return {"precision": self.precision, "name": self.name, "config": self.config_path, "model_name": self.model_name, "source": self.source,
                "model": self.model.as_json(), "workload": self.workload.as_json(), "unit_costs": self.units.as_json(),
                "fixed_costs": self.fixed.as_json(), "estimate": self.estimate.as_json()}


def _count_records(config: SweepConfig) -> int:
    d = config.data
    if not Path(d.edits).expanduser().exists() and not hub_reachable():
        go_offline()  # a cached hub dataset still counts; an uncached one fails at once (issue 26 §4)
    try:
        return len(load_edit_records(d.edits, limit=d.limit, skip_invalid=d.skip_invalid, fmt=d.format))
    except UserError as exc:  # a hub dataset offline, a missing file, ...: the planner only needs a count
        raise UserError(f"{exc}\n  (to plan without reading it, give the record count with --records N)") from None
    except Exception as exc:  # noqa: BLE001 - a network error of any client
        raise UserError(f"data.edits '{d.edits}': cannot read it here ({type(exc).__name__}: {exc}); "
                        "give the record count with --records N") from None


def _resolve_demo(config: SweepConfig) -> SweepConfig:
    if DEMO not in (config.model.name, config.data.edits):
        return config
    from mm4ke_ray.demo.resolve import resolve_demo  # builds the demo once (cached)

    return resolve_demo(config)


def plan_sweep(config_path: str | Path, *, gpus: int = 0, cpus: float | None = None, probe: bool = False,
               from_real: bool = False,
               gpu_kind: str = "h200", records: int | None = None, num_trials: int | None = None,
               overrides: dict | None = None, results: str | Path | None = None,
               config: SweepConfig | None = None, units: UnitCosts | None = None,
               fixed: FixedCosts | None = None) -> SweepPlan:
    """Estimate the sweep in `config_path` (or `config`, already loaded) on `gpus` GPUs.

    `probe`: measure unit costs here (needs the model's weights; a GPU plan needs a GPU here).
    Otherwise the figures stored for `gpu_kind` are scaled to the model (GPU plans only).
    `records` stands in for an edit set that cannot be read here (a hub dataset offline).
    `from_real`: a CPU plan from the real SmolLM2 sweep recorded here, scaled by parameter count.
    `units`, `fixed`: costs already probed for this model (another trial count of the same config).
    """
    if gpus < 0:
        raise UserError(f"--gpus must be >= 0, got {gpus}")
    if from_real and (probe or gpus > 0):
        raise UserError("--from-real scales CPU measurements: use it without --probe and with --gpus 0")
    if gpus == 0 and not probe and not from_real and units is None:
        raise UserError("a CPU-only plan needs measured costs: add --probe (seconds on a small model), "
                        "--from-real (the real model's sweep measured here, scaled by parameter count), "
                        "or plan for GPUs with --gpus N (stored figures per GPU kind)")
    if config is None:
        config = load_config(config_path, overrides)
    if num_trials is not None:  # validated like the config's own (0 is refused, not ignored)
        config = config.with_overrides(**{"search.num_trials": num_trials})
    results = Path(results) if results else RESULTS
    fixed = fixed or load_fixed_costs(results / "sweep.json")
    model_name = config.model.name  # as the config names it ("demo", not the cache folder)
    config = _resolve_demo(config)
    n, records_from = records, "--records"
    if n is None:
        try:
            n, records_from = _count_records(config), f"counted in {config.data.edits}"
        except UserError:
            if config.data.limit is None:
                raise
            # Unreadable here (a hub dataset offline), but capped: the cap is what a sweep would use
            # unless the set is smaller.
            n, records_from = config.data.limit, "data.limit (the edit set is not readable here)"
    if n < 1:
        raise UserError(f"--records must be >= 1, got {n}")
    shape = read_model_shape(config.model.name)
    work = workload(config, n, gpus, cpus)
    cluster_cpus = cluster_resources(config, gpus, cpus)["CPU"]
    if units is not None:
        source, tag = "probe on this machine, reused", "probe"
    elif from_real:
        units, source, tag = scaled_costs(shape, work, results), "the real model's sweep here, scaled", "real"
    elif probe:
        device = _probe_device(gpus)
        units, source, tag = probe_costs(config, work, shape.params, device), f"probe on this machine, {device}", "probe"
        # Ray and a trial's start-up follow the load of the hour, not the benchmark's (ray_probe.py).
        fixed = probe_fixed_costs(fixed, config.search.rsft.runner, cluster_cpus)
    else:
        units = stored_costs(gpu_kind, shape, work, config.model.dtype, config.data.prompt_format, results)
        source, tag = f"stored {gpu_kind} figures", "stored"
    est = estimate(work, units, fixed, gpus, cluster_cpus, local_ray=gpus == 0, source=tag)
    est.basis[:0] = [f"model size: {shape.source}", f"records: {n:,}, {records_from}"]
    # after a probe, the base's general scores are measured (CandidateEvaluator stores them)
    precision = precision_report(config)
    return SweepPlan(config.name, str(config_path), model_name, source, shape, work, units, fixed, est, precision)


def _probe_device(gpus: int) -> str:
    import torch

    if gpus > 0 and not torch.cuda.is_available():
        raise UserError(f"--probe measures this machine, which has no GPU, but the plan is for --gpus {gpus}; "
                        "probe on a GPU machine, drop --probe to scale stored figures, or plan with --gpus 0")
    return "cuda" if gpus > 0 else "cpu"
