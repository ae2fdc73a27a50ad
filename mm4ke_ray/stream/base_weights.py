"""The base's values of the tensors a stream changes, copied just before their first change.

A stream changes its resident model in place (round t's merged model is round t+1's base). To
run another stream on the same loaded model, with the same evaluator and its base references
(a tuning's trials: every trial streams the same records from the same base), the changed
tensors are put back afterwards. Only what some round touched is copied: one layer's MLP per
round setting, not the model.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


class BaseWeights:
    def __init__(self, model: nn.Module):
        self.model = model
        self._kept: dict[str, torch.Tensor] = {}

    def keep(self, names: Iterable[str]) -> None:
        """Copy the current (base) values of `names` not copied yet: call before changing them."""
        params = dict(self.model.named_parameters())
        for name in names:
            if name not in self._kept:
                self._kept[name] = params[name].detach().clone()

    def restore_(self) -> list[str]:
        """Put every kept tensor back to its base value; the names restored."""
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in self._kept.items():
                params[name].copy_(value)
        names, self._kept = sorted(self._kept), {}
        return names
