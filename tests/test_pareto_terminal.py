"""`mm4ke-ray pareto` as a person reads it (issue 26 §4): the command on a pty of 80 and 120
columns, plain and `--wide`, over a sweep store holding what a real sweep logs (both metric
families, per-kind means, a general task with its stderr and retention, the base)."""

from __future__ import annotations

import random
import re
import shlex
import shutil
import subprocess
import sys

import pytest
from fault_helpers import cli_env

from mm4ke_ray.schema import BASE, EDIT_METRICS, EXTRA, GEN_EDIT_METRICS, PURE_RSFT, SAMPLED, Tag
from mm4ke_ray.tracking.mlflow_tracker import SweepTracker
from mm4ke_ray.tracking.run_records import candidate_rows, candidate_run, trial_label, trial_run

ANSI = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]")
CORE = ("candidate", "α", "sparsity", "edit", "general", "combined")


def _metrics(rng: random.Random, i: int) -> dict:
    m = {k: 100 * rng.random() for k in (*EDIT_METRICS, *GEN_EDIT_METRICS)}
    m.update({"portability.Reasoning": 40 * rng.random(), "locality.Forgetfulness": 90.0,
              "general.demo_facts": 0.4 + rng.random() / 10, "general.demo_facts.stderr": 0.03,
              "retention.demo_facts": 0.9 + rng.random() / 10, "eval_seconds": 3.0 + i,
              "edit_score": rng.random(), "general_score": 0.8 + rng.random() / 5})
    m["combined_score"] = (m["edit_score"] + m["general_score"]) / 2
    return m


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pareto-pty")
    uri = f"sqlite:///{tmp}/mlflow.db"
    tracker = SweepTracker(uri, "demo", str(tmp / "artifacts"))
    tracker.start_sweep("demo", params={}, tags={})
    rng = random.Random(5)
    tracker.log_candidate("base", {"alpha": 0.0, "sparsity": 0.0}, _metrics(rng, 0),
                          {Tag.KIND: BASE, Tag.STATUS: "ok"})
    for t in range(6):
        trial_id = f"{t:08x}"
        params = {"threshold": 0.1, "steps": 4, "epochs": 2, "lr": 3e-4 * (t + 1), "layer": t % 2}
        cands = [{"alpha": a, "sparsity": s, "kind": k, "metrics": _metrics(rng, t)}
                 for a, s, k in ((rng.random(), rng.random(), SAMPLED), (0.0, 0.0, PURE_RSFT),
                                 (rng.random(), 0.5, EXTRA))]
        label = trial_label(trial_id, f"{t}_lr=0.1")
        for row in candidate_rows({"status": "ok", "params": params, "candidates": cands}, trial_id, label):
            tracker.log_candidate(row["candidate"], *candidate_run(row, trial_id), run_name=row["run_name"],
                                  trial=trial_run(trial_id, label, params))
    tracker.finish()
    return tmp, uri


def _pareto(tmp, uri: str, columns: int, *flags: str) -> list[str]:
    """The command's lines as a pty of `columns` shows them (no COLUMNS: the terminal's own size)."""
    env = {k: v for k, v in cli_env(tmp).items() if k not in ("COLUMNS", "LINES")}
    command = shlex.join([sys.executable, "-m", "mm4ke_ray.cli", "pareto", "--sweep", "demo",
                          "--tracking-uri", uri, *flags])
    proc = subprocess.run(["script", "-qc", f"stty cols {columns} rows 50; {command}", "/dev/null"],
                          capture_output=True, text=True, env=env, timeout=300)
    lines = [ANSI.sub("", x) for x in proc.stdout.replace("\r\n", "\n").splitlines()]
    assert proc.returncode == 0, "\n".join(lines[-40:])
    return lines


@pytest.mark.skipif(shutil.which("script") is None, reason="no `script` to give the command a terminal")
@pytest.mark.parametrize("columns", [80, 120])
def test_pareto_on_a_terminal_fits_it_and_says_what_wide_adds(store, columns):
    lines = _pareto(*store, columns)
    text = "\n".join(lines)
    assert max(map(len, lines)) <= columns, text
    header = " ".join(x for x in lines if x.startswith("┃"))
    for name in CORE:
        assert name in header, (name, text)
    assert "left out to fit" in text and "--wide" in text, text
    assert "base" in text  # the reference row, above the front


@pytest.mark.skipif(shutil.which("script") is None, reason="no `script` to give the command a terminal")
@pytest.mark.parametrize("columns", [80, 120])
def test_pareto_wide_on_a_terminal_wraps_no_line_and_shows_every_column(store, columns):
    lines = _pareto(*store, columns, "--wide")
    text = "\n".join(lines)
    assert max(map(len, lines)) <= columns, text
    assert "left out" not in text
    headers = [c.strip() for x in lines if x.startswith("┃") for c in x.split("┃") if c.strip()]
    for name in ("general.demo_facts", "general.demo_facts.stderr", "retention.demo_facts", "run_id",
                 "tf.portability.Reasoning", "wild.local", "tf.local", "lr"):
        assert name in headers, (name, headers)
    # every header whole: no column name broken over two lines of the header
    assert all(not h.endswith(("…", "-")) for h in headers), headers
