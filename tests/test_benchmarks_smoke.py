"""Every benchmark in benchmarks/ runs in --smoke-test mode and writes a well-formed result.

The scripts run as subprocesses, a few at a time (most of a smoke run is Ray and Tune start-up,
which overlaps well; all at once starved a 2-core machine), the slowest first, each with its own
time limit. The GPU check runs its tiny CPU mode. Timings of smoke runs mean nothing; only the plumbing is checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
SCRIPTS = {  # the slowest first (smoke walls one at a time on this 2-core machine at load ~10, 2026-12-06), so the pool ends together
    "soak": "bench_soak.py",  # ~310 s
    "real": "bench_real.py",  # ~270 s
    "multifidelity": "bench_multifidelity.py",  # ~230 s
    "stream": "bench_stream.py",
    "general_eval": "bench_general_eval.py",
    "real_general": "bench_real_general.py",  # ~25 s
    "table_search": "bench_table_search.py",
    "table_build": "build_real_table.py",
    "sweep": "bench_sweep.py",  # ~70 s
    "plan": "bench_plan.py",  # ~90 s: a probe (Ray start, an empty trial) and a 1-trial demo sweep
    "runner": "bench_runner.py",  # two 1-trial demo sweeps, runners train and train-local
    "memory": "bench_memory.py",
    "mergekit": "bench_mergekit.py",
    "generation": "bench_generation.py",
    "startup": "bench_startup.py",
    "merge": "bench_merge.py",
    "rsft": "bench_rsft.py",
    "eval": "bench_eval.py",
    "search_quality": "bench_search_quality.py",
    "warm_start": "bench_warm_start.py",
}
SCRIPT_TIMEOUT_S = 900  # one script, beside PARALLEL-1 others and the other xdist worker (soak: 1,200 s at load 20)
PARALLEL = 3  # 2 cores: three overlap Ray's start-up well; sixteen at once starved each other past any limit

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.timeout(2400)]


def _start(name: str, cmd: list[str], out: Path, env: dict, cwd: Path) -> tuple[subprocess.Popen, object, float]:
    log = open(out / f"{name}.log", "w")  # noqa: SIM115 - closed when the script ends
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    return proc, log, time.monotonic()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from mm4ke_ray.demo.build import build_demo

    build_demo()  # once, before the scripts that use it start: on a new machine six would build it at once
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONUNBUFFERED": "1"}
    gpu_env = {**env, "GPU_CHECK_SHAPE": "tiny", "OUT": str(out), "PYTHON": sys.executable}
    queue = [(name, [sys.executable, str(BENCH / script), "--smoke-test", "--out", str(out)], env, BENCH)
             for name, script in SCRIPTS.items()]
    queue.insert(5, ("gpu_check", ["bash", str(BENCH / "gpu_check.sh")], gpu_env, REPO))
    running: dict[str, tuple[subprocess.Popen, object, float]] = {}
    codes: dict[str, int | str] = {}
    try:
        while queue or running:
            while queue and len(running) < PARALLEL:
                name, cmd, script_env, cwd = queue.pop(0)
                running[name] = _start(name, cmd, out, script_env, cwd)
            time.sleep(0.5)
            for name, (proc, log, started) in list(running.items()):
                if proc.poll() is None and time.monotonic() - started < SCRIPT_TIMEOUT_S:
                    continue
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                    codes[name] = f"timed out after {SCRIPT_TIMEOUT_S} s"
                else:
                    codes[name] = proc.returncode
                log.close()
                del running[name]
    finally:
        for proc, log, _ in running.values():
            proc.kill()
            log.close()
    return out, codes


def _result(runs, name: str) -> dict:
    out, codes = runs
    log = (out / f"{name}.log").read_text()
    assert codes[name] == 0, f"{name} failed:\n{log[-4000:]}"
    path = out / f"{name}.json"
    assert path.is_file(), f"{name} wrote no result:\n{log[-2000:]}"
    return json.loads(path.read_text())


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_benchmark_smoke_writes_goals(runs, name):
    doc = _result(runs, name)
    assert doc["benchmark"] == name and doc["mode"] == "smoke"
    assert doc["machine"]["date"] and doc["machine"]["cpu_count"]
    assert doc["goals"], "every benchmark states its goals"
    for goal in doc["goals"]:
        assert {"goal", "measured", "target", "met", "higher_is_better"} <= set(goal)
        assert isinstance(goal["met"], bool) and goal["measured"] == goal["measured"]  # not NaN


def test_eval_smoke_metrics_agree(runs):
    doc = _result(runs, "eval")
    a = doc["batched_vs_one_at_a_time"]
    assert a["max_abs_diff"] <= 1e-6 and a["answer_argmax_agreement"] == 1.0


def test_sweep_smoke_counts_candidates(runs):
    doc = _result(runs, "sweep")
    task = doc["runs"]["task"]
    # Same number of candidates; ours from fewer R-SFT runs.
    assert task["ours"]["candidates"] == task["naive"]["candidates"] == 2
    assert task["ours"]["trials"] == 1 and task["naive"]["trials"] == 2
    assert 0 <= task["ours"]["outside_share"] <= 1


def test_plan_smoke_splits_both_walls_into_the_same_groups(runs):
    """bench_plan's groups hold every second of the plan and of the measured sweep (none dropped)."""
    run = _result(runs, "plan")["demo"][0]
    assert run["candidates"] == 2 and run["plan_s"] > 0 and run["measured_s"] > 0
    assert sum(g["plan"] for g in run["phases"].values()) == pytest.approx(run["plan_s"])
    assert sum(g["measured"] for g in run["phases"].values()) == pytest.approx(run["measured_s"])
    assert run["error"] == pytest.approx(run["plan_s"] / run["measured_s"] - 1)
    # the start-up row: what the sweep spent outside its R-SFT and evaluation seconds
    work = run["phases"]["R-SFT"]["measured"] + run["phases"]["evaluation"]["measured"]
    assert 0 < run["outside_share"] < 1 and run["outside_share"] == pytest.approx(1 - work / run["measured_s"])
    assert any(g["goal"].startswith("start-up:") for g in _result(runs, "plan")["goals"])


def test_memory_smoke_reads_rss(runs):
    doc = _result(runs, "memory")
    assert set(doc["rss_bytes"]) == {"1", "5", "10"} and all(v > 0 for v in doc["rss_bytes"].values())


def test_soak_smoke_holds_every_candidate_once_and_the_exact_front(runs):
    doc = _result(runs, "soak")
    n, t = doc["trials"], doc["tracking"]
    assert t["candidate_runs"] == t["candidate_runs_finished_ok"] == t["distinct_candidate_names"] == 2 * n
    assert t["base_runs"] == 1 and t["all_csv_rows"] == 2 * n + 1 and t["all_csv_candidates_match_mlflow"]
    assert t["front_equals_non_dominated_set"] and t["on_front_column_agrees"] and t["front_csv_rows"] >= 1
    # The driver was sampled after every finished trial (RSS and overhead are reported, not bounded here).
    per_trial = doc["driver"]["per_trial"]
    assert [p["trial"] for p in per_trial] == list(range(1, n + 1)) and all(p["rss_mib"] > 0 for p in per_trial)


def test_gpu_check_tiny_mode_runs_every_section(runs):
    out, codes = runs
    log = (out / "gpu_check.log").read_text()
    assert codes["gpu_check"] == 0, log[-4000:]
    doc = json.loads((out / "gpu_check_tiny.json").read_text())
    for section in ("rsft", "merge", "eval"):
        assert "error" not in doc[section], doc[section]
    assert doc["rsft"]["ours"]["steps_per_s"] > 0 and doc["merge"]["ours_ms_sparsity_0.2"] > 0
    assert doc["eval"]["cached_metrics_equal"] is True


def test_real_smoke_has_the_table_both_families_and_the_sweep(runs):
    out, _ = runs
    doc = _result(runs, "real")
    steps = doc["steps"]
    for key in ("base", "sft", "rsft", "merged α0.2", "merged α0.8", "alpha=0.2", "sparsity=0.2", "sweep"):
        assert key in steps, key
    for key in ("base", "rsft", "merged α0.2"):
        assert "edit_succ" in steps[key] and "gen.edit_succ" in steps[key], steps[key]
        assert 0.0 <= steps[key]["general_score"] <= 1.0
    assert steps["sft"]["rsft_run"]["rsft"]["threshold"] == 0.0 and steps["rsft"]["rsft_run"]["rsft"]["threshold"] > 0
    assert steps["sweep"]["candidates"], "the sweep's candidates are read back"
    assert (out / "real.png").stat().st_size > 10_000 and "| R-SFT |" in (out / "real.md").read_text()


def test_stream_smoke_has_retention_curves_per_round_for_each_setting(runs):
    out, _ = runs
    doc = _result(runs, "stream")
    assert set(doc["streams"]) == {"paper", "alpha0.5", "tuned"}  # tuned: the choice of `stream --tune`
    assert doc["tuning"]["choice"] in {t["candidate"] for t in doc["tuning"]["trials"] if t["on_front"]}
    for stream in doc["streams"].values():
        curves = stream["curves"]
        assert len(curves["seen.gen.edit_succ"]) == 4 and len(curves["general_score"]) == 4  # rounds 0..3
        assert curves["locality"][0] == 100.0 and [r["merge"]["alpha"] for r in stream["rounds"]] == \
            [stream["setting"]["alpha"]] * 3
    assert (out / "stream.png").stat().st_size > 10_000


def test_runner_smoke_gives_the_same_candidates_by_both_runners(runs):
    doc = _result(runs, "runner")
    assert doc["same_candidates"] is True
    assert set(doc["wall_s"]) == {"train", "train-local"} and all(v > 0 for v in doc["wall_s"].values())

