"""Unit costs of a model too big to probe here, scaled from the real model's sweep measured here.

`benchmarks/results/real.json` holds a real sweep of SmolLM2-135M-Instruct on this machine's CPUs
(`bench_real.py`): every trial's R-SFT updates and seconds, every candidate's evaluation seconds
and the base reference's. On one machine a step's cost grows with the weights it runs, so each
figure is scaled by the parameter count, target / reference; a candidate also by the edit
records it evaluates (its edit metrics run every record's prompts). The general tasks are not
re-costed: the reference's are its own (WikiText-2), which the basis says. Used by
`mm4ke-ray plan --from-real` (CPU plans: e.g. the paper's 7B config on this machine).
"""

from __future__ import annotations

import json
from pathlib import Path

from mm4ke_ray.errors import UserError
from mm4ke_ray.planning.costs import UnitCosts
from mm4ke_ray.planning.model_size import ModelShape, read_model_shape
from mm4ke_ray.planning.workload import Workload

REFERENCE = "real.json"
REFERENCE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the real config's model (smollm2_zsre.yaml)


def reference_figures(path: Path) -> dict:
    """Per-update, per-candidate and base-reference seconds of the real sweep in `path`."""
    if not path.is_file():
        raise UserError(f"{path}: no real-model sweep recorded; run python benchmarks/bench_real.py, or --probe")
    data = json.loads(path.read_text())
    try:
        rows = data["steps"]["sweep"]["candidates"]
        trials = [r for r in rows if r["kind"] == "pure_rsft"]
        updates = sum(r["rsft_updates"] for r in trials)
        candidates = [r["eval_seconds"] for r in rows if r["kind"] != "base"]
        base = next(r["eval_seconds"] for r in rows if r["kind"] == "base")
        out = {"update_s": sum(r["rsft_seconds"] for r in trials) / updates, "updates": updates,
               "trials": len(trials), "candidate_s": sum(candidates) / len(candidates),
               "candidates": len(candidates), "base_s": base, "records": data["sweep_records"],
               "layers": sorted({r["layer"] for r in trials}), "tasks": data.get("objective_tasks", []),
               "date": data.get("machine", {}).get("date", "?")[:10],
               "load": (data.get("machine", {}).get("load_average_at_start") or [None])[0]}
    except (KeyError, TypeError, StopIteration, ZeroDivisionError) as exc:
        raise UserError(f"{path}: no usable real sweep ({type(exc).__name__}: {exc}); rerun benchmarks/bench_real.py") from None
    return out


def scaled_costs(shape: ModelShape, work: Workload, results: Path) -> UnitCosts:
    """Unit costs of `shape` on `work`, from the real sweep scaled by parameter count (and records)."""
    ref = reference_figures(results / REFERENCE)
    ref_params = read_model_shape(REFERENCE_MODEL).params
    size = shape.params / ref_params
    records = work.records / ref["records"]
    update = ref["update_s"] * size
    candidate = ref["candidate_s"] * size * records
    pool = ref["base_s"] * size * records
    basis = [
        f"scaled from the real sweep ({REFERENCE}, {ref['date']}): {REFERENCE_MODEL}, "
        f"{ref_params / 1e6:.1f}M params, on this machine's CPUs (1 thread a worker"
        + (f", load average {ref['load']:.1f} at its start)" if ref["load"] is not None else ")"),
        f"R-SFT update: {ref['update_s']:.3g} s ({ref['updates']:,.0f} updates of {ref['trials']} trials, layers "
        f"{', '.join(map(str, ref['layers']))}) x {shape.params / 1e9:.2f}B / {ref_params / 1e6:.1f}M params "
        f"(x{size:,.0f}) = {update:,.3g} s",
        f"candidate: {ref['candidate_s']:.3g} s (mean of {ref['candidates']}, {ref['records']} records) x{size:,.0f} "
        f"params x{records:.3g} records = {candidate:,.4g} s; base reference {ref['base_s']:.3g} s, scaled alike",
        f"general tasks not re-costed: the reference ran {', '.join(ref['tasks']) or 'none'}, "
        f"this config {', '.join(work.general_tasks) or 'none'}",
    ]
    return UnitCosts(update_s={layer: update for layer in work.layers}, candidate_s=candidate, pool_start_s=pool,
                     worker_load_s=0.0, basis=basis, measured={"reference": ref, "size_ratio": size,
                                                               "records_ratio": records})
