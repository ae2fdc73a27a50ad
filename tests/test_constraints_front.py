"""Constraints on the product's front (issue 12.4) and the edit score's family on it (issue 14.2).

A sweep with `objectives.min_edit_score` records the minimum in its parent run's params; the
front (pareto/*.csv, front.png, front.html, `mm4ke-ray pareto`), the best pick (the parent's
`mm4ke.best_*` tags, `export --pick best`) then count feasible candidates only, and infeasible
ones are drawn grey. Hand-built candidates, logged to a real SQLite MLflow store; no Ray.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from mm4ke_ray.config import SweepConfig
from mm4ke_ray.evaluate.pareto_front import FEASIBLE, ON_FRONT, best_candidate, split_front
from mm4ke_ray.schema import BASE, PARETO_DIR, SAMPLED, Tag
from mm4ke_ray.tracking.mlflow_tracker import SweepTracker
from mm4ke_ray.tracking.pareto_artifacts import publish_pareto
from mm4ke_ray.tracking.pareto_plots import (
    INFEASIBLE_COLOUR,
    INFEASIBLE_LABEL,
    axis_labels,
    write_front_png,
)
from mm4ke_ray.tracking.query import load_sweep

MIN_EDIT = 0.8
# (edit_score, general_score); combined = their mean. Without a minimum, "c" is the best pick and
# on the front (it has the highest general score of the edited ones); with min 0.8 it is not.
POINTS = {
    "a": (0.95, 0.80),  # feasible, on the front
    "b": (0.86, 0.90),  # feasible, on the front, best feasible combined (0.88)
    "c": (0.79, 1.00),  # infeasible (0.79 < 0.8), best combined overall (0.895)
    "d": (0.30, 0.95),  # infeasible, dominated by c
    "e": (0.82, 0.70),  # feasible, dominated by a
}
BASE_POINT = (0.05, 1.00)  # infeasible too: the unedited model edits nothing
INFEASIBLE = {"c", "d", BASE}


def _metrics(edit: float, general: float) -> dict:
    pct = 100 * edit
    return {"edit_score": edit, "general_score": general, "combined_score": (edit + general) / 2,
            "edit_succ": pct, "generalization": pct, "portability": pct, "locality": 100 * general,
            "gen.edit_succ": pct - 7.0, "gen.generalization": pct - 9.0, "gen.portability": pct - 11.0,
            "gen.locality": 100 * general}


def _rows(points: dict) -> list[dict]:
    return [{"candidate": f"t{i}-{name}", "kind": SAMPLED, "trial_id": f"t{i}", "alpha": 0.1 * i, "sparsity": 0.2,
             **_metrics(*point)} for i, (name, point) in enumerate(points.items())]


def _short(candidate: str) -> str:
    return candidate.split("-")[-1]


def test_infeasible_rows_are_marked_off_the_front_and_never_the_best():
    rows = [{"candidate": BASE, "kind": BASE, **_metrics(*BASE_POINT)}, *_rows(POINTS)]
    mins = {"edit_score": MIN_EDIT}
    marked, front = split_front(rows, mins)
    assert {_short(r["candidate"]) for r in marked if r[FEASIBLE] is False} == INFEASIBLE
    assert {_short(r["candidate"]) for r in front} == {"a", "b"}
    assert _short(best_candidate(rows, mins)["candidate"]) == "b"
    # Without the minimum the same rows put c on the front and make it the best pick:
    _, unconstrained = split_front(rows)
    assert "c" in {_short(r["candidate"]) for r in unconstrained}
    assert _short(best_candidate(rows)["candidate"]) == "c"
    assert all(FEASIBLE not in r for r in split_front(rows)[0])  # no column without minimums


def _log_sweep(tmp: Path, name: str, min_edit: float, edit_mode: str = "generation") -> tuple[str, str]:
    """A parent run as `mm4ke-ray sweep` opens it (the params and config.yaml export reads), the base
    and every candidate as child runs, then the Pareto artifacts published. (uri, parent run id)"""
    uri = f"sqlite:///{tmp}/mlflow.db"
    config = SweepConfig(name=name, evaluation={"mode": "both"},
                         objectives={"edit_mode": edit_mode, "min_edit_score": min_edit})
    tracker = SweepTracker(uri, "constraints", str(tmp / "artifacts"))
    parent = tracker.start_sweep(name, params={
        "model": "unused/model", "edits": "unused.json", "prompt_format": "plain", "merge_method": "magnitude",
        "seed": 0, "eval_mode": "both", "edit_mode": edit_mode, "min_edit_score": min_edit,
    }, tags={})
    tracker.log_text(yaml.safe_dump(config.model_dump(), sort_keys=False), "config.yaml")
    base = {"candidate": BASE, "kind": BASE, **_metrics(*BASE_POINT)}
    tracker.log_candidate(BASE, {"alpha": None}, base, {Tag.KIND: BASE, Tag.STATUS: "ok"})
    rows = _rows(POINTS)
    for row in rows:
        params = {k: row[k] for k in ("alpha", "sparsity")}
        metrics = {k: v for k, v in row.items() if isinstance(v, float) and k not in params}
        row["run_id"] = tracker.log_candidate(row["candidate"], params, metrics,
                                              {Tag.KIND: SAMPLED, Tag.STATUS: "ok", Tag.TRIAL_ID: row["trial_id"]})
    publish_pareto(tracker, rows, base)  # the minimums and edit_mode come from the parent's params
    tracker.finish()
    return uri, parent


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("constraints")
    uri, parent = _log_sweep(tmp, "constrained", MIN_EDIT)
    folder = Path(MlflowClient(uri).download_artifacts(parent, PARETO_DIR, str(tmp / "dl")))
    return uri, parent, folder


def _csv(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open()))


def test_all_csv_marks_infeasible_rows_and_front_csv_has_feasible_ones_only(published):
    _, _, folder = published
    every = _csv(folder / "all.csv")
    assert {_short(r["candidate"]) for r in every if r[FEASIBLE] == "False"} == INFEASIBLE
    assert {_short(r["candidate"]) for r in every if r[ON_FRONT] == "True"} == {"a", "b"}
    assert {_short(r["candidate"]) for r in _csv(folder / "front.csv")} == {"a", "b"}


def _points(html: str) -> dict[str, str]:
    """candidate -> its `<g class="point">` element, as front.html draws it."""
    return {m.group(1): m.group(0) for m in re.finditer(r'<g class="point" data-candidate="([^"]+)".*?</g>', html, re.S)}


def test_front_html_greys_the_infeasible_points_and_rings_only_feasible_ones(published):
    _, _, folder = published
    html = (folder / "front.html").read_text()
    points = _points(html)
    assert {_short(c) for c in points} == set(POINTS) | {BASE}
    for candidate, svg in points.items():
        infeasible = _short(candidate) in INFEASIBLE
        assert ('data-feasible="false"' in svg) == infeasible, svg
        assert (f'fill="{INFEASIBLE_COLOUR}"' in svg) == infeasible, svg
        assert (INFEASIBLE_LABEL in svg) == infeasible  # the tooltip says it too
        on_front = 'stroke="#d62728"' in svg  # the front's red ring
        assert on_front == (_short(candidate) in {"a", "b"}), svg
    # Every grey mark is an infeasible point, plus the legend's one entry naming how many.
    assert html.count(f'fill="{INFEASIBLE_COLOUR}"') == len(INFEASIBLE) + 1
    assert f"{INFEASIBLE_LABEL} ({len(INFEASIBLE)})" in html
    assert "best combined: t1-b" in html
    assert "below objectives.min_edit_score 0.8" in html  # the title says what the minimum is


def test_the_best_tags_the_pareto_command_and_export_pick_feasible_only(published):
    from mm4ke_ray.commands.pareto import front_rows
    from mm4ke_ray.export.export_plan import plan_export

    uri, parent, _ = published
    tags = MlflowClient(uri).get_run(parent).data.tags
    assert tags[Tag.BEST_CANDIDATE] == "t1-b" and tags[Tag.PARETO_SIZE] == "2"
    sweep = load_sweep(uri, parent)
    assert {_short(r["candidate"]) for r in front_rows(sweep)} == {"a", "b"}
    marked = front_rows(sweep, everything=True)
    assert {_short(r["candidate"]) for r in marked if not r[FEASIBLE]} == INFEASIBLE
    assert plan_export(uri, parent, "best", device="cpu").candidate["candidate"] == "t1-b"
    # An infeasible candidate can still be exported when asked for by name.
    assert plan_export(uri, parent, "t2-c", device="cpu").candidate["candidate"] == "t2-c"


def test_no_feasible_candidate_is_said_plainly_and_nothing_is_picked(tmp_path, capsys):
    from mm4ke_ray.cli import main

    uri, parent = _log_sweep(tmp_path, "unreachable", 0.99)
    client = MlflowClient(uri)
    assert Tag.BEST_CANDIDATE not in client.get_run(parent).data.tags
    html = Path(client.download_artifacts(parent, f"{PARETO_DIR}/front.html", str(tmp_path / "dl"))).read_text()
    assert "no candidate meets objectives.min_edit_score 0.99" in html
    assert main(["pareto", "--tracking-uri", uri, "--sweep", parent]) == 0
    assert "no candidate of sweep 'unreachable' meets objectives.min_edit_score 0.99" in capsys.readouterr().err
    out = tmp_path / "out"
    assert main(["export", "--tracking-uri", uri, "--sweep", parent, "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "meets its minimums (objectives.min_edit_score 0.99)" in err and "--pick" in err, err
    assert not out.exists() or not any(out.iterdir())


# -- issue 14.2: which family the edit score comes from, and both families in the tooltips -------


def test_the_edit_axis_names_its_family(published):
    rows = _rows(POINTS)
    assert "teacher-forced" in axis_labels(rows, "teacher-forced")[1]
    assert "generation" in axis_labels(rows, "generation")[1] and "gen.edit succ." in axis_labels(rows, "generation")[1]
    assert "teacher-forced" in axis_labels(rows)[1]  # both families present, none recorded: the default
    gen_only = [{k: v for k, v in r.items() if not k.startswith(("edit_succ", "generalization", "portability"))}
                for r in rows]
    assert "generation" in axis_labels(gen_only)[1]  # only gen.* metrics: the score can only be theirs
    _, _, folder = published  # that sweep recorded edit_mode: generation
    html = (folder / "front.html").read_text()
    assert "Edit score, generation (greedy answers)" in html and "Edit score, teacher-forced" not in html


def test_front_html_tooltips_show_both_families(published):
    _, _, folder = published
    for candidate, svg in _points((folder / "front.html").read_text()).items():
        title = re.search(r"<title>(.*?)</title>", svg, re.S).group(1)
        assert "edit_succ: " in title and "gen.edit_succ: " in title, (candidate, title)
        assert "gen.locality: " in title


def test_front_png_draws_the_infeasible_points_grey(tmp_path):
    import numpy as np
    from matplotlib.image import imread

    rows = [{"candidate": BASE, "kind": BASE, **_metrics(*BASE_POINT)}, *_rows(POINTS)]

    def grey_pixels(marked: list[dict]) -> int:
        path = write_front_png(marked, tmp_path / "front.png", "t", "generation")
        rgb = (imread(path)[..., :3] * 255).round()
        return int(np.sum(np.all(rgb == 0xBD, axis=-1)))  # INFEASIBLE_COLOUR #bdbdbd

    greyed = grey_pixels(split_front(rows, {"edit_score": MIN_EDIT})[0])
    plain = grey_pixels(split_front(rows)[0])
    assert greyed > plain + 150, (greyed, plain)  # here 284 vs 19 grey pixels


def test_front_png_crosses_the_candidates_of_an_earlier_sweep(tmp_path):
    import numpy as np
    from matplotlib.image import imread

    from mm4ke_ray.schema import WARM_START

    rows = [{"candidate": BASE, "kind": BASE, **_metrics(*BASE_POINT)}, *_rows(POINTS)]

    def green_pixels(marked: list[dict]) -> int:
        path = write_front_png(split_front(marked)[0], tmp_path / "front.png", "t", "generation")
        rgb = (imread(path)[..., :3] * 255).round()
        return int(np.sum(np.all(rgb == (0x31, 0xA3, 0x54), axis=-1)))  # WARM_COLOUR #31a354

    warm = [{**r, WARM_START: "earlier"} if i % 2 else r for i, r in enumerate(rows) if r["kind"] != BASE]
    assert green_pixels([rows[0], *warm]) > green_pixels(rows) + 50
