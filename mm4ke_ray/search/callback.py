"""Driver-side Tune callback: every candidate to MLflow, progress to the terminal."""

from __future__ import annotations

import time

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

        with tempfile.TemporaryDirectory() as local:
            checkpoint.to_directory(local)
            self.tracker.log_artifacts(local, delta_artifact_path(trial.trial_id).rsplit("/", 1)[0])

    def on_trial_error(self, iteration, trials, trial, **info):
        # A trial that failed past its retries: MLflow shows the failure, the sweep goes on.
        self.tracker.log_candidate(
            f"{trial.trial_id}-error", {}, {}, {"mm4ke.trial_id": trial.trial_id, "mm4ke.status": "error",
                                               "mm4ke.reason": str(getattr(trial, "error_file", ""))[:500]},
        )
        self.console.print(f"[red]trial {trial.trial_id} errored[/] (see its error file under the Tune storage)")

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
