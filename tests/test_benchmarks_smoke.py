"""Every benchmark in benchmarks/ runs in --smoke-test mode and writes a well-formed result.

The scripts run as subprocesses, all at once (most of a smoke run is Ray and Tune start-up,
which overlaps well), so the whole module takes about as long as the slowest script. The GPU
check runs its tiny CPU mode. Timings of smoke runs mean nothing; only the plumbing is checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
SCRIPTS = {
    "merge": "bench_merge.py",
    "rsft": "bench_rsft.py",
    "eval": "bench_eval.py",
    "sweep": "bench_sweep.py",
    "search_quality": "bench_search_quality.py",
    "warm_start": "bench_warm_start.py",
    "memory": "bench_memory.py",
    "generation": "bench_generation.py",
    "mergekit": "bench_mergekit.py",
    "startup": "bench_startup.py",
    "soak": "bench_soak.py",
    "multifidelity": "bench_multifidelity.py",
    "real": "bench_real.py",
    "stream": "bench_stream.py",
    "general_eval": "bench_general_eval.py",
    "table_search": "bench_table_search.py",
    "table_build": "build_real_table.py",
}
TIMEOUT_S = 900  # 16 scripts at once beside the other xdist worker: minutes each on 2 busy cores

pytestmark = [pytest.mark.slow, pytest.mark.ray]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from mm4ke_ray.demo.build import build_demo

    build_demo()  # once, before the scripts that use it start: on a new machine six would build it at once
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONUNBUFFERED": "1"}
    procs = {}
    for name, script in SCRIPTS.items():
        log = open(out / f"{name}.log", "w")  # noqa: SIM115 - closed below
        cmd = [sys.executable, str(BENCH / script), "--smoke-test", "--out", str(out)]
        procs[name] = (subprocess.Popen(cmd, cwd=BENCH, env=env, stdout=log, stderr=subprocess.STDOUT), log)
    gpu_log = open(out / "gpu_check.log", "w")  # noqa: SIM115
    gpu_env = {**env, "GPU_CHECK_SHAPE": "tiny", "OUT": str(out), "PYTHON": sys.executable}
    procs["gpu_check"] = (subprocess.Popen(["bash", str(BENCH / "gpu_check.sh")], cwd=REPO, env=gpu_env,
                                           stdout=gpu_log, stderr=subprocess.STDOUT), gpu_log)
    codes = {}
    try:
        for name, (proc, log) in procs.items():
            codes[name] = proc.wait(timeout=TIMEOUT_S)
            log.close()
    finally:
        for proc, _ in procs.values():
            if proc.poll() is None:
                proc.kill()
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
