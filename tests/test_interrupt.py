"""Ctrl-C during a sweep: exit 130, "interrupted", the resume command, no finished-looking front.

Tune catches the first SIGINT itself and returned from `fit` as if the sweep had ended (exit 0, a
front printed). A real `mm4ke-ray sweep` process on a tiny model is sent SIGINT once its first
trial has finished; the unit test below shows the handler without Ray.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import yaml
from fault_helpers import cli_env, sweep_dict, wait_for

CLI = str(Path(sys.executable).with_name("mm4ke-ray"))


def test_the_first_ctrl_c_asks_tune_to_stop_and_the_second_stops_now():
    from mm4ke_ray.search.interrupt import catch_interrupt

    tune_stop, before = threading.Event(), signal.getsignal(signal.SIGINT)
    old_usr1 = signal.signal(signal.SIGUSR1, lambda *_: tune_stop.set())  # what Tune's fit installs
    try:
        with catch_interrupt() as interrupt:
            assert os.environ["TUNE_DISABLE_SIGINT_HANDLER"] == "1"
            os.kill(os.getpid(), signal.SIGINT)
            assert interrupt.seen and tune_stop.wait(5)
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is before
        assert "TUNE_DISABLE_SIGINT_HANDLER" not in os.environ
    finally:
        signal.signal(signal.SIGUSR1, old_usr1)


def test_ctrl_c_before_tune_listens_stops_at_once():
    from mm4ke_ray.search.interrupt import catch_interrupt

    old_usr1 = signal.signal(signal.SIGUSR1, signal.SIG_DFL)  # SIGUSR1's default would end the process
    try:
        with pytest.raises(KeyboardInterrupt), catch_interrupt():
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        signal.signal(signal.SIGUSR1, old_usr1)


@pytest.mark.ray
@pytest.mark.slow
def test_ctrl_c_during_a_sweep_exits_130_with_the_resume_command(tmp_path, tiny_model_dir):
    from mlflow import MlflowClient

    config = sweep_dict(tmp_path, tiny_model_dir, "ctrlc", trials=4, extra=1)
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(config))
    folder = tmp_path / "ray" / "ctrlc"
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths are length-limited
    log = open(tmp_path / "sweep.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([CLI, "sweep", str(tmp_path / "sweep.yaml")], stdout=log, stderr=subprocess.STDOUT,
                            env=cli_env(Path(ray_tmp)), cwd=tmp_path)
    try:
        def first_trial_done():
            if proc.poll() is not None:
                raise AssertionError(f"the sweep ended by itself: {(tmp_path / 'sweep.log').read_text()[-3000:]}")
            return bool(list(folder.glob("sweep_trial_*/checkpoint_*/result.json")))

        wait_for(first_trial_done, 300, 0.2, "the first trial to finish")
        proc.send_signal(signal.SIGINT)
        code = proc.wait(180)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    out = (tmp_path / "sweep.log").read_text()
    assert code == 130, out[-3000:]
    assert "sweep ctrlc interrupted" in out and f"sweep --resume {folder}" in out.replace("\n", "")
    assert "Pareto front of" not in out  # no finished-looking summary
    manifest = yaml.safe_load((folder / "mm4ke-sweep.json").read_text())
    parent = MlflowClient(config["tracking"]["uri"]).get_run(manifest["parent_run_id"])
    assert parent.info.status == "KILLED"
    assert parent.data.tags["mm4ke.reason"] == "interrupted (Ctrl-C)"

    # A failure after the resumed parent run reopened (Tune's experiment state damaged in a way
    # no check before it sees) ends that run FAILED with the reason, never RUNNING.
    states = list(folder.glob("search_gen_state-*.json"))  # the searcher's saved state (a pickle)
    assert states
    for state in states:
        state.write_bytes(b"\x80\x05damaged")
    resumed = subprocess.run([CLI, "sweep", "--resume", str(folder)], capture_output=True, text=True,
                             env=cli_env(Path(ray_tmp)), cwd=tmp_path, timeout=600)
    assert resumed.returncode != 0
    parent = MlflowClient(config["tracking"]["uri"]).get_run(manifest["parent_run_id"])
    assert parent.info.status == "FAILED" and parent.data.tags["mm4ke.reason"] != "interrupted (Ctrl-C)", \
        (parent.info.status, parent.data.tags.get("mm4ke.reason"), resumed.stderr[-3000:])
