"""OptunaSearch that also learns from every extra merge candidate of a trial.

Ray's `add_evaluated_point` takes a single value and refuses multi-objective use, so the extra
points are added to the study directly with `optuna.trial.create_trial`. The searcher runs in
the driver process, so this needs no locking.

Reliability: a trial whose R-SFT diverged (or that reports no objective) is told to Optuna as
FAIL with its status and reason as user attributes, never as a point. A trial's completion is
acted on once: after a driver restart Tune may report a finished trial again, and its extra
points must not be added twice. The study can live in an Optuna journal file (the sweep's
storage folder) so every told point survives the driver.

Every told point carries what the sampler needs to learn from it: the constraint values of
`objectives.min_*` (Optuna 5's `set_constraint` / `create_trial(constraints=...)`), and for
NSGA-II the generation of the trial it came from (NSGA-II ignores trials without one). The
sampler's start-up is counted in R-SFT configurations (`startup.RSFTStartupSampler`).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from mm4ke_ray.schema import Tag
from mm4ke_ray.search.constraints import constraint_values
from mm4ke_ray.search.resume import STUDY_FILE
from mm4ke_ray.search.startup import EXTRA_ATTR, WARM_ATTR, generation_attrs, warm_generation_attrs

log = logging.getLogger(__name__)

EXTRA_POINTS_KEY = "optuna_extra_points"  # result key: [{"params": {...}, "values": [...]}, ...]
__all__ = ["EXTRA_ATTR", "EXTRA_POINTS_KEY", "STUDY_FILE", "WARM_ATTR", "CandidateAwareOptunaSearch", "journal_storage"]


def journal_storage(path: str | Path) -> optuna.storages.BaseStorage:
    """An Optuna journal-file storage at `path` (its folder is created)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


class CandidateAwareOptunaSearch(OptunaSearch):
    """Multi-objective OptunaSearch; a trial's extra (α, sparsity) points become study trials."""

    def __init__(self, space: dict, metric: list[str], mode: list[str], constraints: dict[str, float] | None = None,
                 **kwargs):
        """`constraints`: objective name -> minimum (`constraints.minimums(config.objectives)`)."""
        super().__init__(space=space, metric=metric, mode=mode, **kwargs)
        self.constraints = dict(constraints or {})
        self.extra_points_told = 0
        self.extra_points_refused = 0  # could not be told (outside the space, non-finite value): logged
        self.failed_told = 0

    def _finished_in_study(self, ot_trial) -> bool:
        trial = self._ot_study._storage.get_trial(ot_trial._trial_id)
        return trial.state.is_finished()

    def _objectives(self, result: dict | None) -> list[float] | None:
        if not result:
            return None
        values = [result.get(m) for m in self._metric]
        if any(not isinstance(v, int | float) or not math.isfinite(v) for v in values):
            return None
        return [float(v) for v in values]

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        ot_trial = self._ot_trials.get(trial_id)
        if trial_id in self._completed_trials:
            return super().on_trial_complete(trial_id, result=result, error=error)
        if ot_trial is None:
            # A trial the restored searcher never suggested (the driver died between Tune's and the
            # searcher's saves): tell its outcome as a fresh study trial rather than crash.
            self._completed_trials.add(trial_id)
            values = None if error else self._objectives(result)
            if values is None:
                return
            points = [{"params": result.get("params") or {}, "values": values}]
            self._add_points(points + list(result.get(EXTRA_POINTS_KEY) or []), trial_id)
            return
        if self._finished_in_study(ot_trial):
            # Told before the driver restarted (the study is on disk): nothing new to learn.
            self._completed_trials.add(trial_id)
            return
        values = self._objectives(result)
        if not error and values is None:
            self._tell_failed(trial_id, ot_trial, result or {})
            return
        # Both before the tell: a finished trial's attributes can no longer be set.
        generation = generation_attrs(self._ot_study.sampler, self._ot_study, ot_trial)
        if values is not None:
            for key, value in self._constraint_values(values).items():
                ot_trial.set_constraint(key, value)
        super().on_trial_complete(trial_id, result=result, error=error)
        if error or not result:
            return
        self._add_points(result.get(EXTRA_POINTS_KEY) or [], trial_id, generation)

    def _constraint_values(self, values: list[float]) -> dict[str, float]:
        return constraint_values(dict(zip(self._metric, values, strict=True)), self.constraints)

    def _add_points(self, points: list[dict], trial_id: str, system_attrs: dict | None = None) -> None:
        for point in points:
            try:
                self._add_point(point, {EXTRA_ATTR: trial_id}, system_attrs)
                self.extra_points_told += 1
            except (ValueError, TypeError) as exc:  # a point outside the space or a non-finite value
                self.extra_points_refused += 1
                log.warning("extra point of trial %s not told to Optuna (%d so far): %s", trial_id,
                            self.extra_points_refused, exc)

    def _add_point(self, point: dict, user_attrs: dict, system_attrs: dict | None) -> None:
        """One evaluated point as a COMPLETE study trial; ValueError/TypeError when it cannot be."""
        params = {k: v for k, v in point["params"].items() if k in self._space}
        values = [float(v) for v in point["values"]]
        trial = optuna.trial.create_trial(params=params, distributions=self._space, values=values,
                                          user_attrs={**user_attrs, **point.get("user_attrs", {})},
                                          system_attrs=dict(system_attrs or {}),
                                          constraints=self._constraint_values(values) or None)
        self._ot_study.add_trial(trial)

    def tell_warm_start(self, points: list[dict], source: str) -> tuple[int, int]:
        """Tell an earlier sweep's candidates (`search.warm_start.warm_points`) before the first
        trial, through the path extra points take; (told, refused). Each point carries its user
        attributes: one per earlier R-SFT configuration without `EXTRA_ATTR`, so the start-up and
        the R-SFT parameters' model count that configuration once, as they count this sweep's."""
        told = refused = 0
        system_attrs = warm_generation_attrs(self._ot_study.sampler)
        for point in points:
            try:
                self._add_point(point, {WARM_ATTR: source}, system_attrs)
                told += 1
            except (ValueError, TypeError) as exc:
                refused += 1
                log.info("warm-start point of %s not told to Optuna: %s", source, exc)
        return told, refused

    def _tell_failed(self, trial_id: str, ot_trial, result: dict) -> None:
        # A diverged R-SFT is a real outcome, but it has no objective values: FAIL keeps it out of
        # the Pareto front while the sampler still sees where the search went.
        ot_trial.set_user_attr(Tag.STATUS, str(result.get("status", "failed")))
        ot_trial.set_user_attr(Tag.REASON, str(result.get("reason", ""))[:500])
        self._ot_study.tell(ot_trial, state=TrialState.FAIL)
        self._completed_trials.add(trial_id)
        self.failed_told += 1

    def fail_orphans(self) -> int:
        """Mark study trials left RUNNING by a killed driver (suggested after its last save) FAIL.

        Tune suggests fresh trials in their place; left RUNNING they would count as pending
        points for the constant-liar TPE forever. Returns how many were closed.
        """
        known = {t._trial_id for t in self._ot_trials.values()}
        closed = 0
        for trial in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial._trial_id not in known:
                self._ot_study.tell(trial.number, state=TrialState.FAIL)
                closed += 1
        return closed

    def relocate_study(self, study_file: str | Path) -> None:
        """Read and write the study at `study_file` from the next `restore` on.

        The saved state holds the journal's absolute path from when the sweep started; a sweep
        folder that was moved or copied since has its journal here instead (resume.py).
        """
        self._study_file = str(study_file)

    def restore(self, checkpoint_path: str):
        """Tune's restore (driver restarted), then close the study's orphaned RUNNING trials."""
        study_file = getattr(self, "_study_file", None)
        super().restore(checkpoint_path)
        if study_file and self._storage is not None:
            self._study_file = study_file
            self._storage = journal_storage(study_file)
            self._ot_study = optuna.load_study(study_name=self._ot_study.study_name, storage=self._storage,
                                               sampler=self._ot_study.sampler)
            for ot_trial in self._ot_trials.values():  # Trial objects Tune still holds (running trials)
                ot_trial.study, ot_trial.storage = self._ot_study, self._storage
        closed = self.fail_orphans()
        if closed:
            log.info("closed %d Optuna trial(s) suggested after the last saved state", closed)

    @property
    def study(self) -> optuna.Study:
        return self._ot_study
