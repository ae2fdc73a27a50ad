"""`mm4ke-ray export` is atomic (issue 16 point 4) and checks the tokenizer users get (issue 11 point 5).

The real CLI process is SIGKILLed at several points while it writes (as soon as its staging
sibling appears, once the weights are there, once the recipe is there, and after a random
delay): each time the target folder is absent (nothing complete was written), and a rerun without
--force succeeds and removes the killed export's leftovers. The sweep is the one
tests/test_pareto_export.py logs without Ray (real R-SFT deltas, real evaluation, SQLite MLflow).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_pareto_export import evaluated, log_sweep  # noqa: F401 - fixtures

from mm4ke_ray.export.verify import verify_checksums


@pytest.fixture(scope="module")
def sqlite_sweep(evaluated, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("atomic_sqlite")
    return log_sweep(evaluated, f"sqlite:///{tmp}/mlflow.db", str(tmp / "artifacts"))


def _argv(sweep: dict, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mm4ke_ray.cli", "export", "--tracking-uri", sweep["uri"],
            "--sweep", "paretotest", "--out", str(out), "--device", "cpu", *extra]  # fmt: skip


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _siblings(out: Path) -> list[Path]:
    return sorted(p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def _stage_has(out: Path, name: str):
    def ready() -> bool:
        return any((p / name).is_file() for p in _siblings(out))

    return ready


def _kill_when(argv: list[str], ready, timeout: float = 300) -> bool:
    """Start the export, SIGKILL it once `ready()`; False if it finished first."""
    proc = subprocess.Popen(argv, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None:
            if ready() or time.monotonic() > deadline:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.01)
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _assert_absent_or_verified(out: Path) -> None:
    if not out.exists():
        return
    recipe = json.loads((out / "mm4ke_merge.json").read_text())
    assert recipe["verification"]["status"] == "passed"
    assert verify_checksums(out) == []


def test_killed_export_leaves_no_half_written_folder_and_a_rerun_succeeds(sqlite_sweep, tmp_path):
    out = tmp_path / "export"
    argv = _argv(sqlite_sweep, out)
    # First at a random moment of its start (seeded, so a failure can be replayed), then at
    # three points of the write itself.
    delay = random.Random(16).uniform(1.0, 8.0)
    t0 = time.monotonic()
    _kill_when(argv, lambda: time.monotonic() - t0 > delay)
    _assert_absent_or_verified(out)
    kill_points = [
        lambda: bool(_siblings(out)),  # the staging folder was just made
        _stage_has(out, "model.safetensors"),  # weights (being) written
        _stage_has(out, "mm4ke_merge.json"),  # recipe written, re-evaluation under way
    ]
    for ready in kill_points:
        assert _kill_when(argv, ready), "the export finished before the kill point"
        assert not out.exists()  # none of these points is after the rename
        # The killed run's staging folder is left (each new run removes the earlier ones).
        assert _siblings(out)

    # Nothing complete was written: a rerun without --force succeeds and cleans the leftovers.
    done = subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "left by an export that was killed" in done.stderr
    assert "wrote the merged weights tensor by tensor" in done.stderr  # no model built to write
    _assert_absent_or_verified(out)
    assert out.is_dir() and _siblings(out) == []

    # Killed while replacing it (--force): the earlier, verified export stays or the new one is
    # complete; never a mix.
    before = (out / "checksums.sha256").read_text()
    _kill_when([*argv, "--force"], _stage_has(out, "README.md"))
    # The kill may land before or after the rename: either the earlier export (same checksums) or a
    # complete new one (its card's export time differs), both verified by their own checksums.
    _assert_absent_or_verified(out)
    after = (out / "checksums.sha256").read_text() if out.exists() else before
    changed = {line.split()[1] for line in set(after.splitlines()) ^ set(before.splitlines())}
    assert after == before or changed <= {"README.md", "mm4ke_merge.json"}, changed


def test_export_warns_when_autotokenizer_differs_from_tokenizer_json(sqlite_sweep, tmp_path):
    # The tiny test model is a qwen2 with a word-level tokenizer: transformers 5 rebuilds it as
    # Qwen2Tokenizer, which encodes differently. The export says so (cause and fix) and records
    # it; --strict-tokenizer refuses it and writes nothing.
    out = tmp_path / "strict"
    refused = subprocess.run(
        [*_argv(sqlite_sweep, out), "--strict-tokenizer"], env=_env(), capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "Qwen2Tokenizer" in refused.stderr and "Fix:" in refused.stderr
    assert str(out) in refused.stderr and "mm4ke-partial" not in refused.stderr
    assert not out.exists() and _siblings(out) == []

    from mm4ke_ray.cli import main

    out = tmp_path / "warned"
    assert main(_argv(sqlite_sweep, out)[3:]) == 0
    check = json.loads((out / "mm4ke_merge.json").read_text())["tokenizer_check"]
    assert check["status"] == "mismatch"
    assert "Cause:" in check["message"] and "Fix:" in check["message"]
    assert str(out) in check["message"] and "mm4ke-partial" not in check["message"]
