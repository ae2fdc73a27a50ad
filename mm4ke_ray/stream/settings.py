"""Each round's R-SFT and merge settings, resolved from a sweep config's `search.space` (one
value per parameter) and `stream.per_round` (a value per round where that is allowed)."""

from __future__ import annotations

from dataclasses import dataclass

from mm4ke_ray.config import SweepConfig
from mm4ke_ray.errors import ConfigError
from mm4ke_ray.merge.merged_model import merge_params
from mm4ke_ray.rsft.config import RSFTConfig
from mm4ke_ray.stream_config import PER_ROUND_KEYS

_RSFT_KEYS = ("threshold", "steps", "epochs", "lr", "layer", "lr_schedule", "warmup_ratio")


@dataclass(frozen=True)
class RoundSettings:
    """How one round trains and merges: R-SFT's config, then θ_t = θ_{t-1} + (1-α)·sparsify(Δ_t)."""

    rsft: RSFTConfig
    alpha: float
    sparsity: float
    method: str = "magnitude"
    seed: int = 0

    def merge_record(self) -> dict:
        """The merge's parameters as a merge record states them (both sparsity names)."""
        return merge_params(self.alpha, self.sparsity, self.method, self.seed)


def check_stream_settings(config: SweepConfig) -> None:
    """ConfigError naming every search.space parameter that is searched where a stream needs one
    value (one with a value per round in stream.per_round is fine). `validate` runs it too."""
    per_round = dict(config.stream.per_round) if config.stream is not None else {}
    space = config.search.space
    unfixed = [k for k, p in space if not p.fixed and k not in per_round]
    if unfixed:
        raise ConfigError("search.space", [
            f"search.space.{k} is searched ({getattr(space, k).text()}): a stream runs one setting; fix it to one "
            f"value{' or give stream.per_round.' + k if k in PER_ROUND_KEYS else ''}" for k in unfixed])


def round_settings(config: SweepConfig, n_rounds: int) -> list[RoundSettings]:
    """One `RoundSettings` per round. A searched (range or several choices) parameter is refused,
    naming every such field, unless `stream.per_round` gives it a value per round."""
    check_stream_settings(config)
    per_round = dict(config.stream.per_round) if config.stream is not None else {}
    fixed = {k: p.choices[0] for k, p in config.search.space if p.fixed}
    rsft = RSFTConfig.from_setting(fixed, config.search, config.data.prompt_format)
    out = []
    for t in range(n_rounds):
        merge = {k: float(per_round[k][t]) if k in per_round else float(fixed[k]) for k in ("alpha", "sparsity")}
        # A different R-SFT seed per round: the same seed would replay one sample order every round.
        out.append(RoundSettings(rsft.model_copy(update={"seed": config.search.seed + t}), method=config.merge.method,
                                 seed=config.search.seed, **merge))
    return out


__all__ = ["RoundSettings", "check_stream_settings", "round_settings"]
