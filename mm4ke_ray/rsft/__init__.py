"""R-SFT: freeze all but the chosen block's MLP, run Algorithm 1, return the delta."""

from mm4ke_ray.rsft.config import RSFTConfig
from mm4ke_ray.rsft.trainer import LOSS_DEFINITION, DivergedError, RSFTResult, run_rsft

__all__ = ["LOSS_DEFINITION", "DivergedError", "RSFTConfig", "RSFTResult", "run_rsft"]
