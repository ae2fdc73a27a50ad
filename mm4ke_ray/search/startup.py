"""Sampler start-up counted in R-SFT configurations, not in told points.

The sweep tells Optuna every merge candidate of a trial (the sampled (α, sparsity), the pure
R-SFT point and the extra draws) as a study trial. Optuna's samplers count those toward their
start-up: TPE leaves random sampling after `n_startup_trials` COMPLETE trials, GP after its own
`n_startup_trials`, so after the first R-SFT run told 5 points the second one is already drawn
from a model fitted to one R-SFT configuration, and exploration of τ, K, E, lr and layer
collapses onto it.

`RSFTStartupSampler` wraps the model sampler: while fewer than `startup_trials` R-SFT
configurations have been drawn (suggested study trials, extra points not counted), the R-SFT
parameters come from a seeded random sampler; the merge parameters (α, sparsity) come from the
model sampler from the start, since the extra points tell it about them directly. After the
start-up everything is the model sampler's. Every point is still told; only who draws changes.

After the start-up, a model sampler that fits densities or a surrogate (TPE, GP) draws the R-SFT
parameters from one point per R-SFT configuration (`ConfigurationView`): the 5 candidates of
one R-SFT run repeat its τ, K, E, lr and layer 5 times, and TPE read them as 5 observations of
a good lr, narrowing its kernels onto the first good run (the spread of log10(lr) fell to ~0.13
on a toy objective where lr did not matter at all). A configuration is represented by its
candidate with the largest product of objectives (the largest box it dominates from the
origin). α and sparsity are still drawn from every told point.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from mm4ke_ray.schema import MERGE_PARAMS, Tag

EXTRA_ATTR = Tag.EXTRA_OF  # user attribute of an extra point: the Tune trial it came from
WARM_ATTR = Tag.WARM_START_FROM  # user attribute of a point told from an earlier sweep (--warm-start)


def rsft_configurations_before(study: Study, trial: FrozenTrial) -> int:
    """How many R-SFT configurations were drawn before `trial`: suggested study trials (any
    state: running, told, failed), extra merge points not counted."""
    trials = study._get_trials(deepcopy=False, use_cache=False)
    return sum(1 for t in trials if t.number < trial.number and EXTRA_ATTR not in t.user_attrs)


def _box(trial: FrozenTrial) -> float:
    vals = trial.values or []
    return math.prod(max(0.0, v) for v in vals) if all(math.isfinite(v) for v in vals) else -1.0


class ConfigurationView:
    """A study as the R-SFT parameters' model sees it: each R-SFT configuration once.

    Suggested trials only (extra points dropped); a COMPLETE one carries the objective values
    (and constraints) of its configuration's best candidate (`_box`). Everything else is the
    study's own.
    """

    def __init__(self, study: Study, merge_params: Sequence[str] = MERGE_PARAMS):
        self._study = study
        self._merge = tuple(merge_params)

    def __getattr__(self, name: str):
        return getattr(self._study, name)

    def _config_key(self, trial: FrozenTrial) -> tuple:
        return tuple(sorted((k, v) for k, v in trial.params.items() if k not in self._merge))

    def _get_trials(self, deepcopy: bool = True, states=None, use_cache: bool = False) -> list[FrozenTrial]:
        trials = self._study._get_trials(deepcopy=False, states=None, use_cache=use_cache)
        best: dict[tuple, FrozenTrial] = {}
        for t in trials:
            if t.state == TrialState.COMPLETE:
                key = self._config_key(t)
                if key not in best or _box(t) > _box(best[key]):
                    best[key] = t
        out = []
        for t in trials:
            if EXTRA_ATTR in t.user_attrs or (states is not None and t.state not in states):
                continue
            rep = best.get(self._config_key(t)) if t.state == TrialState.COMPLETE else None
            if rep is not None and rep is not t:
                t = copy.copy(t)
                t.values = list(rep.values)
                attrs = {k: v for k, v in t.system_attrs.items() if not k.startswith("constraints")}
                attrs.update({k: v for k, v in rep.system_attrs.items() if k.startswith("constraints")})
                t._system_attrs = attrs
            out.append(copy.deepcopy(t) if deepcopy else t)
        return out

    def get_trials(self, deepcopy: bool = True, states=None) -> list[FrozenTrial]:
        return self._get_trials(deepcopy=deepcopy, states=states)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


class RSFTStartupSampler(BaseSampler):
    """`model` draws everything, except the R-SFT parameters of the first `startup_trials`
    R-SFT configurations, which a seeded `RandomSampler` draws. Given `rsft_model` (a second
    sampler of the same kind: GP caches its fitted surrogate per search space), that one draws
    the R-SFT parameters after the start-up, from a `ConfigurationView` of the study."""

    def __init__(self, model: BaseSampler, startup_trials: int, seed: int | None = None,
                 merge_params: Sequence[str] = MERGE_PARAMS, rsft_model: BaseSampler | None = None):
        self.model = model
        self.rsft_model = rsft_model
        self.startup_trials = startup_trials
        self.merge_params = tuple(merge_params)
        # Its own seed stream: the start-up draws do not shift the model sampler's random state.
        self.startup = RandomSampler(seed=None if seed is None else seed + 7919)

    def in_startup(self, study: Study, trial: FrozenTrial) -> bool:
        return rsft_configurations_before(study, trial) < self.startup_trials

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        space = self.model.infer_relative_search_space(study, trial)
        if self.in_startup(study, trial):
            # R-SFT parameters then go to sample_independent, i.e. the start-up draw.
            space = {k: v for k, v in space.items() if k in self.merge_params}
        return space

    def sample_relative(self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> dict:
        if not search_space:
            return {}
        if self.rsft_model is None:
            return self.model.sample_relative(study, trial, search_space)
        merge = {k: v for k, v in search_space.items() if k in self.merge_params}
        rsft = {k: v for k, v in search_space.items() if k not in self.merge_params}
        out = self.model.sample_relative(study, trial, merge) if merge else {}
        if rsft:
            out.update(self.rsft_model.sample_relative(ConfigurationView(study, self.merge_params), trial, rsft))
        return out

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        if param_name in self.merge_params:
            return self.model.sample_independent(study, trial, param_name, param_distribution)
        if self.in_startup(study, trial):
            return self.startup.sample_independent(study, trial, param_name, param_distribution)
        if self.rsft_model is None:
            return self.model.sample_independent(study, trial, param_name, param_distribution)
        view = ConfigurationView(study, self.merge_params)
        return self.rsft_model.sample_independent(view, trial, param_name, param_distribution)

    def _samplers(self) -> list[BaseSampler]:
        return [s for s in (self.model, self.rsft_model, self.startup) if s is not None]

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        for s in self._samplers():
            s.before_trial(study, trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        for s in self._samplers():
            s.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        for s in self._samplers():
            s.reseed_rng()


def generation_attrs(sampler: BaseSampler, study: Study, parent: FrozenTrial) -> dict:
    """System attributes an extra point needs so that `sampler` counts it as its parent does.

    NSGA-II builds its populations only from trials carrying its generation attribute
    (`NSGAIISampler:generation`, set when the sampler drew the trial); a point added with
    `create_trial` has none and would be ignored. An extra point belongs to the generation of the
    R-SFT trial it came from.
    """
    inner = sampler.model if isinstance(sampler, RSFTStartupSampler) else sampler
    if not isinstance(inner, optuna.samplers.NSGAIISampler):
        return {}
    key = inner._get_generation_key()
    frozen = study._storage.get_trial(parent._trial_id)
    if key in frozen.system_attrs:
        return {key: frozen.system_attrs[key]}
    return {key: inner.get_trial_generation(study, frozen)}


def warm_generation_attrs(sampler: BaseSampler) -> dict:
    """System attributes of a point told from an earlier sweep: NSGA-II's generation 0 (its first
    population), so NSGA-II breeds from the earlier front instead of ignoring it."""
    inner = sampler.model if isinstance(sampler, RSFTStartupSampler) else sampler
    if not isinstance(inner, optuna.samplers.NSGAIISampler):
        return {}
    return {inner._get_generation_key(): 0}
