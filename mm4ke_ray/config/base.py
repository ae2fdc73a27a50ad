"""What every section of the sweep config shares: the frozen, strict base and the upper bounds."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

# Upper bounds where a larger value is a typo that would hang `plan` or exhaust memory, not a plan.
MAX_TRIALS, MAX_RUNGS, MAX_STEPS, MAX_EPOCHS, MAX_LAYER = 100_000, 16, 100_000, 10_000, 100_000


class Section(BaseModel):
    """A config section: unknown keys fail (a YAML typo), values are frozen."""

    # No inf/nan in any float field: `inf` edit weights made every score NaN, `inf` cpus or intervals hung.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
