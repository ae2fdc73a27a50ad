"""Measure a sweep's unit costs on the machine at hand, with the project's own library functions.

No Ray: the probe loads the configured model and edit records the way an R-SFT worker does,
runs a few R-SFT updates (`run_rsft`, τ = 0 so every step is an update) at the lowest and the
highest layer of the search space, then builds one `CandidateEvaluator` (what a merge-eval
actor holds: model, tokenised edits, the base reference incl. general tasks) and evaluates
one merge candidate of the probe's delta twice. Torch runs with the threads a sweep's workers
get (`resources.rsft_cpus` / `eval_cpus`; Ray gives a 1-CPU worker one OpenMP thread).
"""

from __future__ import annotations

import time
from contextlib import contextmanager

from mm4ke_ray.config import SweepConfig
from mm4ke_ray.data import load_edit_records
from mm4ke_ray.errors import UserError
from mm4ke_ray.planning.costs import UnitCosts
from mm4ke_ray.planning.workload import Workload

PROBE_RECORDS = 4  # records per timed R-SFT run
WARM_RELOAD_BELOW_S = 10.0  # load again (warm) when the first load took less
CPU_PROBE_MAX_PARAMS = 1.5e9  # beyond this, a CPU probe takes minutes per step: refuse it


@contextmanager
def _threads(n: float):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _update_seconds(model, tok, records, layer: int, steps: int, search) -> float:
    """Seconds per R-SFT update at `layer`, as the sweep's trial runs it (final-loss forwards in)."""
    from mm4ke_ray.rsft import RSFTConfig, run_rsft

    lr = search.space.lr.bounds()[0]
    config = RSFTConfig(layer=layer, epochs=1, steps=steps, lr=lr, threshold=0.0, optimizer=search.rsft.optimizer,
                        seed=search.seed)
    run_rsft(model, tok, records[:1], config.model_copy(update={"steps": 1}))  # warm-up: allocator, kernels
    result = run_rsft(model, tok, records, config)
    return result.seconds / max(1, result.updates), result


def probe_costs(config: SweepConfig, work: Workload, params: int, device: str) -> UnitCosts:
    """Unit costs of `config` (demo resolved) measured here; takes seconds on a small model."""
    from mm4ke_ray.evaluate.candidate import CandidateEvaluator, eval_settings
    from mm4ke_ray.modeling import load_model, load_tokenizer

    if device == "cpu" and params > CPU_PROBE_MAX_PARAMS:
        raise UserError(f"--probe: {config.model.name} has {params / 1e9:.1f}B parameters; probing it on this "
                        "CPU would take hours. Probe on a GPU machine, plan from stored figures with --gpus N, "
                        "or scale the real model's sweep measured here with --from-real")
    settings = eval_settings(config, device)
    r = config.resources
    def load():
        start = time.perf_counter()
        tok = load_tokenizer(settings.model, trust_remote_code=settings.trust_remote_code)
        model = load_model(settings.model, dtype=settings.dtype, device=device,
                           trust_remote_code=settings.trust_remote_code, allow_pickle=settings.allow_pickle)
        records = load_edit_records(settings.edits, limit=settings.limit, skip_invalid=settings.skip_invalid,
                                    fmt=settings.data_format).records
        return tok, model, records, time.perf_counter() - start

    with _threads(r.rsft_cpus):
        tok, model, records, worker_load = load()
        if worker_load < WARM_RELOAD_BELOW_S:
            # A small model: the first load is mostly one-time imports, which the runner's start-up
            # (from the sweep benchmark) already holds; the warm reload is the load itself.
            del model
            tok, model, records, worker_load = load()
        steps = max(1, round(work.steps_mean))
        probed = {}
        for layer in sorted({min(work.layers), max(work.layers)}):
            probed[layer], result = _update_seconds(model, tok, records[:PROBE_RECORDS], layer, steps, config.search)
        delta = result.delta
        del model
    update_s = _interpolate(probed, work.layers)
    with _threads(r.eval_cpus):
        start = time.perf_counter()
        evaluator = CandidateEvaluator(settings)
        pool_start = time.perf_counter() - start
        alpha, sparsity = (sum(p.bounds()) / len(p.bounds()) for p in (config.search.space.alpha,
                                                                       config.search.space.sparsity))
        times = []
        for _ in range(2):
            start = time.perf_counter()
            evaluator.evaluate(delta, alpha, sparsity, seed=config.search.seed)
            times.append(time.perf_counter() - start)
    candidate = sum(times) / len(times)
    basis = [f"probe here ({device}): {len(probed)} layer(s) x {min(PROBE_RECORDS, len(records))} records x K={steps} "
             f"R-SFT updates, one candidate evaluated twice, model and actor start timed"]
    return UnitCosts(
        update_s=update_s, candidate_s=candidate, pool_start_s=pool_start, worker_load_s=worker_load, basis=basis,
        measured={"update_s_probed": probed, "candidate_s_runs": times, "device": device},
    )


def _interpolate(probed: dict[int, float], layers) -> dict[int, float]:
    """Per-update seconds at every searchable layer, linear in the layer index between the probed
    ends (a step runs the blocks from its layer up, so its cost falls linearly with the layer)."""
    lo, hi = min(probed), max(probed)
    if lo == hi:
        return {layer: probed[lo] for layer in layers}
    slope = (probed[hi] - probed[lo]) / (hi - lo)
    return {layer: probed[lo] + slope * (layer - lo) for layer in layers}
