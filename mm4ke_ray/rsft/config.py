"""R-SFT hyperparameters (Algorithm 1 of Fu et al., 2025), with the paper's defaults."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mm4ke_ray.config import LRSchedule, SearchConfig
from mm4ke_ray.schema import RSFT_PARAMS


class RSFTConfig(BaseModel):
    """Robust SFT of one block's MLP: E epochs over the edits, at most K steps per edit, early
    stop of an edit once its answer loss is below τ. Defaults are the paper's."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    layer: int | list[int] = Field(
        5,
        description="Index of the transformer block whose MLP is trained (paper: 5; its Table 6 finds 6-7 best "
        "on Qwen2.5-7B). A list trains several blocks' MLPs (the paper finds that worse).",
    )
    epochs: int = Field(5, description="E: passes over the edit set (paper: 5).")
    steps: int = Field(6, description="K: most optimizer steps per edit per epoch (paper: 6).")
    lr: float = Field(
        5e-4, description="η: learning rate (paper: 5e-4 max; higher edits more, keeps less)."
    )
    threshold: float = Field(
        0.1,
        description="τ: an edit stops for this epoch once its answer loss (mean token NLL) is below τ "
        "(paper: 0.01-0.2, 0.1 best). 0 never stops early.",
    )
    optimizer: Literal["adamw", "sgd"] = Field(
        "adamw",
        description="'adamw': torch AdamW with weight_decay 0 (decay would pull the MLP towards zero, not "
        "towards the base model); 'sgd': plain SGD θ ← θ - η∇L, the paper's eq. 2 literally.",
    )
    prompt_format: Literal["plain", "chat"] = Field(
        "plain",
        description="'plain': prompt + ' ' + answer (EasyEdit); 'chat': the tokenizer's chat template. "
        "Evaluation must use the same format.",
    )
    seed: int = Field(
        0, description="Seed of torch's RNG during training (CPU runs repeat bit-identically)."
    )
    lr_schedule: LRSchedule = Field(
        "constant",
        description="'constant': η on every update, as the paper's Algorithm 1 states (the default). "
        "'linear'/'cosine': decay to 0 over the most updates E·N·K, as LLaMA-Factory (transformers' "
        "get_scheduler) runs; early-stopped edits take fewer updates, so the decay ends above 0.",
    )
    warmup_ratio: float = Field(
        0.0,
        description="Fraction of the most updates E·N·K spent ramping η up linearly from 0 "
        "(ceil(ratio·E·N·K) updates, as transformers does); 0 (default) = no warm-up.",
    )

    @field_validator("layer")
    @classmethod
    def _layer(cls, v: int | list[int]) -> int | list[int]:
        layers = [v] if isinstance(v, int) else v
        if not layers:
            raise ValueError("layer: give a block index (e.g. 5) or a non-empty list of them")
        if any(x < 0 for x in layers):
            raise ValueError(f"layer: block indices must be >= 0, got {v}")
        if len(set(layers)) != len(layers):
            raise ValueError(f"layer: the list {v} repeats a block; list each block once")
        return v

    @field_validator("epochs", "steps")
    @classmethod
    def _at_least_one(cls, v: int, info) -> int:
        if v < 1:
            raise ValueError(f"{info.field_name} must be >= 1, got {v} (paper: epochs 5, steps 6)")
        return v

    @field_validator("lr")
    @classmethod
    def _lr(cls, v: float) -> float:
        if not (v > 0 and math.isfinite(v)):
            raise ValueError(f"lr must be a finite number > 0, got {v} (paper: 5e-4)")
        return v

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, v: float) -> float:
        if not v >= 0:  # also rejects NaN; +inf is allowed and means "never train"
            raise ValueError(
                f"threshold must be >= 0, got {v} (paper: 0.1; 0 disables early stopping)"
            )
        return v

    @field_validator("warmup_ratio")
    @classmethod
    def _warmup(cls, v: float) -> float:
        if not 0 <= v < 1:  # also rejects NaN
            raise ValueError(f"warmup_ratio must be in [0, 1), got {v} (0 = no warm-up)")
        return v

    @classmethod
    def from_setting(cls, setting: Mapping, search: SearchConfig, prompt_format: str) -> RSFTConfig:
        """R-SFT's config for one setting of the search space (the sweep's trial, a stream's round):
        the space's R-SFT parameters from `setting`, the optimizer and seed from `search`."""
        # Optuna's numpy scalars become Python numbers first: pydantic takes those only.
        values = {k: setting[k].item() if hasattr(setting[k], "item") else setting[k] for k in RSFT_PARAMS}
        return cls(optimizer=search.rsft.optimizer, prompt_format=prompt_format, seed=search.seed, **values)

    @property
    def layers(self) -> list[int]:
        """The trained block indices, sorted."""
        return sorted([self.layer] if isinstance(self.layer, int) else self.layer)
