"""Driver-side Tune callback: when each trial is recorded in MLflow, progress to the terminal.

What a candidate's or a failure's run holds is `tracking.run_records`; this module keeps the Tune
hook state (which trials wait for their saved state, which are logged).
"""

from __future__ import annotations

import math
import re
import tempfile
import time
import warnings
from pathlib import Path

from ray.tune import Callback
from rich.console import Console

from mm4ke_ray.delta import DELTA_FILE
from mm4ke_ray.evaluate.scores import COMBINED
from mm4ke_ray.schema import PRUNED_CANDIDATES, Tag, delta_folder
from mm4ke_ray.search.progress import SweepProgress, rung_line, wants_live
from mm4ke_ray.tracking.run_records import (
    candidate_rows,
    candidate_run,
    failure_run_name,
    failure_tags,
    pruned_run,
    searched_params,
    trial_label,
    trial_run,
)
from mm4ke_ray.tracking.system_samples import SYSTEM_METRICS

_EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception|Interrupt)\b.*")
_DETAIL = re.compile(r"died|failed|killed|exit", re.I)


def _error_text(trial) -> str:
    # The driver-side copy is written before Tune calls back; the storage copy may lag behind.
    for read in (lambda: Path(trial.error_file).read_text(), trial.get_error):
        try:
            text = read()
        except Exception:  # noqa: BLE001 - the reason is a courtesy; never fail the sweep for it
            continue
        if text:
            return str(text)
    return ""


def error_reason(trial) -> str:
    """A Tune trial's last error in a line: the exception and its key details, and where the full trace is."""
    lines = [ln.strip() for ln in _error_text(trial).splitlines() if ln.strip()]
    last = max((i for i, ln in enumerate(lines) if _EXCEPTION_LINE.match(ln)), default=None)
    if last is None:
        reason = lines[-1] if lines else "unknown error"
    else:
        details = [ln for ln in lines[last + 1 :] if _DETAIL.search(ln) and len(ln) < 200][:2]
        reason = " | ".join([lines[last], *details])
    where = f"{trial.path}/error.txt" if getattr(trial, "path", None) else (trial.error_file or "the trial folder")
    return f"{reason[:400]} (full trace: {where})"


def _label(trial) -> str:
    """The trial's number in run names ("t03"), from the experiment tag Tune gave it."""
    return trial_label(trial.trial_id, getattr(trial, "experiment_tag", ""))


def _trial_run(trial, params: dict | None = None, result: dict | None = None) -> dict:
    """The trial's MLflow run (id, name, R-SFT params; from its result, when it ran and its
    system metrics) that its candidate runs nest under."""
    return trial_run(trial.trial_id, _label(trial), params or trial.config, result)


def _wait_for_state_upload(trial) -> None:
    """Wait until the experiment state Tune just saved has reached `storage_path`.

    Tune writes the state to a driver-side staging folder and uploads it in the background; a
    driver killed before that upload ends leaves a stored state without the trial. Every trial
    shares the experiment's syncer (Tune copies the storage context shallowly), so waiting on
    it waits for that upload.
    """
    syncer = getattr(getattr(trial, "storage", None), "syncer", None)
    if syncer is None:
        return
    try:
        syncer.wait()
    except Exception as exc:  # noqa: BLE001 - Tune logs failed uploads itself; record anyway
        warnings.warn(f"Tune's experiment state upload failed ({exc}); a resume may run this trial again",
                      stacklevel=2)


class SweepCallback(Callback):
    """Logs each finished trial's candidates as nested MLflow runs and prints progress."""

    def __init__(self, tracker, total_trials: int, on_rows=None, console: Console | None = None,
                 live: bool | None = None):
        self.tracker = tracker
        self.total = total_trials
        self.on_rows = on_rows  # called with all rows so far (e.g. to refresh the Pareto artifacts)
        self.console = console or Console(stderr=True)
        # One live line on a terminal, a line per trial otherwise (`live` None: decide by the terminal).
        self.progress = SweepProgress(self.console, total_trials, wants_live(self.console) if live is None else live)
        self.rows: list[dict] = []
        self.done = self.failed = 0
        self.started = time.time()
        self.logged: set[str] = set()
        # A trial's final result is logged only once Tune has saved the experiment state that
        # holds it (its checkpoint forces that save at the end of the step): a driver killed
        # in between leaves no MLflow runs for a trial that the resumed sweep does not know.
        self.pending: dict[str, tuple] = {}  # trial id → (trial, result) waiting for that save
        self.checkpoints: dict = {}  # trial id → its checkpoint (delta + result), registered by Tune
        self.check_orphans = False  # set by resume_from: look once at the restored trials
        self.earlier: list[dict] = []  # candidates copied from earlier sweeps (--warm-start): count for "best"

    def __getstate__(self):
        # Tune pickles its callbacks with the experiment state; the MLflow client and console are
        # live handles and are supplied afresh when a sweep is resumed.
        return {**self.__dict__, "tracker": None, "console": None, "on_rows": None, "pending": {}, "progress": None}

    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
        self.progress.start(self.done, self._summary(short=True))  # a resumed sweep starts where it was

    def stop_progress(self) -> None:
        """End the live line (the sweep is over, or failed); safe to call more than once."""
        self.progress.stop()

    def _record(self, trial, result: dict) -> None:
        if "status" not in result:
            return
        if result["status"] != "ok":
            if trial.trial_id in self.logged:
                return
            self.logged.add(trial.trial_id)
            self.done += 1
            self.failed += 1
            params = result.get("params") or trial.config
            self.tracker.log_candidate(
                f"{trial.trial_id}-{result['status']}", searched_params(params),
                {"rsft_wall_seconds": result.get("rsft_wall_seconds", 0.0)},
                failure_tags(trial.trial_id, result["status"], result.get("reason", "")[:500]),
                run_name=failure_run_name(_label(trial), result["status"]), trial=_trial_run(trial, params, result),
            )
            self.console.print(f"[yellow]trial {trial.trial_id} {result['status']}[/]: {result.get('reason', '')[:200]}")
        else:
            # Per candidate: a resumed sweep may find a trial whose candidates were half logged.
            known = {r["candidate"] for r in self.rows}
            rows = [r for r in candidate_rows(result, trial.trial_id, _label(trial)) if r["candidate"] not in known]
            group = _trial_run(trial, result.get("params"), result)
            if trial.trial_id not in self.logged:
                self.logged.add(trial.trial_id)
                self.done += 1
                self._log_pruned(trial, result, group)
                self._say_rungs(trial, result)
            elif not rows:
                return
            if rows:
                self._store_delta(trial)
            for row in rows:
                row["run_id"] = self.tracker.log_candidate(row["candidate"], *candidate_run(row, trial.trial_id),
                                                           run_name=row["run_name"], trial=group)
                group.pop(SYSTEM_METRICS, None)  # sent once, with the trial's first candidate
            self.rows.extend(rows)
        self._progress()
        if self.on_rows:
            self.on_rows(self.rows)

    def _log_pruned(self, trial, result: dict, group: dict) -> None:
        """Runs of the candidates successive halving stopped below the full rung: their lower
        rungs' metrics, status `pruned`; no candidate rows. Logged before the trial's candidate
        rows, so a resumed sweep that finds the trial logged does not log them again (a driver
        killed between the two may leave them logged twice: both copies say the same)."""
        for row in candidate_rows(result, trial.trial_id, _label(trial), key=PRUNED_CANDIDATES):
            self.tracker.log_candidate(row["candidate"], *pruned_run(row, trial.trial_id), run_name=row["run_name"],
                                       trial=group)
            group.pop(SYSTEM_METRICS, None)

    def _say_rungs(self, trial, result: dict) -> None:
        """A line per halving trial: how many candidates each rung evaluated, how many were pruned."""
        cands = [*(result.get("candidates") or []), *(result.get(PRUNED_CANDIDATES) or [])]
        reached = [c["metrics"]["fidelity.rung"] for c in cands if "fidelity.rung" in (c.get("metrics") or {})]
        skipped = tuple(sorted({int(k[4:].split(".")[0]) for c in cands for k in (c.get("metrics") or {})
                                if k.startswith("rung") and k.endswith(".skipped")}))
        if line := rung_line(_label(trial), reached, skipped):
            self.console.print(line)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("candidates") is None and result.get("status") in (None, "ok"):
            return
        if result.get("restored") or trial.trial_id in self.checkpoints:
            self._record(trial, result)  # its checkpoint is already in the saved state
        else:
            self.pending[trial.trial_id] = (trial, result)

    def on_step_end(self, iteration, trials, **info):
        # Tune saved the experiment state just before this (forced by the new checkpoints).
        ready = [t for t in self.pending if t in self.checkpoints]
        if ready:
            _wait_for_state_upload(self.pending[ready[0]][0])
        for trial_id in ready:
            self._record(*self.pending.pop(trial_id))

    def on_trial_complete(self, iteration, trials, trial, **info):
        if trial.trial_id in self.pending:  # finished without a registered checkpoint
            self._record(*self.pending.pop(trial.trial_id))

    def on_experiment_end(self, trials, **info):
        for trial, result in list(self.pending.values()):
            self._record(trial, result)
        self.pending.clear()
        self.stop_progress()

    def on_step_begin(self, iteration, trials, **info):
        if self.check_orphans:
            self.check_orphans = False
            self._drop_orphans({t.trial_id for t in trials})

    def _drop_orphans(self, known: set[str]) -> None:
        """Runs logged for trials the restored Tune state does not hold (the driver died before
        its state reached storage): Tune replaces those trials, so their runs leave the sweep."""
        if not known:  # nothing restored to compare with: never drop what is logged
            return
        orphans = {r.get("trial_id") for r in self.rows} - known - {None}
        why = {Tag.STATUS: "orphaned",
               Tag.REASON: "its driver died before Tune saved this trial; the resumed sweep replaced it"}
        for row in [r for r in self.rows if r.get("trial_id") in orphans]:
            if row.get("run_id"):
                self.tracker.mark_run(row["run_id"], "KILLED", why)
        for trial_id in sorted(orphans):
            self.tracker.mark_trial(trial_id, "KILLED", why)
        self.rows = [r for r in self.rows if r.get("trial_id") not in orphans]
        self.logged -= orphans
        self.done = len(self.logged)
        if orphans:
            self.console.print(f"[yellow]resume: {len(orphans)} trial(s) logged after the last saved state were "
                               f"marked orphaned in MLflow: {', '.join(sorted(orphans))}[/]")

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        self.checkpoints[trial.trial_id] = checkpoint

    def _store_delta(self, trial) -> None:
        """The delta, once, on the parent run, so export works after the cluster is gone.

        Stored with the trial's candidates, after Tune saved the state that holds the trial: a
        driver killed before that save leaves no delta of a trial the resumed sweep replaces.
        """
        # A trial restored by a resumed driver checkpointed in the earlier one: Tune's record of it.
        checkpoint = self.checkpoints.get(trial.trial_id) or trial.checkpoint
        if checkpoint is None:
            return
        with tempfile.TemporaryDirectory() as local:
            checkpoint.to_directory(local)
            if (Path(local) / DELTA_FILE).is_file():  # a diverged trial checkpoints its result only
                self.tracker.log_artifacts(local, delta_folder(trial.trial_id))

    def on_trial_recover(self, iteration, trials, trial, **info):
        # A failed attempt that Tune retries (FailureConfig.max_failures): its own FAILED run,
        # so MLflow shows what happened; the retry's candidates are logged once it completes.
        attempt = trial.run_metadata.num_failures
        reason = error_reason(trial)
        self.checkpoints.pop(trial.trial_id, None)
        self.pending.pop(trial.trial_id, None)
        self.tracker.log_candidate(
            f"{trial.trial_id}-attempt{attempt}-failed", searched_params(trial.config), {},
            failure_tags(trial.trial_id, "failed", reason, attempt=attempt, retried=True),
            run_name=failure_run_name(_label(trial), f"attempt{attempt} failed"), trial=_trial_run(trial),
        )
        self.console.print(f"[yellow]trial {trial.trial_id} attempt {attempt} failed, retrying[/]: {reason[:200]}")

    def on_trial_error(self, iteration, trials, trial, **info):
        # A trial that failed past its retries: MLflow shows the failure, the sweep goes on.
        if trial.trial_id in self.logged:
            return
        self.logged.add(trial.trial_id)
        self.done += 1
        self.failed += 1
        reason = error_reason(trial)
        self.tracker.log_candidate(
            f"{trial.trial_id}-error", searched_params(trial.config), {},
            failure_tags(trial.trial_id, "error", reason, attempt=trial.run_metadata.num_failures),
            run_name=failure_run_name(_label(trial), "error"), trial=_trial_run(trial),
        )
        self.console.print(f"[red]trial {trial.trial_id} failed after its retries[/]: {reason[:200]}")
        self._progress()

    def resume_from(self, rows: list[dict], finished: set[str]) -> None:
        """Continue a sweep: `rows` are the candidates already in MLflow, `finished` the trial ids
        already logged (ok or with a final failure), so nothing is logged twice."""
        self.rows = list(rows)
        self.logged = set(finished)
        self.done = len(self.logged)
        self.failed = len(self.logged - {r.get("trial_id") for r in rows})
        self.check_orphans = True

    def _best(self) -> float:
        # the copied-in front counts (issue 26 §4): "best" is the best the front holds
        return max((r.get(COMBINED.name, float("-inf")) for r in (*self.earlier, *self.rows)), default=float("nan"))

    def _summary(self, short: bool = False) -> str:
        minutes = max((time.time() - self.started) / 60, 1e-9)
        best = self._best()
        shown = f"{best:.4f}" if math.isfinite(best) else "none yet"
        if short:  # the live line: bar, count and clock beside it in 80 columns
            return f"({self.failed} failed) · {len(self.rows)} candidates · best {shown}"
        return (f"({self.failed} failed) · candidates {len(self.rows)} ({len(self.rows) / minutes:.1f}/min) · "
                f"best {COMBINED.name} {shown}")

    def _progress(self) -> None:
        self.progress.update(self.done, self._summary(), self._summary(short=True))
        best = self._best()
        self.tracker.log_sweep_metrics(
            {"trials_done": self.done, "candidates": len(self.rows), f"best_{COMBINED.name}": best}, step=self.done
        )


__all__ = ["SweepCallback", "error_reason"]
