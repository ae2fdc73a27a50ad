"""R-SFT: freeze all but the chosen block's MLP, run Algorithm 1, return the delta (rsft/ in the
flow config → data → rsft → merge → evaluate → search → tracking → export, commands on top).

`rsft.run.rsft_to_folder` is R-SFT to a folder (delta + log), for the CLI and the sweep trial.
Names load on first use, so `mm4ke_ray.rsft.config` (the CLI's --help) does not import torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "RSFTConfig": "config",
    "LOSS_DEFINITION": "trainer",
    "DivergedError": "trainer",
    "RSFTResult": "trainer",
    "run_rsft": "trainer",
    "RSFTRun": "run",
    "rsft_to_folder": "run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
