"""OptunaSearch that also learns from every extra merge candidate of a trial.

Ray's `add_evaluated_point` takes a single value and refuses multi-objective use, so the extra
points are added to the study directly with `optuna.trial.create_trial`. The searcher runs in
the driver process, so this needs no locking.
"""

from __future__ import annotations

import logging

import optuna
from ray.tune.search.optuna import OptunaSearch

log = logging.getLogger(__name__)

EXTRA_POINTS_KEY = "optuna_extra_points"  # result key: [{"params": {...}, "values": [...]}, ...]


class CandidateAwareOptunaSearch(OptunaSearch):
    """Multi-objective OptunaSearch; a trial's extra (α, sparsity) points become study trials."""

    def __init__(self, space: dict, metric: list[str], mode: list[str], **kwargs):
        super().__init__(space=space, metric=metric, mode=mode, **kwargs)
        self.extra_points_told = 0

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        super().on_trial_complete(trial_id, result=result, error=error)
        if error or not result:
            return
        for point in result.get(EXTRA_POINTS_KEY) or []:
            params = {k: v for k, v in point["params"].items() if k in self._space}
            try:
                trial = optuna.trial.create_trial(params=params, distributions=self._space, values=point["values"])
                self._ot_study.add_trial(trial)
                self.extra_points_told += 1
            except (ValueError, TypeError) as exc:  # a point outside the space or a non-finite value
                log.warning("extra point not told to Optuna: %s", exc)

    @property
    def study(self) -> optuna.Study:
        return self._ot_study
