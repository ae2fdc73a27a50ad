"""The front picture draws each point's SE on both axes (issue 23 §3): the general score's SE on
x, the edit score's on y, from the candidate's `general_score.stderr` / `edit_score.stderr`."""

from __future__ import annotations

import re

import pytest

from mm4ke_ray.evaluate.pareto_front import split_front
from mm4ke_ray.evaluate.scores import EDIT_STDERR, GENERAL_STDERR
from mm4ke_ray.schema import SAMPLED
from mm4ke_ray.tracking.pareto_plots import write_front_html, write_front_png

POINTS = {"a": (0.95, 0.80, 0.02, 0.04), "b": (0.86, 0.90, 0.03, 0.01), "c": (0.60, 0.97, 0.05, 0.02)}


def _rows(with_se: bool) -> list[dict]:
    rows = []
    for i, (name, (edit, general, se_edit, se_general)) in enumerate(POINTS.items()):
        row = {"candidate": f"t{i}-{name}", "kind": SAMPLED, "alpha": 0.1 * i, "sparsity": 0.2, "edit_score": edit,
               "general_score": general, "combined_score": (edit + general) / 2, "edit_succ": 100 * edit}
        if with_se:
            row.update({EDIT_STDERR: se_edit, GENERAL_STDERR: se_general})
        rows.append(row)
    return split_front(rows)[0]


def test_front_png_draws_error_bars(tmp_path):
    import numpy as np
    from matplotlib.image import imread

    def bar_pixels(rows: list[dict]) -> int:
        path = write_front_png(rows, tmp_path / "front.png", "t")
        rgb = (imread(path)[..., :3] * 255).round()
        return int(np.sum(np.all(rgb == 0x96, axis=-1)))  # the bars' colour #969696

    assert bar_pixels(_rows(True)) > bar_pixels(_rows(False)) + 100


def test_front_html_error_bars_span_one_se_each_way(tmp_path):
    html = write_front_html(_rows(True), tmp_path / "front.html", "t").read_text()
    paths = re.findall(r'<path class="se" d="M([\d.]+),([\d.]+)H([\d.]+)M([\d.]+),([\d.]+)V([\d.]+)"', html)
    assert len(paths) == len(POINTS)
    widths = [float(p[2]) - float(p[0]) for p in paths]  # 2 SE of the general score, in pixels
    heights = [float(p[4]) - float(p[5]) for p in paths]  # 2 SE of the edit score (y grows downwards)
    se_general = [v[3] for v in POINTS.values()]
    se_edit = [v[2] for v in POINTS.values()]
    for i in range(1, len(POINTS)):
        assert widths[i] / widths[0] == pytest.approx(se_general[i] / se_general[0], rel=0.02)
        assert heights[i] / heights[0] == pytest.approx(se_edit[i] / se_edit[0], rel=0.02)
    assert f"{GENERAL_STDERR}: 0.04" in html  # the tooltip says it
    plain = write_front_html(_rows(False), tmp_path / "plain.html", "t").read_text()
    assert 'class="se"' not in plain
