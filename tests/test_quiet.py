"""Quiet by default (issue 15.4) and where a sweep's time went (issue 17.3).

One real `mm4ke-ray sweep` subprocess (2 trials through Ray Train, a general lm-eval task): its
terminal output (stdout + stderr) has none of the libraries' noise, ends with the time table,
and Tune still writes each trial's result.json (but no TensorBoard events).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from fault_helpers import cli_env, sweep_dict

from mm4ke_ray.quiet import VERBOSE_ENV, quiet_libraries
from mm4ke_ray.search.timings import CATEGORIES, SweepTimings

CLI = str(Path(sys.executable).with_name("mm4ke-ray"))

NOISE = (
    "TBXLoggerCallback",  # Tune's TensorBoard logger refusing our nested results
    "You are trying to log an invalid value",
    "Experiment state snapshotting",  # Tune's snapshot warning
    "core_worker.cc",  # Ray's constructor-arguments line about MergeEvalActor
    "constructor arguments in the object store",
    "Token authentication is enabled",
    "is not of type str",  # lm-eval's `pretrained` warning
    "it/s]",  # tqdm progress bars (weight loading, shard writing)
    "Loading weights",
    "Creating initial MLflow database tables",
    "Updating database tables",
    "A new study created",  # Optuna's INFO line
)


@pytest.mark.ray
@pytest.mark.slow
def test_a_sweep_terminal_has_no_library_noise_and_says_where_its_time_went(tmp_path, tiny_model_dir):
    config = sweep_dict(tmp_path, tiny_model_dir, "quiettest", trials=2, runner="train", extra=1, general=True)
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(config))
    env = cli_env(Path(tempfile.mkdtemp(prefix="ray", dir="/tmp")))  # short: Ray's socket paths
    env.pop(VERBOSE_ENV, None)
    done = subprocess.run([CLI, "sweep", str(tmp_path / "sweep.yaml")], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=420)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    noisy = [line for line in output.splitlines() if any(n in line for n in NOISE)]
    assert not noisy, "\n".join(noisy)
    assert "Where the sweep's time went" in output
    for label in ("Ray start", "trial start-up", "R-SFT", "evaluation", "tracking", "other"):
        assert any(line.lstrip("│ ").startswith(label) for line in output.splitlines()), label
    folder = tmp_path / "ray" / "quiettest"
    results = list(folder.glob("sweep_trial_*/result.json"))
    assert len(results) == 2 and all(r.read_text().strip() for r in results)
    assert not list(folder.glob("sweep_trial_*/events.out.tfevents*"))  # no TensorBoard logger
    last = json.loads(results[0].read_text().splitlines()[-1])
    assert last["trial_wall_seconds"] >= last["rsft_wall_seconds"] > 0


def test_the_breakdown_adds_up_to_the_wall_and_scales_overlapping_trials():
    timings = SweepTimings(ray_start=5.0, pool_start=3.0, fit=20.0, tracking=4.0, tracking_in_fit=2.0)
    # Two trials at once: 40 trial-seconds in a 20 s fit, so concurrency 2.
    trials = [{"trial_wall_seconds": 20.0, "rsft_seconds": 6.0, "rsft_wall_seconds": 12.0, "eval_wall_seconds": 4.0}] * 2
    out = timings.breakdown(40.0, [*trials, None])
    assert list(out) == list(CATEGORIES)
    assert out["rsft"] == 6.0 and out["evaluation"] == 3.0 + 4.0
    assert out["trial_startup"] == 20.0 - 6.0 - 4.0 - 2.0
    assert out["tracking"] == 4.0 and out["ray_start"] == 5.0
    assert sum(out.values()) == pytest.approx(40.0)


def test_verbose_keeps_the_libraries_settings(monkeypatch):
    import logging
    import os

    from mm4ke_ray import quiet

    for name in quiet._ENV:
        monkeypatch.delenv(name, raising=False)  # restored after the test
    levels = {name: logging.getLogger(name).level for name in quiet._LOGGERS}
    try:
        monkeypatch.setenv(VERBOSE_ENV, "1")
        quiet_libraries()
        assert not any(name in os.environ for name in quiet._ENV)
        monkeypatch.delenv(VERBOSE_ENV)
        quiet_libraries()
        assert os.environ["TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S"] == "0"
        assert logging.getLogger("lm_eval").level == logging.ERROR
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
