"""R-SFT: freeze all but the chosen block's MLP, run Algorithm 1, return the delta.

`rsft.to_folder.rsft_to_folder` is R-SFT to a folder (delta + log), for the CLI and the sweep trial.
Names load on first use, so `mm4ke_ray.rsft.config` (the CLI's --help) does not import torch.

Flow: config → data → [rsft] → merge → evaluate → search → tracking → export, commands on top.
"""

from __future__ import annotations

from mm4ke_ray.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "config": ("RSFTConfig",),
    "trainer": ("LOSS_DEFINITION", "DivergedError", "RSFTResult", "run_rsft"),
    "to_folder": ("RSFTRun", "rsft_to_folder"),
})
