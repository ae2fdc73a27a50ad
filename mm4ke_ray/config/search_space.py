"""The `search:` section: what Optuna searches (`space`), the sampler and R-SFT's fixed settings."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from mm4ke_ray.config.base import MAX_EPOCHS, MAX_LAYER, MAX_STEPS, MAX_TRIALS, Section


class Param(Section):
    """One searched parameter: a range (`low`, `high`, optional `log`) or a list of `choices`.

    A bare number in the YAML fixes the parameter (one choice; not searched).
    """

    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[float] | None = Field(None, min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _bare_number(cls, v):
        if isinstance(v, int | float) and not isinstance(v, bool):
            return {"choices": [v]}
        return v

    @model_validator(mode="after")
    def _shape(self):
        if self.choices is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give either `choices` or `low`/`high`, not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("a range needs both `low` and `high` (or give `choices`, or a single number)")
        if not self.low < self.high:
            raise ValueError(f"empty range: low ({self.low:g}) must be below high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low:g}")
        return self

    @property
    def fixed(self) -> bool:
        return self.choices is not None and len(self.choices) == 1

    def bounds(self) -> list[float]:
        return list(self.choices) if self.choices is not None else [self.low, self.high]

    def text(self) -> str:
        """How a run records it: the one value, choices joined by '|', or 'low..high' (' log')."""
        if self.choices is not None:
            return "|".join(f"{v:g}" for v in self.choices)
        return f"{self.low:g}..{self.high:g}" + (" log" if self.log else "")


LRSchedule = Literal["constant", "linear", "cosine"]  # R-SFT's learning-rate schedules (RSFTConfig too)


class ScheduleParam(Section):
    """The searched learning-rate schedule: `choices` of schedule names; a bare name fixes it."""

    choices: list[LRSchedule] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _bare_name(cls, v):
        return {"choices": [v]} if isinstance(v, str) else v

    @property
    def fixed(self) -> bool:
        return len(self.choices) == 1

    def text(self) -> str:
        """How a run records it: the one schedule, or the choices joined by '|'."""
        return "|".join(self.choices)


def _check(name: str, param: Param, ok, why: str, integer: bool = False) -> Param:
    for v in param.bounds():
        if not math.isfinite(v) or not ok(v):
            raise ValueError(f"value {v:g} {why}")
        if integer and v != int(v):
            raise ValueError(f"value {v:g} must be a whole number")
    return param


class SearchSpace(Section):
    """What Optuna searches jointly. A plain number fixes a parameter."""

    threshold: Param = Field(Param(low=0.01, high=0.2, log=True), description="Early-stop τ on answer loss.")
    steps: Param = Field(Param(low=2, high=8), description="K: max gradient steps per sample.")
    epochs: Param = Field(Param(low=1, high=5), description="E: passes over the edit set.")
    lr: Param = Field(Param(low=1e-4, high=1e-3, log=True), description="η: learning rate.")
    layer: Param = Field(Param(choices=[5]), description="Index of the layer whose MLP is trained.")
    lr_schedule: ScheduleParam = Field(
        ScheduleParam(choices=["constant"]),
        description="η per update: 'constant' (the default: the paper's Algorithm 1) or linear/cosine decay to 0 "
        "over E·N·K updates (LLaMA-Factory's); searched with e.g. {choices: [constant, cosine]}.",
    )
    warmup_ratio: Param = Field(
        Param(choices=[0.0]), description="Share of E·N·K updates warming η up from 0 (0: none; a range searches it).",
    )
    alpha: Param = Field(Param(low=0.0, high=0.9), description="Base weight α: the delta is scaled by 1-α.")
    sparsity: Param = Field(Param(low=0.0, high=0.9), description="Fraction of each delta tensor zeroed.")

    _threshold = field_validator("threshold")(lambda p: _check("threshold", p, lambda v: v >= 0, "must be >= 0"))
    _steps = field_validator("steps")(lambda p: _check("steps", p, lambda v: 1 <= v <= MAX_STEPS, f"must be in [1, {MAX_STEPS}]", True))
    _epochs = field_validator("epochs")(lambda p: _check("epochs", p, lambda v: 1 <= v <= MAX_EPOCHS, f"must be in [1, {MAX_EPOCHS}]", True))
    _lr = field_validator("lr")(lambda p: _check("lr", p, lambda v: v > 0, "must be > 0"))
    _layer = field_validator("layer")(lambda p: _check("layer", p, lambda v: 0 <= v <= MAX_LAYER, f"must be in [0, {MAX_LAYER}]", True))
    _warmup_ratio = field_validator("warmup_ratio")(
        lambda p: _check("warmup_ratio", p, lambda v: 0 <= v < 1, "must be in [0, 1): 1 warms up through every update")
    )
    _alpha = field_validator("alpha")(
        lambda p: _check("alpha", p, lambda v: 0 <= v < 1, "must be in [0, 1): alpha = 1 discards the edit")
    )
    _sparsity = field_validator("sparsity")(
        lambda p: _check("sparsity", p, lambda v: 0 <= v < 1, "must be in [0, 1): sparsity = 1 zeroes the delta")
    )

    def layers(self) -> list[int]:
        """Every layer index the search may pick."""
        p = self.layer
        return sorted({int(v) for v in p.choices}) if p.choices is not None else list(range(int(p.low), int(p.high) + 1))


class RSFTFixed(Section):
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="adamw (LLaMA-Factory's) or sgd (eq. 2).")
    runner: Literal["train", "train-local", "task"] = Field(
        "train", description="'train': a Ray Train trainer per trial, its one worker a fresh process; 'train-local': "
        "Ray Train's local mode (ScalingConfig(num_workers=0)), R-SFT in the trial's own process, which Tune "
        "keeps for the next trial (no worker group to start; the trial holds R-SFT's CPUs/GPU); 'task': a plain "
        "Ray task."
    )
    # The fixed form of earlier configs, still accepted: moved into search.space (searchable there).
    lr_schedule: LRSchedule | None = Field(None, description="Fixes search.space.lr_schedule (the older form).")
    warmup_ratio: float | None = Field(
        None, ge=0.0, lt=1.0, description="Fixes search.space.warmup_ratio (the older form).",
    )


SCHEDULE_FIELDS = ("lr_schedule", "warmup_ratio")  # in search.space; search.rsft's older fixed form too


class SearchConfig(Section):
    num_trials: int = Field(8, ge=1, le=MAX_TRIALS, description="R-SFT runs (Tune trials).")
    sampler: Literal["tpe", "nsga2", "gp", "random"] = Field("tpe", description="Optuna sampler.")
    seed: int = Field(0, ge=0, lt=2**32, description="Seeds the sampler, R-SFT and the extra merge candidates.")
    startup_trials: int = Field(
        4, ge=0,
        description="R-SFT configurations (τ, K, E, lr, layer) drawn at random before the sampler's model takes "
        "over, counted in R-SFT runs, not in told merge points; α and sparsity use the model from the start.",
    )
    space: SearchSpace = Field(default_factory=SearchSpace)
    rsft: RSFTFixed = Field(default_factory=RSFTFixed)

    @model_validator(mode="after")
    def _fixed_schedule_into_space(self):
        # search.rsft.lr_schedule / warmup_ratio (the older, fixed form) become the space's one choice,
        # so the trial, MLflow and the tables read the schedule from one place.
        legacy = {k: v for k in SCHEDULE_FIELDS if (v := getattr(self.rsft, k)) is not None}
        both = sorted(k for k in legacy if k in self.space.model_fields_set)
        if both:
            k = both[0]
            raise ValueError(f"search.space.{k} and search.rsft.{k} are both set: keep search.space.{k} only "
                             "(a list of choices or a range searches it; one value fixes it)")
        if legacy:
            fixed = {k: (ScheduleParam if k == "lr_schedule" else Param)(choices=[v]) for k, v in legacy.items()}
            object.__setattr__(self, "space", self.space.model_copy(update=fixed))
            object.__setattr__(self, "rsft", self.rsft.model_copy(update=dict.fromkeys(legacy)))
        return self
