"""Same config and seed on CPU → the same Optuna suggestions and bit-identical R-SFT deltas.

Two separate `mm4ke-ray sweep` processes (own local Ray each, different output folders) are
compared trial by trial, in the order Tune created the trials.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from fault_helpers import cli_env, sweep_dict

pytestmark = [pytest.mark.ray, pytest.mark.slow]

CLI = str(Path(sys.executable).with_name("mm4ke-ray"))


TRIALS = 2


def _start(tmp: Path, model_dir: Path) -> subprocess.Popen:
    tmp.mkdir()
    config = sweep_dict(tmp, model_dir, "determinism", trials=TRIALS, extra=2, seed=11)
    (tmp / "sweep.yaml").write_text(yaml.safe_dump(config))
    env = cli_env(Path(tempfile.mkdtemp(prefix="ray", dir="/tmp")))
    return subprocess.Popen([CLI, "sweep", str(tmp / "sweep.yaml")], stdout=subprocess.DEVNULL,
                            stderr=open(tmp / "sweep.log", "w"), env=env, cwd=tmp)  # noqa: SIM115


def _runs(tmp: Path, model_dir: Path) -> list[Path]:
    """Both sweeps at once: each has its own Ray, and with one trial at a time on this machine
    neither the suggestions nor the training may depend on how fast the other one runs."""
    folders = [tmp / "a", tmp / "b"]
    procs = [_start(folder, model_dir) for folder in folders]
    try:
        for folder, proc in zip(folders, procs, strict=True):
            assert proc.wait(timeout=600) == 0, (folder / "sweep.log").read_text()[-5000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return [folder / "ray" / "determinism" for folder in folders]


def _trials_in_order(folder: Path) -> list[Path]:
    # Tune names trial folders sweep_trial_<id>_<creation index>_<params>_<time>.
    return sorted(folder.glob("sweep_trial_*"), key=lambda p: int(p.name.split("_")[3]))


def _study(folder: Path):
    import optuna

    from mm4ke_ray.search.searcher import STUDY_FILE, journal_storage

    return optuna.load_study(study_name="determinism", storage=journal_storage(folder / STUDY_FILE))


def test_two_runs_with_one_seed_suggest_and_train_identically(tmp_path, tiny_model_dir):
    from mm4ke_ray.delta import DELTA_FILE, load_delta

    first, second = _runs(tmp_path, tiny_model_dir)

    # Optuna: the same suggestions (and the same extra points told), in the same order.
    trials_a, trials_b = _study(first).trials, _study(second).trials
    assert len(trials_a) == len(trials_b) == TRIALS * 3
    assert [t.params for t in trials_a] == [t.params for t in trials_b]
    assert [t.values for t in trials_a] == [t.values for t in trials_b]
    assert len({t.params["lr"] for t in trials_a}) > 1  # it did search

    # R-SFT: bit-identical deltas, trial by trial.
    dirs_a, dirs_b = _trials_in_order(first), _trials_in_order(second)
    assert len(dirs_a) == len(dirs_b) == TRIALS
    for a, b in zip(dirs_a, dirs_b, strict=True):
        (ca,), (cb,) = list(a.glob("checkpoint_*")), list(b.glob("checkpoint_*"))
        assert (ca / DELTA_FILE).is_file()
        delta_a, _ = load_delta(ca)
        delta_b, _ = load_delta(cb)
        assert delta_a.keys() == delta_b.keys()
        for name in delta_a:
            assert delta_a[name].dtype == delta_b[name].dtype
            assert delta_a[name].numpy().tobytes() == delta_b[name].numpy().tobytes(), name
