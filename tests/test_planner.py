"""The cost planner (`mm4ke-ray plan`): counts from the config, sizes from safetensors headers,
stored-figure plans, clear errors, and a probe estimate against a real demo sweep measured here."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time

import pytest
from conftest import REPO

from mm4ke_ray.config import load_config
from mm4ke_ray.errors import UserError

PAPER = REPO / "search_spaces" / "zsre_qwen2.5-7b.yaml"
DEMO = REPO / "search_spaces" / "demo.yaml"
ZSRE_RECORDS = 1301  # KnowEdit ZsRE-test-all.json, the paper config's edit set


def test_model_size_comes_from_the_safetensors_headers(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from mm4ke_ray.planning.model_size import read_model_shape

    shape = read_model_shape(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert shape.params == sum(p.numel() for p in model.parameters())
    assert (shape.layers, shape.hidden) == (model.config.num_hidden_layers, model.config.hidden_size)
    assert "safetensors headers" in shape.source


def test_model_size_without_weights_is_counted_from_config_json(tiny_model_dir, tmp_path):
    from mm4ke_ray.planning.model_size import read_model_shape

    (tmp_path / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    counted = read_model_shape(str(tmp_path)).params
    exact = read_model_shape(str(tiny_model_dir)).params
    assert abs(counted - exact) / exact < 0.05  # only biases and norms are left out
    qwen7b = read_model_shape("Qwen/Qwen2.5-7B-Instruct")  # offline: the built-in copy of its config.json
    assert 7.5e9 < qwen7b.params < 7.7e9 and qwen7b.layers == 28


def test_a_bad_safetensors_file_is_named(tmp_path, tiny_model_dir):
    from mm4ke_ray.planning.model_size import read_model_shape

    (tmp_path / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    (tmp_path / "model.safetensors").write_bytes(b"\x05\x00")
    with pytest.raises(UserError, match="model.safetensors: not a safetensors file"):
        read_model_shape(str(tmp_path))


@pytest.mark.parametrize("extra", [0, 1, 2, 4, 6])
def test_candidates_per_delta_follow_the_sweep(extra):
    """1 sampled + 1 pure R-SFT + (extra - 1) drawn points: extra + 1 per delta (1 with no extras)."""
    from mm4ke_ray.planning.workload import workload

    config = load_config(DEMO, {"merge.extra_candidates": extra})
    work = workload(config, records=25, gpus=0, cpus=2)
    assert work.candidates_per_delta == extra + 1
    assert work.candidates == 8 * (extra + 1)
    assert work.updates_max == 4 * 25 * 8  # E·N·K at the space's maxima
    assert work.updates_expected == 2.5 * 25 * 5  # mean E and K of the ranges


def test_paper_config_on_8_gpus_pairs_workers_and_actors():
    from mm4ke_ray.planning.workload import workload

    work = workload(load_config(PAPER), records=ZSRE_RECORDS, gpus=8)
    assert (work.concurrent_trials, work.eval_actors, work.candidates_per_delta) == (4, 4, 7)
    assert work.layers == (4, 5, 6, 7, 8) and len(work.general_tasks) == 5


def test_stored_plan_of_the_paper_config_adds_up():
    from mm4ke_ray.planning import plan_sweep

    plan = plan_sweep(PAPER, gpus=8, records=ZSRE_RECORDS)
    est, work, units = plan.estimate, plan.workload, plan.units
    assert sum(p.wall_s for p in est.phases) == pytest.approx(est.wall_s)
    assert est.upper_wall_s > est.wall_s
    phase = {p.name: p for p in est.phases}
    waves = -(-work.trials // work.concurrent_trials)
    mean_update = sum(units.update_s.values()) / len(units.update_s)
    assert phase["R-SFT"].wall_s == pytest.approx(waves * work.updates_expected * mean_update)
    assert phase["Ray start"].wall_s == 0  # submitted to a running cluster
    # A step runs the blocks from its layer up: a lower layer costs more.
    assert units.update_s[4] > units.update_s[8]
    assert est.billed_gpu_hours == pytest.approx(8 * est.wall_s / 3600)
    assert 0 < est.busy_gpu_hours < est.billed_gpu_hours
    assert any("qwen2.5-0.5b shape" in line and "7.62B" in line for line in est.basis)
    # 14 h for 64 trials of ~26,000 batch-1 updates on a 7B model: hours, not minutes or weeks.
    assert 3600 < est.wall_s < 7 * 86400


def test_trials_run_in_waves_and_their_candidates_share_the_actors():
    """5 trials, 2 at once, 3 candidates each, 2 actors: waves of 2, 2, 1 trials; per wave
    ceil(6/2), ceil(6/2), ceil(3/2) = 3 + 3 + 2 rounds of evaluation."""
    from dataclasses import replace

    from mm4ke_ray.planning.costs import UnitCosts
    from mm4ke_ray.planning.estimate import estimate
    from mm4ke_ray.planning.fixed_costs import FixedCosts
    from mm4ke_ray.planning.workload import workload

    work = replace(workload(load_config(DEMO), records=10, gpus=0, cpus=2), trials=5, concurrent_trials=2,
                   candidates_per_delta=3, eval_actors=2, layers=(0, 1), runner="train")
    units = UnitCosts(update_s={0: 0.02, 1: 0.01}, candidate_s=1.0, pool_start_s=5.0, worker_load_s=0.5)
    fixed = FixedCosts(ray_start_s=4.0, trial_startup_s={"train": 20.0}, driver_per_trial_s={"train": 2.0},
                       driver_per_sweep_s=10.0, dispatch_per_candidate_s=0.0, basis="hand-made")
    est = estimate(work, units, fixed, gpus=0, cpus=2, local_ray=True, source="probe")
    phase = {p.name: p for p in est.phases}
    assert phase["eval rounds"].count == 8 and phase["eval rounds"].wall_s == 8.0
    assert phase["trial start-up"].wall_s == 3 * 20.5  # three waves
    assert phase["R-SFT"].wall_s == pytest.approx(3 * work.updates_expected * 0.015)
    assert phase["R-SFT"].upper_s == pytest.approx(3 * work.updates_max * 0.02)  # the costliest layer
    assert est.wall_s == pytest.approx(4 + 5 + 61.5 + 3 * work.updates_expected * 0.015 + 8 + 10 + 5 * 2)
    # 'train-local': the trial processes and their loaded model are kept, so only the first wave starts
    local = estimate(replace(work, runner="train-local"), units, replace(fixed, trial_startup_s={"train-local": 2.0}),
                     gpus=0, cpus=2, local_ray=True, source="probe")
    assert {p.name: p for p in local.phases}["trial start-up"].wall_s == 2.5


def test_fixed_costs_probed_now_replace_the_benchmarks_and_say_so():
    """`plan --probe` measures Ray's start and a trial's start-up now (`ray_probe.py`): the plan
    takes those figures for its Ray start and trial start-up lines and names the probe as source."""
    from dataclasses import replace

    from mm4ke_ray.planning.costs import UnitCosts
    from mm4ke_ray.planning.estimate import estimate
    from mm4ke_ray.planning.fixed_costs import FixedCosts
    from mm4ke_ray.planning.workload import workload

    work = replace(workload(load_config(DEMO), records=10, gpus=0, cpus=2), trials=2, concurrent_trials=1,
                   runner="train")
    units = UnitCosts(update_s=dict.fromkeys(work.layers, 0.01), candidate_s=1.0, pool_start_s=5.0,
                      worker_load_s=0.5)
    stored = FixedCosts(ray_start_s=4.0, trial_startup_s={"train": 20.0, "task": 5.0},
                        driver_per_trial_s={"train": 2.0}, driver_per_sweep_s=10.0, dispatch_per_candidate_s=0.0,
                        basis="sweep.json")
    now = replace(stored, ray_start_s=12.0, trial_startup_s={"train": 31.0, "task": 5.0}, probed=True)
    before = {p.name: p for p in estimate(work, units, stored, 0, 2, local_ray=True, source="probe").phases}
    after = {p.name: p for p in estimate(work, units, now, 0, 2, local_ray=True, source="probe").phases}
    assert (before["Ray start"].wall_s, after["Ray start"].wall_s) == (4.0, 12.0)
    assert (before["trial start-up"].wall_s, after["trial start-up"].wall_s) == (2 * 20.5, 2 * 31.5)
    assert (before["Ray start"].source, after["Ray start"].source) == ("bench", "probe")
    assert (before["trial start-up"].source, after["trial start-up"].source) == ("bench+probe", "probe")
    cluster = estimate(work, units, now, 8, 8, local_ray=False, source="stored").phases[0]
    assert (cluster.wall_s, cluster.source) == (0, "cluster up")  # submitted to a running cluster: no start


def test_halving_bounds_the_evaluation_by_what_its_rungs_may_prune():
    """5 candidates, 3 rungs, factor 3 on 100 records: rungs of 12, 34 and 100 records. A promoted
    candidate scores only the items its next rung adds, so nothing pruned costs what evaluating
    everyone in full costs (5); pruning to the minimum (5 -> 2 -> 1) costs 5 x 0.12 + 2 x 0.22 +
    0.66 = 1.7 full evaluations."""
    from mm4ke_ray.evaluate.fidelity import halving_cost
    from mm4ke_ray.planning.workload import workload

    assert halving_cost(5, 3, 3.0) == pytest.approx((5 / 9 + 2 * 2 / 9 + 2 / 3, 5))
    assert halving_cost(5, 3, 3.0, reuse=False) == pytest.approx((5 / 9 + 2 / 3 + 1, 5 * 13 / 9))
    assert halving_cost(5, 1, 3.0) == (5, 5)  # one rung: the full evaluation of everyone
    assert halving_cost(1, 2, 2.0) == pytest.approx((1, 1))  # the one kept candidate climbs every rung
    off = workload(load_config(DEMO), records=10, gpus=0, cpus=2)
    assert off.halving_cost is None
    args = (str(PAPER), "--gpus", "8", "--records", "100", "--set", "merge.extra_candidates=4")
    _, plain = _cli(*args, "--json")
    code, raw = _cli(*args, "--set", "evaluation.fidelity.enabled=true", "--json")
    halving = json.loads(raw)
    assert code == 0 and halving["workload"]["halving_cost"] == pytest.approx([5 * 0.12 + 2 * 0.22 + 0.66, 5])
    assert halving["workload"]["halving_rungs"] == ["rung 0: 12 of 100 records", "rung 1: 34 of 100 records"]
    # The expected wall assumes halving breaks even; at most, nothing is pruned: the full evaluation.
    phase = {p["name"]: p for p in halving["estimate"]["phases"]}
    before = {p["name"]: p for p in json.loads(plain)["estimate"]["phases"]}
    assert phase["eval rounds"]["wall_s"] == pytest.approx(before["eval rounds"]["wall_s"])
    assert phase["eval rounds"]["upper_s"] == pytest.approx(before["eval rounds"]["upper_s"])
    code, text = _cli(*args, "--set", "evaluation.fidelity.enabled=true")
    assert code == 0 and "1.7 to 5 full evaluations" in " ".join(text.split())
    assert max(len(line) for line in text.splitlines()) <= 80
    # 25 records (the benchmark's demo world): rung 0 raised from 3 to the sign test's 5.
    small = workload(load_config(DEMO).with_overrides(**{"evaluation.fidelity.enabled": True,
                                                          "merge.extra_candidates": 4}), records=25, gpus=0, cpus=2)
    assert small.halving_rungs[0].startswith("rung 0: 5 of 25 records (raised from 3: the sign test needs 5")


def _cli(*args: str) -> tuple[int, str]:
    from mm4ke_ray.cli import main

    with tempfile.TemporaryFile("w+") as out:
        old, sys.stdout = sys.stdout, out
        try:
            code = main(["plan", *args])
        finally:
            sys.stdout = old
        out.seek(0)
        return code, out.read()


def test_cli_prints_a_table_within_80_columns_and_json():
    code, text = _cli(str(PAPER), "--gpus", "8", "--records", str(ZSRE_RECORDS))
    assert code == 0 and "R-SFT" in text and "GPU-hours" in text
    assert max(len(line) for line in text.splitlines()) <= 80
    code, raw = _cli(str(PAPER), "--gpus", "8", "--records", str(ZSRE_RECORDS), "--json")
    data = json.loads(raw)
    assert code == 0 and data["workload"]["trials"] == 64
    assert data["estimate"]["billed_gpu_hours"] == pytest.approx(8 * data["estimate"]["wall_s"] / 3600)
    code, raw = _cli(str(PAPER), "--gpus", "16", "--records", "100", "--set", "merge.extra_candidates=2", "--json")
    work = json.loads(raw)["workload"]
    assert (work["records"], work["candidates_per_delta"], work["concurrent_trials"]) == (100, 3, 8)


def test_bad_requests_are_refused_with_the_fix(capsys):
    from mm4ke_ray.planning import plan_sweep

    with pytest.raises(UserError, match="--gpu-kind 'a100'.*known kinds: h200"):
        plan_sweep(PAPER, gpus=8, records=ZSRE_RECORDS, gpu_kind="a100")
    with pytest.raises(UserError, match="--records N"):  # a hub dataset, offline
        plan_sweep(PAPER, gpus=8)
    with pytest.raises(UserError, match="add --probe"):
        plan_sweep(PAPER, gpus=0, records=ZSRE_RECORDS)
    with pytest.raises(UserError, match="no GPU"):
        plan_sweep(PAPER, gpus=8, records=ZSRE_RECORDS, probe=True)
    with pytest.raises(UserError, match="ask for no GPU"):
        plan_sweep(DEMO, gpus=8)
    with pytest.raises(UserError, match="7.6B parameters.*--from-real"):
        plan_sweep(PAPER, gpus=0, records=ZSRE_RECORDS, probe=True, cpus=8)
    code, _ = _cli(str(PAPER), "--gpus", "8", "--records", "1301", "--results", "/nonexistent")
    assert code == 2 and "sweep.json" in capsys.readouterr().err


def test_paper_config_on_cpus_is_scaled_from_the_real_sweep_with_its_basis_printed(tmp_path):
    """`--from-real`: the real SmolLM2 sweep's figures (a hand-made real.json here) x the parameter
    ratio (and, for a candidate, the record ratio), each step of the arithmetic in the basis."""
    import shutil

    from mm4ke_ray.planning.model_size import read_model_shape

    rows = [{"kind": "base", "eval_seconds": 100.0},
            {"kind": "pure_rsft", "layer": 6, "rsft_updates": 100, "rsft_seconds": 40.0, "eval_seconds": 30.0},
            {"kind": "pure_rsft", "layer": 8, "rsft_updates": 100, "rsft_seconds": 60.0, "eval_seconds": 50.0},
            {"kind": "merged", "eval_seconds": 40.0}]
    (tmp_path / "real.json").write_text(json.dumps({
        "machine": {"date": "2026-12-06T09:00:00"}, "sweep_records": 25, "objective_tasks": ["wikitext"],
        "steps": {"sweep": {"candidates": rows}}}))
    shutil.copy(REPO / "benchmarks" / "results" / "sweep.json", tmp_path / "sweep.json")
    args = (str(PAPER), "--from-real", "--records", "50", "--cpus", "8", "--results", str(tmp_path))
    code, raw = _cli(*args, "--json")
    plan = json.loads(raw)
    size = plan["model"]["params"] / read_model_shape("HuggingFaceTB/SmolLM2-135M-Instruct").params
    assert code == 0 and 56 < size < 58  # 7.62B / 134.5M
    units = plan["unit_costs"]
    assert units["update_s"]["6"] == pytest.approx(0.5 * size)  # 100 s over 200 updates
    assert units["candidate_s"] == pytest.approx(40.0 * size * 2)  # mean of 3, 50 / 25 records
    code, text = _cli(*args)
    flat = " ".join(text.split())
    assert code == 0 and "(the real model's sweep here, scaled)" in flat
    assert "scaled from the real sweep (real.json, 2026-12-06): HuggingFaceTB/SmolLM2-135M-Instruct, 134.5M" in flat
    assert "R-SFT update: 0.5 s (200 updates of 2 trials, layers 6, 8) x 7.62B / 134.5M params (x57)" in flat
    assert "candidate: 40 s (mean of 3, 25 records) x57 params x2 records" in flat
    assert "the reference ran wikitext, this config ceval-valid, coqa" in flat
    with pytest.raises(UserError, match="--from-real scales CPU measurements"):
        from mm4ke_ray.planning import plan_sweep

        plan_sweep(PAPER, gpus=8, records=50, from_real=True)


def test_the_command_module_imports_nothing_heavy():
    code = ("import sys, mm4ke_ray.commands.plan; "
            "heavy = [m for m in ('torch', 'transformers', 'ray') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
@pytest.mark.ray
def test_probe_estimate_is_the_measured_demo_sweep_within_a_factor_of_three(tmp_path):
    """The demo (its own runner, as `mm4ke-ray demo` runs it), reduced to 2 trials x 3 candidates:
    the probe runs here first, then the same config sweeps on a fresh local Ray, timed as the
    sweep benchmark times it (ray.init to shutdown)."""
    import ray

    from mm4ke_ray.commands.sweep import start_sweep as run_sweep
    from mm4ke_ray.planning import plan_sweep

    config = load_config(DEMO, {
        "name": "plantest", "search.num_trials": 2, "merge.extra_candidates": 2,
        "tracking.uri": f"sqlite:///{tmp_path}/mlflow.db", "tracking.experiment": "plantest",
        "tracking.artifact_location": str(tmp_path / "artifacts"), "storage_path": str(tmp_path / "ray"),
    })
    plan = plan_sweep(DEMO, config=config, probe=True, cpus=2)

    start = time.perf_counter()
    temp = tempfile.mkdtemp(prefix="rp", dir="/tmp")  # short: Ray's socket paths are length-limited
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False, _temp_dir=temp)
    try:
        outcome = run_sweep(config)
    finally:
        ray.shutdown()
    measured = time.perf_counter() - start

    assert len(outcome.rows) == plan.workload.candidates == 2 * 3
    error = plan.estimate.wall_s / measured - 1
    print(f"plan {plan.estimate.wall_s:.1f} s, measured {measured:.1f} s ({100 * error:+.0f}%)")
    # Issue 17.7's goal is ±30 %; that is a timing goal (benchmarks/, not a unit test: it depends
    # on the machine's load). Here: the plan is of the right size, which a broken model would miss.
    # A factor of 3: the probe measures Ray's and a trial's start-up at the load of the moment
    # (ray_probe.py), but CI's load changes under a sweep (2.1x the plan at load 15-20 with the
    # benchmark's stored figures, CI clone, 2026-12-06); a broken model is off by 10x.
    assert 1 / 3 <= plan.estimate.wall_s / measured <= 3.0, plan.as_json()["estimate"]
