"""The candidate tables stay readable at 80, 100 and 120 columns; printed commands never wrap."""

from __future__ import annotations

import io
import random

import pytest
from rich.console import Console

from mm4ke_ray.schema import BASE, GEN_EDIT_METRICS, PURE_RSFT, SAMPLED
from mm4ke_ray.tracking.tables import (
    CORE_COLUMNS,
    REFERENCE_CAPTION,
    column_cells,
    counts_line,
    format_cell,
    print_command,
    print_table,
    reference_rows,
)


def _rows(n: int = 6, gen: bool = False) -> list[dict]:
    rng = random.Random(3)
    rows = []
    for i in range(n):
        row = {
            "candidate": f"3f9a1c2e_{i:05d}-c{i % 4}",
            "kind": SAMPLED,
            "trial_id": f"3f9a1c2e_{i:05d}",
            "run_id": f"{i:032x}",
            "layer": 3,
            "lr": 3e-4 * (i + 1),
            "threshold": 0.1,
            "steps": 10,
            "epochs": 3,
            "alpha": round(0.1 + 0.13 * i, 3),
            "sparsity": round(rng.random(), 3),
            "density": 0.5,
            "edit_succ": 60 + rng.random() * 40,
            "generalization": 50 + rng.random() * 40,
            "portability": 20 + rng.random() * 40,
            "locality": 70 + rng.random() * 30,
            "edit_score": 0.5 + rng.random() / 2,
            "general_score": 0.9 + rng.random() / 10,
            "combined_score": 0.7 + rng.random() / 4,
        }
        if gen:
            row.update({m: 10 + rng.random() * 80 for m in GEN_EDIT_METRICS})
        rows.append(row)
    return rows


def _render(rows, width: int, **kw) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    print_table(rows, "Pareto front of demo", console=console, **kw)
    return console.export_text()


@pytest.mark.parametrize("width", [80, 100, 120])
def test_every_core_number_is_visible_and_no_line_is_wider_than_the_terminal(width):
    rows = _rows()
    text = _render(rows, width)
    assert max(len(line) for line in text.splitlines()) <= width
    for r in rows:
        assert r["candidate"] in text  # whole, not cut: it is what `export --pick` takes
        for c in CORE_COLUMNS[1:]:
            assert format_cell(r[c]) in text, (c, format_cell(r[c]), text)
    header = text.splitlines()[2]
    for name in ("α", "sparsity", "edit", "general", "combined"):
        assert name in header


def test_wider_terminals_show_more_columns_and_wide_shows_them_all():
    rows = _rows()
    narrow, wider = _render(rows, 80), _render(rows, 120)
    assert "succ" not in narrow.splitlines()[2] or len(wider.splitlines()[2]) > len(narrow.splitlines()[2])
    assert "succ" in wider  # the first secondary column joins when it fits
    everything = _render(rows, 80, wide=True)
    for r in rows:
        for c in ("run_id", "threshold", "epochs", "portability", "locality"):
            assert format_cell(r[c]) in everything, c


@pytest.mark.parametrize("width", [100, 120])
def test_both_metric_families_show_when_the_sweep_computed_both(width):
    rows = _rows(gen=True)
    text = _render(rows, width)
    assert "wild.succ" in text and "tf.succ" in text  # each edit number's family (issue 23)
    assert "tf.* = teacher-forced" in text and "wild.* = generated" in text
    for r in rows:
        assert format_cell(r["gen.edit_succ"]) in text
        assert format_cell(r["edit_succ"]) in text


def test_reference_rows_sit_apart_from_the_front_and_counts_agree():
    rows = _rows()
    base = {"candidate": BASE, "kind": BASE, "edit_score": 0.01, "general_score": 1.0, "combined_score": 0.5}
    pure = [{**rows[0], "candidate": "p1-c0", "kind": PURE_RSFT, "combined_score": 0.4},
            {**rows[1], "candidate": "p2-c0", "kind": PURE_RSFT, "combined_score": 0.45}]
    front = rows[:3]
    refs = reference_rows([base, *pure, *rows], front)
    assert [r["candidate"] for r in refs] == [BASE, "p2-c0"]  # the base, then the best pure R-SFT
    # A reference on the front is a front row, not a reference.
    assert reference_rows([base, *rows], [base, *front]) == []
    text = _render(front, 80, references=refs)
    lines = text.splitlines()
    base_line = next(i for i, line in enumerate(lines) if line.startswith("│ base"))
    pure_line = next(i for i, line in enumerate(lines) if "p2-c0" in line)
    first_front = next(i for i, line in enumerate(lines) if front[0]["candidate"] in line)
    rule = next(i for i, line in enumerate(lines) if i > pure_line and line.startswith("├"))
    assert base_line < pure_line < rule < first_front
    assert " ".join(REFERENCE_CAPTION.split()[:4]) in " ".join(text.split())
    assert counts_line(3, 40) == "3 on the front of 40 candidates + the base model"


def test_a_printed_command_stays_on_one_line_at_80_columns():
    console = Console(width=80, record=True, file=io.StringIO())
    cmd = "/very/long/path/to/the/venv/bin/mlflow ui --backend-store-uri sqlite:////home/user/project/runs/mlflow.db --host 127.0.0.1 --port 5000"
    print_command(console, "[bold]Open MLflow:[/]", cmd)
    out = console.export_text()
    assert out.rstrip("\n").count("\n") == 0
    assert out.strip() == f"Open MLflow: {cmd}"


def test_sweep_progress_is_one_live_line_on_a_terminal_and_a_line_per_trial_otherwise():
    import re

    from mm4ke_ray.search.progress import SweepProgress, wants_live

    # Not a terminal (a CI log, a pipe): one plain line per finished trial.
    log = io.StringIO()
    console = Console(file=log, width=100)
    assert not wants_live(console)
    plain = SweepProgress(console, 3, wants_live(console))
    for done in (1, 2, 3):
        plain.update(done, f"(0 failed) · candidates {2 * done}")
    plain.stop()
    assert log.getvalue().splitlines() == [f"trials {d}/3 (0 failed) · candidates {2 * d}" for d in (1, 2, 3)]

    # A terminal: one line redrawn in place; what is printed meanwhile lands above it.
    screen = io.StringIO()
    terminal = Console(file=screen, width=100, force_terminal=True)
    live = SweepProgress(terminal, 3, live=True)
    live.start(0, "(0 failed) · candidates 0")
    for done in (1, 2, 3):
        live.update(done, f"(0 failed) · candidates {2 * done}")
        if done == 2:
            terminal.print("trial b2 diverged")
    live.stop()
    live.stop()  # the driver stops it again after the fit: harmless
    out = screen.getvalue()
    assert "\x1b[2K" in out or "\x1b[1A" in out  # the cursor goes back to redraw the line
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)
    assert "trials 1/3" not in text  # no static per-trial lines
    final = [line for line in text.replace("\r", "\n").splitlines() if line.strip()]
    assert "trial b2 diverged" in final
    assert "3/3" in final[-1] and "candidates 6" in final[-1] and final[-1].lstrip().startswith("sweep")


@pytest.mark.parametrize("width", [80, 120])
def test_the_table_says_which_columns_it_left_out_and_wide_fits_the_width(width):
    rows = _rows(gen=True)
    text = _render(rows, width)
    assert "more column(s) left out to fit" in text and "--wide shows every column" in text
    everything = _render(rows, width, wide=True)
    assert max(len(line) for line in everything.splitlines()) <= width  # no wrapped lines (issue 26 §4)
    assert "left out" not in everything
    for r in rows:
        assert everything.count(r["candidate"]) >= 2  # each part of the wide table names the candidate
        for c in ("run_id", "threshold", "gen.portability", "locality"):
            assert column_cells(c, rows)[rows.index(r)] in everything, c


def test_numbers_in_one_column_share_a_format():
    rows = [{"candidate": "a", "lr": 3e-4, "alpha": 0.5, "edit_succ": 100.0},
            {"candidate": "b", "lr": 0.001, "alpha": 0.125, "edit_succ": 7.25}]
    assert column_cells("lr", rows) == ["3.00e-04", "1.00e-03"]
    assert column_cells("alpha", rows) == ["0.5000", "0.1250"]
    assert column_cells("edit_succ", rows) == ["100.0", "7.2"] or column_cells("edit_succ", rows) == ["100.0", "7.3"]
    assert column_cells("candidate", rows) == ["a", "b"]


def test_a_halving_trial_gets_one_rung_line():
    from mm4ke_ray.search.progress import rung_line

    assert rung_line("t03", [2, 0, 1, 0, 0, 2, 0, 1]) == "t03 halving: rung 0: 8 → rung 1: 4 → full rung 2: 2 · 6 pruned"
    assert rung_line("t03", [0, 0]) is None and rung_line("t03", []) is None  # no halving: no line
    # a rung the plan skips (too few items for the sign test) is said so, not counted
    assert rung_line("t04", [2, 1, 1], skipped=(0,)) == "t04 halving: rung 0 skipped → rung 1: 3 → full rung 2: 1 · 2 pruned"


def test_the_progress_lines_best_counts_the_warm_started_front():
    from mm4ke_ray.search.callback import SweepCallback

    callback = SweepCallback(None, total_trials=4, console=Console(file=io.StringIO()), live=False)
    callback.earlier = [{"candidate": "warm-1", "combined_score": 0.91}]  # copied in by --warm-start
    callback.rows = [{"candidate": "t1-c0", "combined_score": 0.5}]
    assert "best 0.9100" in callback._summary(short=True)
    callback.rows.append({"candidate": "t2-c0", "combined_score": 0.95})
    assert "best 0.9500" in callback._summary(short=True)


def test_wide_keeps_related_columns_together_and_explains_once():
    """`pareto --wide` at 120 columns (issue 26): each general task's score, stderr and retention
    side by side, the per-kind means by family, timings and the run id at the end, and the notes
    (the reference line, the families) once under all the parts instead of under each."""
    rows = _rows(gen=True)
    for i, row in enumerate(rows):
        row.update({"eval_seconds": 3.0 + i, "fluency": 500.0 + i, "portability.Reasoning": 40.0,
                    "gen.portability.Reasoning": 20.0, "locality.Forgetfulness": 90.0})
        for task in ("logiqa", "arc_easy"):
            row.update({f"general.{task}": 0.3, f"general.{task}.stderr": 0.02, f"retention.{task}": 0.9 - i / 10})
    base = {"candidate": BASE, "kind": BASE, "edit_score": 0.01, "general_score": 1.0, "combined_score": 0.5}
    text = _render(rows, 120, wide=True, references=[base])
    assert max(len(line) for line in text.splitlines()) <= 120
    headers = [cell.strip() for line in text.splitlines() if line.startswith("┃") for cell in line.split("┃")]
    order = [h for h in headers if h and h != "candidate"]
    for task in ("arc_easy", "logiqa"):
        at = order.index(f"general.{task}")
        assert order[at:at + 3] == [f"general.{task}", f"general.{task}.stderr", f"retention.{task}"], order
    kinds = [h for h in order if h.endswith(("Reasoning", "Forgetfulness"))]
    assert kinds == ["tf.locality.Forgetfulness", "tf.portability.Reasoning", "wild.portability.Reasoning"], kinds
    assert order.index("fluency") < order.index("tf.locality.Forgetfulness")
    assert order.index("general.logiqa") < order.index("eval_seconds") < order.index("run_id") == len(order) - 1
    flat = " ".join(text.split())
    assert flat.count(" ".join(REFERENCE_CAPTION.split()[:4])) == 1 and flat.count("tf.* = teacher-forced") == 1
    assert flat.rindex("tf.* = teacher-forced") > flat.rindex("│")  # under the last part


def test_an_80_column_table_shows_the_edit_objectives_own_family_first():
    rows = _rows(gen=True)
    header = lambda text: text.splitlines()[2]  # noqa: E731
    # At 84 columns one succ column fits: the objective's family's.
    wild_first = _render(rows, 84, edit_mode="generation")
    assert "wild.succ" in header(wild_first) and "tf.succ" not in header(wild_first)
    assert "edit (the objective) is computed from wild.*" in " ".join(wild_first.split())
    tf_first = _render(rows, 84, edit_mode="teacher-forced")
    assert "tf.succ" in header(tf_first) and "wild.succ" not in header(tf_first)
    # At 80 wild.succ does not fit; tf.succ would, but alone it would pass for the objective's.
    narrow = _render(rows, 80, edit_mode="generation")
    assert "succ" not in header(narrow) and "wild.succ" in narrow.splitlines()[-1]
    wide = _render(rows, 160, edit_mode="generation")
    assert header(wide).index("wild.succ") < header(wide).index("tf.succ")
