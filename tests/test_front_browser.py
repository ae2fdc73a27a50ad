"""front.html as a user sees it: loaded from a sweep's MLflow artifacts into headless Chromium.

MLflow's artifact viewer shows HTML in an iframe sandboxed to `allow-scripts` from a blob URL; the
page is an inline SVG with `<title>` tooltips, so it needs no script and nothing from the network.
"""

from __future__ import annotations

import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient

from mm4ke_ray.schema import BASE, EXTRA, PARETO_DIR, PURE_RSFT, SAMPLED
from mm4ke_ray.tracking.mlflow_tracker import SweepTracker
from mm4ke_ray.tracking.pareto_artifacts import publish_pareto

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _rows(n: int) -> list[dict]:
    rng = random.Random(0)
    kinds = [SAMPLED, EXTRA, EXTRA, PURE_RSFT]
    return [
        {"candidate": f"t{i // 4:02d}-c{i % 4}", "kind": kinds[i % 4], "trial_id": f"t{i // 4:02d}",
         "alpha": rng.random(), "sparsity": rng.random(), "layer": 1, "lr": 1e-3,
         "edit_succ": 100 * rng.random(), "edit_score": rng.random(), "general_score": 0.8 + rng.random() / 5,
         "combined_score": rng.random()}
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def front_html(tmp_path_factory):
    """pareto/front.html of a parent run, published the way a sweep publishes it, read back."""
    tmp = tmp_path_factory.mktemp("front")
    uri = f"sqlite:///{tmp}/mlflow.db"
    tracker = SweepTracker(uri, "fronttest", str(tmp / "artifacts"))
    parent = tracker.start_sweep("fronttest", params={}, tags={})
    rows = _rows(200)
    base = {"edit_score": 0.05, "general_score": 1.0, "combined_score": 0.5}
    publish_pareto(tracker, rows, base)
    folder = MlflowClient(uri).download_artifacts(parent, PARETO_DIR, str(tmp / "dl"))
    return rows, Path(folder) / "front.html"


def test_front_html_is_small_and_needs_no_script_or_network(front_html):
    rows, path = front_html
    html = path.read_text()
    assert len(html.encode()) < 400_000, len(html)  # 200 candidates; plotly's bundle alone was 4.6 MB
    assert "<script" not in html.lower()
    assert not re.search(r"""(src|href)=["']?https?:""", html)


@pytest.mark.skipif(BROWSER is None, reason="no Chromium installed (.ci/run installs Debian's chromium when it can)")
def test_chromium_renders_every_candidate_of_the_front_html(front_html):
    rows, path = front_html
    proc = subprocess.run(
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000", "--dump-dom",
         path.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    dom = proc.stdout
    assert proc.returncode == 0 and "<svg" in dom, proc.stderr[-2000:]
    drawn = set(re.findall(r'class="point" data-candidate="([^"]+)"', dom))
    assert drawn == {r["candidate"] for r in rows} | {BASE}
    assert dom.count("<title>") >= len(rows) + 1  # every point has its tooltip
