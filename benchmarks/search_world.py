"""The search-quality world: a 4-layer demo model, a wide search space and the grid over it.

The everyday demo (2 layers, lr 1e-4..1e-3) is too easy to tell a good search from a bad one:
nearly every configuration reaches the ideal corner. Here the model has 4 blocks (the blocks
do not edit equally well: which block, lr and τ matter together), the learning rate spans two
decades, and the grid below enumerates the space at the points a search may land on.

The grid (R-SFT configurations × merge points) is run once by `search_grid.py` and kept in
`fixtures/search_grid.json`; `search_replay.py` replays a sweep against it without training.
"""

from __future__ import annotations

import itertools

# Demo build parameters of this world (everything else as the everyday demo's).
DEMO_LAYERS = 4
DEMO_STEPS = 1500  # 4 blocks learn the world more slowly: 600 steps (the demo's) reached 55% accuracy

# The grid: every combination of these R-SFT values, each merged at every (α, sparsity).
GRID = {
    "layer": [0, 1, 2, 3],
    "lr": [1e-4, 3e-4, 1e-3, 3e-3],
    "threshold": [0.01, 0.1],
    "epochs": [1, 3],
    "steps": [4],
}
MERGE_GRID = {
    "alpha": [0.0, 0.25, 0.5, 0.75],
    "sparsity": [0.0, 0.4, 0.8],
}
RSFT_NAMES = ("threshold", "steps", "epochs", "lr", "layer")

# The search space a user would write for this world: the grid's hull, log scale for lr and τ.
SPACE = {
    "threshold": {"low": 0.01, "high": 0.1, "log": True},
    "steps": {"choices": [4]},
    "epochs": {"low": 1, "high": 3},
    "lr": {"low": 1e-4, "high": 3e-3, "log": True},
    "layer": {"choices": [0, 1, 2, 3]},
    "alpha": {"low": 0.0, "high": 0.75},
    "sparsity": {"low": 0.0, "high": 0.8},
}


def demo_config():
    """The DemoConfig of this world (a cached build, like the everyday demo's)."""
    from mm4ke_ray.demo.build import DemoConfig
    from mm4ke_ray.demo.pretrain import PretrainConfig

    return DemoConfig(pretrain=PretrainConfig(layers=DEMO_LAYERS, steps=DEMO_STEPS))


def rsft_grid() -> list[dict]:
    """Every R-SFT configuration of the grid, in a fixed order."""
    names = list(GRID)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*(GRID[n] for n in names))]


def merge_grid() -> list[dict]:
    """Every (α, sparsity) point of the grid."""
    return [{"alpha": a, "sparsity": s} for a in MERGE_GRID["alpha"] for s in MERGE_GRID["sparsity"]]


def search_config(sampler: str, seed: int, num_trials: int):
    """The product's SearchConfig for this world's space."""
    from mm4ke_ray.config import SearchConfig

    return SearchConfig(num_trials=num_trials, sampler=sampler, seed=seed, space=SPACE)
