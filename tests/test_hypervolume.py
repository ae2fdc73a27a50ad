"""The two-objective hypervolume of our own (a sort and a sum) against hand-computed areas and
against Optuna's `compute_hypervolume`, the implementation the product used before (issue 27.4)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from optuna._hypervolume import compute_hypervolume  # the oracle; the product does not import it

from mm4ke_ray.evaluate.pareto_front import hypervolume, hypervolume_2d


def test_hand_computed_areas():
    assert hypervolume_2d([[1.0, 1.0]], (0.0, 0.0)) == 1.0
    # Two steps: 0.5 x 1 plus the 0.5 x 0.5 strip that the second raises above the first.
    assert hypervolume_2d([[0.5, 1.0], [1.0, 0.5]], (0.0, 0.0)) == 0.75
    # A dominated point and a duplicate add nothing; a tie on the first objective keeps the higher.
    assert hypervolume_2d([[0.5, 1.0], [1.0, 0.5], [0.4, 0.4], [1.0, 0.5], [1.0, 0.3]], (0.0, 0.0)) == 0.75
    assert hypervolume_2d([[0.6, 0.7]], (0.2, 0.5)) == pytest.approx(0.4 * 0.2)
    with pytest.raises(ValueError, match="two objectives"):
        hypervolume_2d([[1.0, 1.0, 1.0]], (0.0, 0.0, 0.0))


def test_rows_below_the_reference_or_unscored_add_nothing():
    rows = [{"edit_score": 0.8, "general_score": 0.9}, {"edit_score": 0.9, "general_score": 0.1},
            {"edit_score": None, "general_score": 1.0}, {"edit_score": float("nan"), "general_score": 1.0}]
    assert hypervolume(rows, (0.5, 0.5)) == pytest.approx(0.3 * 0.4)
    assert hypervolume([], (0.0, 0.0)) == 0.0 and hypervolume(rows[1:2], (0.95, 0.0)) == 0.0


@pytest.mark.parametrize("seed", range(20))
def test_equals_optunas_hypervolume(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 40)
    grid = rng.random() < 0.5  # ties and duplicates on a coarse grid
    points = [[round(rng.random(), 1) if grid else rng.random(), round(rng.random(), 1) if grid else rng.random()]
              for _ in range(n)]
    reference = (rng.uniform(-0.2, -0.01), rng.uniform(-0.2, -0.01))  # Optuna takes no point beyond it
    ours = hypervolume_2d(points, reference)
    # Optuna minimises: negate both points and reference.
    theirs = float(compute_hypervolume(-np.asarray(points), -np.asarray(reference)))
    assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-15)
