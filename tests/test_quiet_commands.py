"""`mm4ke-ray export` and `mm4ke-ray evaluate` are quiet by default (issue 15); `--verbose` shows
the libraries' output again.

Each runs as a real subprocess on the tiny model: the sweep it exports is one R-SFT trial with a
local lm-eval task, logged to SQLite the way `run_sweep` logs it (no Ray), so the export's
re-evaluation goes through transformers' weight loading and lm-eval as the sweep's did. The
environment is cleared of the quiet switches, so the command itself must set them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ZSRE
from fault_helpers import general_task
from test_pareto_export import log_sweep

from mm4ke_ray.quiet import _ENV, VERBOSE_ENV

CLI = str(Path(sys.executable).with_name("mm4ke-ray"))
NOISE = (
    "Loading weights",  # transformers' weight-loading bar
    "it/s]",  # any tqdm bar
    "%|",
    "`pretrained` model kwarg",  # lm-eval's warning on the loaded model we pass it
    "Passed an already-initialized model",
    "Generating test split",  # datasets' bar on an lm-eval task's first load
)
PARAMS = {
    "threshold": 0.05,
    "steps": 2,
    "epochs": 1,
    "lr": 1e-3,
    "layer": 1,
    "alpha": 0.5,
    "sparsity": 0.2,
}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_model_dir) -> str:
    """A logged one-trial sweep named 'paretotest' with a general lm-eval task; its tracking URI."""
    from mm4ke_ray.config import validate_config
    from mm4ke_ray.delta import load_delta
    from mm4ke_ray.evaluate.candidate import CandidateEvaluator, eval_settings
    from mm4ke_ray.search.rsft_runner import trial_rsft
    from mm4ke_ray.search.space import merge_candidates

    tmp = tmp_path_factory.mktemp("quiet_commands")
    task = general_task(tmp / "tasks", docs=8)
    evaluation = {"batch_size": 8, "general_tasks": [task], "task_include_path": str(tmp / "tasks")}
    config = validate_config({
        "name": "paretotest", "model": {"name": str(tiny_model_dir)}, "data": {"edits": str(ZSRE), "limit": 3},
        "evaluation": evaluation, "search": {"num_trials": 1, "seed": 0}, "merge": {"extra_candidates": 0},
    }, "test")  # fmt: skip
    settings = eval_settings(config, "cpu")
    evaluator = CandidateEvaluator(settings)
    delta_dir = tmp / "aaaa1_00000"
    summary = trial_rsft(settings, config.search, PARAMS, str(delta_dir), "cpu")
    assert summary["status"] == "ok"
    delta, _ = load_delta(delta_dir)
    [candidate] = merge_candidates(config.search, PARAMS["alpha"], PARAMS["sparsity"], 0, seed=7)
    metrics = candidate["metrics"] = evaluator.evaluate(
        delta, PARAMS["alpha"], PARAMS["sparsity"], seed=0
    )
    result = {"status": "ok", **{k: v for k, v in metrics.items() if isinstance(v, int | float)},
              "rsft_updates": summary["rsft_updates"], "rsft_seconds": summary["rsft_seconds"],
              "params": PARAMS, "candidates": [candidate]}  # fmt: skip
    evaluated = {"config": config, "reference": evaluator.reference.metrics,
                 "trials": {"aaaa1_00000": (PARAMS, delta_dir, result)}}  # fmt: skip
    return log_sweep(evaluated, f"sqlite:///{tmp}/mlflow.db", str(tmp / "artifacts"))["uri"]


def _run(*args: str) -> tuple[subprocess.CompletedProcess, str]:
    env = {k: v for k, v in os.environ.items() if k not in _ENV and k != VERBOSE_ENV}
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
    )
    done = subprocess.run([CLI, *args], capture_output=True, text=True, env=env, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    return done, output


def _noise(output: str) -> list[str]:
    return [line for line in output.splitlines() if any(n in line for n in NOISE)]


def test_export_prints_only_its_own_lines_unless_verbose(sweep, tmp_path):
    argv = ("export", "--tracking-uri", sweep, "--sweep", "paretotest", "--device", "cpu")
    done, output = _run(*argv, "--out", str(tmp_path / "quiet"))
    assert not _noise(output), "\n".join(_noise(output))
    assert done.stdout.startswith(f"wrote {tmp_path / 'quiet'}: ")
    # stderr is the export's own progress; the tiny model's tokenizer mismatch is reported once,
    # as the export's warning, not again as a Python warning for each model it loads.
    assert all(line.startswith("export: ") for line in done.stderr.splitlines()), done.stderr
    assert "export: verified:" in done.stderr
    assert "export: WARNING: AutoTokenizer" in done.stderr
    assert "mm4ke-partial" not in output  # the hidden staging folder is no name for the user

    _, output = _run(*argv, "--out", str(tmp_path / "verbose"), "--verbose")
    assert "Loading weights" in output and "`pretrained` model kwarg" in output
    assert "%|" in output  # lm-eval's own bar over a task's documents


def test_evaluate_prints_only_its_results_unless_verbose(tiny_model_dir, tmp_path):
    argv = ("evaluate", "--model", str(tiny_model_dir), "--base", str(tiny_model_dir), "--data", str(ZSRE),
            "--limit", "2", "--device", "cpu", "--mode", "both")  # fmt: skip
    done, output = _run(*argv, "--out", str(tmp_path / "quiet.json"))
    assert not _noise(output), "\n".join(_noise(output))
    assert done.stdout.startswith("2 records, teacher-forced: ")
    # The tiny model's tokenizer mismatch, our own warning: one plain line, no file:line, no
    # echo of the source line that raised it.
    assert "warning: AutoTokenizer.from_pretrained(" in done.stderr, done.stderr
    assert "TokenizerMismatchWarning" not in output and "check_auto_tokenizer" not in output
    _, output = _run(*argv, "--out", str(tmp_path / "verbose.json"), "--verbose")
    assert "Loading weights" in output
