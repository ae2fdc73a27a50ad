"""Where a sweep's wall time went: Ray start, trial start-up, R-SFT, evaluation, tracking, other.

The driver times its own steps with perf_counter (Ray start, the pool's start with the base
reference, the Tuner's fit, MLflow calls); each trial reports its R-SFT compute
(`rsft_seconds`), its R-SFT wall including Ray Train's start-up (`rsft_wall_seconds`), its
candidates' evaluation (`eval_wall_seconds`) and its own wall (`trial_wall_seconds`). Trials that
ran at once overlap, so their sums are scaled by the fit's concurrency (sum of trial walls over
the fit's wall) to wall seconds. Trial start-up is what remains of the fit: Tune starting the
trial's process, Ray Train's worker group, moving deltas and results. The categories add up to
the sweep's wall; `other` is the driver's own remainder (preflight, settings, summary).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

CATEGORIES = ("ray_start", "trial_startup", "rsft", "evaluation", "tracking", "other")
LABELS = {"ray_start": "Ray start", "trial_startup": "trial start-up (Tune, Ray Train)",
          "rsft": "R-SFT", "evaluation": "evaluation (incl. base reference)", "tracking": "tracking (MLflow)",
          "other": "other (driver)"}


@dataclass
class SweepTimings:
    ray_start: float = 0.0
    pool_start: float = 0.0  # merge-eval actors loaded, base model evaluated once
    fit: float = 0.0  # Tuner.fit
    tracking: float = 0.0  # seconds inside MLflow tracker calls (driver)
    tracking_in_fit: float = 0.0

    def breakdown(self, total: float, trial_metrics: list[dict]) -> dict[str, float]:
        """Wall seconds per category (CATEGORIES), adding up to `total`."""
        trials = [m for m in trial_metrics if m]
        walls = sum(float(m.get("trial_wall_seconds") or 0.0) for m in trials)
        concurrency = max(1.0, walls / self.fit) if self.fit > 0 else 1.0
        rsft = sum(float(m.get("rsft_seconds") or m.get("rsft_wall_seconds") or 0.0) for m in trials) / concurrency
        evaluation = sum(float(m.get("eval_wall_seconds") or 0.0) for m in trials) / concurrency
        startup = max(0.0, self.fit - rsft - evaluation - self.tracking_in_fit)
        out = {"ray_start": self.ray_start, "trial_startup": startup, "rsft": rsft,
               "evaluation": self.pool_start + evaluation, "tracking": self.tracking}
        out["other"] = max(0.0, total - sum(out.values()))
        return {k: round(out[k], 3) for k in CATEGORIES}


class TimedTracker:
    """A SweepTracker whose method calls add their seconds to `timings.tracking` (and, while the
    Tuner runs, to `tracking_in_fit`). Attributes pass through unchanged."""

    def __init__(self, tracker, timings: SweepTimings):
        object.__setattr__(self, "_tracker", tracker)
        object.__setattr__(self, "_timings", timings)
        object.__setattr__(self, "in_fit", False)

    def __getattr__(self, name):
        if name.startswith("__") or name in ("_tracker", "_timings"):
            raise AttributeError(name)  # copy/pickle probing a half-built proxy
        value = getattr(self._tracker, name)
        if not callable(value):
            return value

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return value(*args, **kwargs)
            finally:
                spent = time.perf_counter() - start
                self._timings.tracking += spent
                if self.in_fit:
                    self._timings.tracking_in_fit += spent

        return timed

    def __setattr__(self, name, value):
        if name == "in_fit":
            object.__setattr__(self, name, value)
        else:
            setattr(self._tracker, name, value)


def print_breakdown(console, breakdown: dict[str, float]) -> None:
    """A small table: seconds and share of the sweep's wall per category."""
    from rich.table import Table

    total = sum(breakdown.values()) or 1.0
    table = Table(title="Where the sweep's time went", title_justify="left")
    table.add_column("step")
    table.add_column("seconds", justify="right")
    table.add_column("share", justify="right")
    for key in CATEGORIES:
        table.add_row(LABELS[key], f"{breakdown[key]:.1f}", f"{breakdown[key] / total:.0%}")
    table.add_row("total", f"{total:.1f}", "100%", style="bold")
    console.print(table)
