"""The sweep's progress on the terminal: one live line while it runs, or one line per trial.

On a terminal a person watches a single rich line (bar, trials done, candidates, best score,
elapsed time) that updates in place; anything printed meanwhile (a failed trial, a worker's
output) appears above it. Written to a file or a pipe (CI logs, tests) there is no cursor to
move, so each finished trial prints a plain line instead.
"""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def wants_live(console: Console) -> bool:
    """A live line only when both the console's stream and stdout are a terminal (stdout is
    where Ray and Tune write; a redirected one means nobody is watching)."""
    return console.is_terminal and sys.stdout.isatty()


class SweepProgress:
    """Shows `update(done, text, short)` live on `console` (`short`: what fits 80 columns beside the
    bar and clock), or prints `text` once per call when not live."""

    def __init__(self, console: Console, total: int, live: bool):
        self.console, self.total, self.live = console, total, live
        self._bar: Progress | None = None
        self._task = None

    def start(self, done: int = 0, text: str = "") -> None:
        if not self.live or self._bar is not None:
            return
        self._bar = Progress(TextColumn("[bold]sweep[/]"), BarColumn(bar_width=12), MofNCompleteColumn(),
                             TextColumn("{task.fields[text]}"), TimeElapsedColumn(),
                             console=self.console, transient=False)
        self._task = self._bar.add_task("trials", total=self.total, completed=done, text=text)
        self._bar.start()

    def update(self, done: int, text: str, short: str | None = None) -> None:
        if not self.live:
            self.console.print(f"[bold]trials {done}/{self.total}[/] {text}")
            return
        self.start(done, short or text)
        self._bar.update(self._task, completed=done, text=short or text)

    def stop(self) -> None:
        """Leave the last state on screen and give the terminal back (idempotent)."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def rung_line(label: str, reached: list[int], skipped: tuple[int, ...] = ()) -> str | None:
    """One trial's successive halving, e.g. "t03 halving: rung 0: 8 → rung 1: 4 → full rung 2: 2 ·
    6 pruned" (how many candidates each rung evaluated; "rung 0 skipped" for a rung the plan
    skips, `rung_plan.py`); None when the trial did not halve."""
    if not reached:
        return None
    last = max(reached)
    if last == 0:
        return None
    steps = [f"rung {r} skipped" if r in skipped else
             f"{'full ' if r == last else ''}rung {r}: {sum(1 for x in reached if x >= r)}" for r in range(last + 1)]
    pruned = sum(1 for x in reached if x < last)
    return f"{label} halving: {' → '.join(steps)} · {pruned} pruned"
