"""Driver-side Tune callback: every candidate to MLflow, progress to the terminal."""

from __future__ import annotations

import re
import time
from pathlib import Path

from ray.tune import Callback
from rich.console import Console

from mm4ke_ray.evaluate.scores import COMBINED, OBJECTIVES
from mm4ke_ray.search.trial import RSFT_PARAMS

PARAM_KEYS = (*RSFT_PARAMS, "alpha", "sparsity")


def candidate_rows(result: dict, trial_id: str) -> list[dict]:
    """Flat rows (params + metrics + kind) for every candidate in a trial's final result."""
    rows = []
    params = result.get("params", {})
    for i, cand in enumerate(result.get("candidates") or []):
        row = {k: params.get(k) for k in RSFT_PARAMS}
        row.update(alpha=cand["alpha"], sparsity=cand["sparsity"], density=round(1 - cand["sparsity"], 6))
        row.update(trial_id=trial_id, candidate=f"{trial_id}-c{i}", kind=cand["kind"])
        row.update({k: result.get(k) for k in ("rsft_updates", "rsft_seconds")})
        row.update(cand["metrics"])
        rows.append(row)
    return rows


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


def delta_artifact_path(trial_id: str) -> str:
    """Where a trial's delta lives among the parent run's artifacts."""
    return f"deltas/{trial_id}/delta.safetensors"


class SweepCallback(Callback):
    """Logs each finished trial's candidates as nested MLflow runs and prints progress."""

    def __init__(self, tracker, total_trials: int, on_rows=None, console: Console | None = None):
        self.tracker = tracker
        self.total = total_trials
        self.on_rows = on_rows  # called with all rows so far (e.g. to refresh the Pareto artifacts)
        self.console = console or Console(stderr=True)
        self.rows: list[dict] = []
        self.done = self.failed = 0
        self.started = time.time()
        self.logged: set[str] = set()

    def __getstate__(self):
        # Tune pickles its callbacks with the experiment state; the MLflow client and console are
        # live handles and are supplied afresh when a sweep is resumed.
        return {**self.__dict__, "tracker": None, "console": None, "on_rows": None}

    def _record(self, trial, result: dict) -> None:
        if trial.trial_id in self.logged or "status" not in result:
            return
        self.logged.add(trial.trial_id)
        self.done += 1
        if result["status"] != "ok":
            self.failed += 1
            params = result.get("params") or trial.config
            self.tracker.log_candidate(
                f"{trial.trial_id}-{result['status']}", {k: params.get(k) for k in PARAM_KEYS if k in params},
                {"rsft_wall_seconds": result.get("rsft_wall_seconds", 0.0)},
                {"mm4ke.trial_id": trial.trial_id, "mm4ke.status": result["status"], "mm4ke.reason": result.get("reason", "")[:500]},
            )
            self.console.print(f"[yellow]trial {trial.trial_id} {result['status']}[/]: {result.get('reason', '')[:200]}")
        else:
            rows = candidate_rows(result, trial.trial_id)
            for row in rows:
                params = {k: row[k] for k in (*PARAM_KEYS, "density")}
                metrics = {k: v for k, v in row.items() if k not in params and isinstance(v, int | float) and not isinstance(v, bool)}
                row["run_id"] = self.tracker.log_candidate(
                    row["candidate"], params, metrics,
                    {"mm4ke.trial_id": trial.trial_id, "mm4ke.kind": row["kind"], "mm4ke.status": "ok",
                     "mm4ke.delta_artifact": delta_artifact_path(trial.trial_id)},
                )
            self.rows.extend(rows)
        self._progress()
        if self.on_rows:
            self.on_rows(self.rows)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("candidates") is not None or result.get("status") not in (None, "ok"):
            self._record(trial, result)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        # The delta is stored once, on the parent run, so export works after the cluster is gone.
        import tempfile
        from pathlib import Path

        from mm4ke_ray.delta import DELTA_FILE

        with tempfile.TemporaryDirectory() as local:
            checkpoint.to_directory(local)
            if (Path(local) / DELTA_FILE).is_file():  # a diverged trial checkpoints its result only
                self.tracker.log_artifacts(local, delta_artifact_path(trial.trial_id).rsplit("/", 1)[0])

    def on_trial_recover(self, iteration, trials, trial, **info):
        # A failed attempt that Tune retries (FailureConfig.max_failures): its own FAILED run,
        # so MLflow shows what happened; the retry's candidates are logged once it completes.
        attempt = trial.run_metadata.num_failures
        reason = error_reason(trial)
        params = {k: v for k, v in trial.config.items() if k in PARAM_KEYS}
        self.tracker.log_candidate(
            f"{trial.trial_id}-attempt{attempt}-failed", params, {},
            {"mm4ke.trial_id": trial.trial_id, "mm4ke.status": "failed", "mm4ke.attempt": attempt,
             "mm4ke.retried": "true", "mm4ke.reason": reason},
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
        params = {k: v for k, v in trial.config.items() if k in PARAM_KEYS}
        self.tracker.log_candidate(
            f"{trial.trial_id}-error", params, {},
            {"mm4ke.trial_id": trial.trial_id, "mm4ke.status": "error",
             "mm4ke.attempt": trial.run_metadata.num_failures, "mm4ke.reason": reason},
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

    def _progress(self) -> None:
        minutes = max((time.time() - self.started) / 60, 1e-9)
        best = max((r.get(COMBINED.name, float("-inf")) for r in self.rows), default=float("nan"))
        self.console.print(
            f"[bold]trials {self.done}/{self.total}[/] ({self.failed} failed) · candidates {len(self.rows)} "
            f"({len(self.rows) / minutes:.1f}/min) · best {COMBINED.name} {best:.4f}"
        )
        self.tracker.log_sweep_metrics(
            {"trials_done": self.done, "candidates": len(self.rows), f"best_{COMBINED.name}": best}, step=self.done
        )


__all__ = ["SweepCallback", "candidate_rows", "OBJECTIVES"]
