"""Commands as a person types them (issue 26 §4): `evaluate --help` names its defaults, and
`evaluate` finds the demo's assets by the name 'demo' as a sweep config does."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fault_helpers import cli_env

from mm4ke_ray.demo.build import build_demo
from mm4ke_ray.planning.model_size import hub_reachable

CLI = [sys.executable, "-m", "mm4ke_ray.cli"]
REPO = Path(__file__).resolve().parents[1]


def test_evaluate_help_shows_the_defaults(tmp_path):
    env = {**cli_env(tmp_path), "COLUMNS": "80"}
    text = subprocess.run([*CLI, "evaluate", "--help"], capture_output=True, text=True, env=env, timeout=120).stdout
    flat = " ".join(text.split())
    for default in ("default: 32", "Default: teacher-forced", "default: equals", "default: wild", "default: 64"):
        assert default in flat, default
    assert max(len(line) for line in text.splitlines()) <= 80


@pytest.mark.slow
def test_evaluate_takes_demo_for_model_base_and_data(tmp_path):
    assets = build_demo()  # cached after the first build (the demo sweep's own assets)
    out = tmp_path / "m.json"
    proc = subprocess.run([*CLI, "evaluate", "--model", "demo", "--base", "demo", "--data", "demo", "--limit", "2",
                           "--out", str(out)], capture_output=True, text=True, env=cli_env(tmp_path), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    text = json.dumps(report)
    assert str(assets.model_dir) in text and str(assets.edits_path) in text
    assert report["metrics"]["locality"] == pytest.approx(100.0)  # the base against itself: unchanged


@pytest.mark.skipif(hub_reachable(), reason="the Hugging Face hub answers here: this is the offline path")
def test_plan_offline_reads_the_cache_without_a_line_of_hub_retries(tmp_path):
    env = {k: v for k, v in cli_env(tmp_path).items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    started = time.monotonic()
    proc = subprocess.run([*CLI, "plan", str(REPO / "search_spaces" / "wide_exploration.yaml"), "--gpus", "4"],
                          capture_output=True, text=True, env=env, timeout=300)
    seconds = time.monotonic() - started
    assert "Retrying" not in proc.stderr and "thrown while requesting" not in proc.stderr, proc.stderr[-2000:]
    assert seconds < 25 + 5 * (os.getloadavg()[0] > 4), seconds  # the retries alone took ~23 s
    assert proc.returncode in (0, 2), proc.stderr[-2000:]  # a plan, or the clear error naming --records
    assert "Plan for sweep" in proc.stdout or "--records" in proc.stderr


@pytest.mark.skipif(shutil.which("script") is None, reason="no `script` to give the build a terminal")
def test_the_demo_tokenizer_draws_no_progress_bar_on_a_terminal(tmp_path):
    code = ("from mm4ke_ray.demo.tiny import build_word_tokenizer\n"
            "build_word_tokenizer(['the capital of Norvia is Kell .'] * 20000)\n")
    (tmp_path / "build.py").write_text(code)
    env = {**cli_env(tmp_path), "PYTHONPATH": str(REPO), "COLUMNS": "80"}
    proc = subprocess.run(["script", "-qc", f"{sys.executable} {tmp_path / 'build.py'}", "/dev/null"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "Pre-processing sequences" not in proc.stdout  # tokenizers' own bar (issue 26 §4)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("script") is None, reason="no `script` to give the command a terminal")
def test_plan_probe_on_a_terminal_prints_the_plan_and_no_library_output(tmp_path):
    build_demo()  # cached after the first build
    env = {**cli_env(tmp_path), "COLUMNS": "120", "PYTHONPATH": str(REPO)}
    command = f"{sys.executable} -m mm4ke_ray.cli plan {REPO / 'search_spaces' / 'demo.yaml'} --probe"
    proc = subprocess.run(["script", "-qc", command, "/dev/null"], capture_output=True, text=True, env=env,
                          timeout=600)
    text = proc.stdout.replace("\r", "\n")
    assert proc.returncode == 0 and "Plan for sweep" in text, text[-3000:]
    for noise in ("model kwarg is not of type", "already-initialized model", "%|", "Loading weights"):
        assert noise not in text, noise  # lm-eval's notices, tqdm and transformers' bars (issue 26 §4)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("script") is None, reason="no `script` to give the build a terminal")
def test_demo_build_lines_stand_apart_from_its_live_pretraining_line(tmp_path):
    code = ("import sys\n"
            f"sys.path.insert(0, {str(REPO / 'tests')!r})\n"
            "from rich.console import Console\n"
            "from test_demo import SMALL\n"
            "from mm4ke_ray.demo.build import build_demo\n"
            "say = Console(stderr=True).print  # the command layer's own console, as `demo` has\n"
            f"build_demo({str(tmp_path / 'cache')!r}, num_edits=6, seed=1, config=SMALL, live=True,\n"
            "           progress=lambda m: say(f'demo: {m}'))\n")
    (tmp_path / "build.py").write_text(code)
    env = {**cli_env(tmp_path), "PYTHONPATH": str(REPO), "COLUMNS": "100"}
    proc = subprocess.run(["script", "-qc", f"{sys.executable} {tmp_path / 'build.py'}", "/dev/null"],
                          capture_output=True, text=True, env=env, timeout=600)
    lines = [re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", x) for x in proc.stdout.replace("\r", "\n").splitlines()]
    assert proc.returncode == 0, "\n".join(lines[-40:])
    said = [x for x in lines if "demo: " in x]
    assert any("demo assets built" in x for x in said)
    assert not any("demo model: pretraining" in x for x in said), said  # no message glued onto the bar
