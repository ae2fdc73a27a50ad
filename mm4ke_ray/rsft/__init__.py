"""R-SFT: freeze all but the chosen block's MLP, run Algorithm 1, return the delta.

`rsft.to_folder.rsft_to_folder` is R-SFT to a folder (delta + log), for the CLI and the sweep trial.
Names load on first use, so `mm4ke_ray.rsft.config` (the CLI's --help) does not import torch.

Flow: config → data → [rsft] → merge → evaluate → search → tracking → export, commands on top.
"""

from __future__ import annotations

from mm4ke_ray.lazy import lazy_exports

_EXPORTS = {
    "RSFTConfig": "config",
    "LOSS_DEFINITION": "trainer",
    "DivergedError": "trainer",
    "RSFTResult": "trainer",
    "run_rsft": "trainer",
    "RSFTRun": "to_folder",
    "rsft_to_folder": "to_folder",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
