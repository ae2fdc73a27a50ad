"""The Pareto front on the sweep's parent run, kept current while the sweep runs.

`publish_pareto(tracker, rows, base)` writes, under the parent run's `pareto/` artifacts:
- `all.csv`    every candidate (base first) with all its parameters and metrics and `on_front`
               (and `feasible` when the sweep set `objectives.min_*`);
- `front.csv`  the non-dominated feasible candidates over `OBJECTIVES`, sorted by combined score;
- `front.png`  every candidate, the front highlighted, base and pure R-SFT marked, infeasible greyed;
- `front.html` the same, interactive (hover shows a candidate's parameters and metrics);
and tags the parent with the best feasible candidate by combined score (`mm4ke.best_*`, base
excluded: it has nothing to export) and every candidate run with `pareto=true|false`, so the
MLflow UI can filter the front with `tags.pareto = 'true'`. Candidates that leave the front are
reset to false. The minimums and the edit score's family (`objectives.edit_mode`) are read from
the parent run's params (`min_edit_score`, `min_general_score`, `edit_mode`), so a rebuild from
MLflow alone draws the same picture.

Rows are normalized (`query.normalize_row`): MLflow keys ('.' instead of '/'), parameters as
numbers, metrics as floats, so `mm4ke-ray pareto` reading MLflow gives exactly the same rows.
"""

from __future__ import annotations

import csv
import io
import tempfile
import time
import warnings
from pathlib import Path

from mm4ke_ray.evaluate.pareto_front import (
    FEASIBLE,
    ON_FRONT,
    best_candidate,
    describe_minimums,
    hypervolume,
    minimums_from_params,
    split_front,
)
from mm4ke_ray.evaluate.scores import COMBINED, EDIT, GENERAL
from mm4ke_ray.schema import BASE, BEST_TAGS, ID_COLUMNS, PARAM_COLUMNS, PARETO_DIR, WARM_START, Tag
from mm4ke_ray.tracking.health import reachable
from mm4ke_ray.tracking.pareto_plots import write_front_html, write_front_png
from mm4ke_ray.tracking.query import normalize_row

PARETO_TAG = "pareto"
_EDIT_METRICS = ("edit_succ", "generalization", "portability", "locality", "fluency")
_OBJECTIVE_COLUMNS = (EDIT.name, GENERAL.name, COMBINED.name)

# parent run id → {candidate run id: "true"|"false"} as last written, so a refresh only touches
# the runs whose membership changed. Empty after a restart: the first refresh then writes all.
_TAGGED: dict[str, dict[str, str]] = {}
_BASE_RUN: dict[str, str | None] = {}  # parent run id → its base model's child run id
# The final publish: a server that answers but refuses is tried this often; one that is away is
# retried this often until the sweep's final wait is over.
FINAL_REFUSALS, FINAL_RETRY_S = 3, 5.0


def columns(rows: list[dict]) -> list[str]:
    """CSV columns for `rows`: identity, parameters, objectives, edit metrics, general, then the rest."""
    present = {k for r in rows for k in r}
    fixed = [*ID_COLUMNS, *PARAM_COLUMNS, *_OBJECTIVE_COLUMNS, *_EDIT_METRICS]
    head = [c for c in fixed if c in present or c in ID_COLUMNS]
    general = sorted(k for k in present if k.startswith(("general.", "retention.")))
    marks = [c for c in (ON_FRONT, FEASIBLE) if c in present]
    rest = sorted(present - set(head) - set(general) - set(marks))
    return [*head, *general, *rest, *marks]


def to_csv(rows: list[dict], cols: list[str] | None = None) -> str:
    """Rows as CSV text (floats written with repr, so they read back exactly; None as empty)."""
    cols = cols or columns(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: ("" if row.get(c) is None else row.get(c)) for c in cols})
    return buf.getvalue()


def _base_run_id(tracker) -> str | None:
    # The sweep logs the base model as a child run without handing its run id to the callback;
    # it belongs to no R-SFT trial, so it stays directly under the parent run.
    parent = tracker.parent_run_id
    if _BASE_RUN.get(parent) is None:  # not cached, or not logged yet at the last look
        runs = tracker.client.search_runs(
            [tracker.experiment_id],
            f"tags.`mlflow.parentRunId` = '{parent}' AND tags.`{Tag.KIND}` = '{BASE}'",
            max_results=1,
        )
        _BASE_RUN[parent] = runs[0].info.run_id if runs else None
    return _BASE_RUN[parent]


def _tag_candidates(tracker, marked: list[dict]) -> None:
    seen = _TAGGED.setdefault(tracker.parent_run_id, {})
    for row in marked:
        run_id = row.get("run_id")
        value = "true" if row[ON_FRONT] else "false"
        if run_id and seen.get(run_id) != value:
            tracker.client.set_tag(run_id, PARETO_TAG, value)
            seen[run_id] = value


def _title(name: str, marked: list[dict], front: list[dict], mins: dict[str, float]) -> str:
    title = f"{name}: {len(marked) - 1} candidates + base model; {len(front)} on the Pareto front"
    if not mins:
        return title
    edited = [r for r in marked if r.get("kind") != BASE]
    below = sum(1 for r in edited if not r[FEASIBLE])
    if edited and below == len(edited):
        return f"{title}; no candidate meets {describe_minimums(mins)} (all greyed)"
    return f"{title}; {below} below {describe_minimums(mins)} (greyed)"


def publish_pareto(tracker, rows: list[dict], base: dict, mins: dict[str, float] | None = None) -> None:
    """Write the `pareto/` artifacts and tags for the candidates so far (see the module docstring).

    `tracker` is the sweep's `SweepTracker` (its parent run is started), `rows` the candidate dicts
    of `search.callback.candidate_rows` with each one's child `run_id`, `base` the base model's
    metrics (`candidate='base'`), `mins` the objective minimums (None: those recorded in the
    parent run's params). Safe to call repeatedly; each call replaces the artifacts.
    """
    base = {**base, "candidate": BASE, "kind": BASE}
    base.setdefault("run_id", _base_run_id(tracker))
    normalized = [normalize_row(base), *(normalize_row(r) for r in rows)]
    parent = tracker.client.get_run(tracker.parent_run_id)
    mins = minimums_from_params(parent.data.params) if mins is None else mins
    edit_mode = parent.data.params.get("edit_mode")  # the family the edit score comes from
    marked, front = split_front(normalized, mins)
    title = _title(parent.info.run_name, marked, front, mins)
    with tempfile.TemporaryDirectory(prefix="mm4ke-pareto-") as tmp:
        folder = Path(tmp)
        cols = columns(marked)
        (folder / "all.csv").write_text(to_csv(marked, cols))
        (folder / "front.csv").write_text(to_csv(front, [c for c in cols if c not in (ON_FRONT, FEASIBLE)]))
        write_front_png(marked, folder / "front.png", title, edit_mode)
        write_front_html(marked, folder / "front.html", title, edit_mode)
        tracker.log_artifacts(folder, PARETO_DIR)
    best = best_candidate(normalized, mins)
    tags = {Tag.PARETO_SIZE: len(front), Tag.CANDIDATES: sum(1 for r in rows if not r.get(WARM_START))}
    if best is not None:
        tags.update(
            dict(
                zip(
                    BEST_TAGS,
                    (best["candidate"], best.get("run_id") or "", repr(best[COMBINED.name])),
                    strict=True,
                )
            )
        )
    tracker.set_sweep_tags(tags)
    tracker.log_sweep_metrics(
        {"pareto_size": len(front), "pareto_hypervolume": hypervolume(front)}, step=len(rows)
    )
    _tag_candidates(tracker, marked)


class ParetoPublisher:
    """Calls `publish_pareto` every `every` updates (for `SweepCallback(on_rows=...)`); `final` always.

    A failed intermediate refresh (e.g. the tracking server briefly away) warns and lets the
    sweep go on; the final one waits for an absent server, or leaves the publish in the spool.
    """

    def __init__(self, tracker, base: dict, every: int = 3, warm: list[dict] | None = None):
        """`warm`: earlier sweeps' candidates (--warm-start) the front starts from, before `rows`."""
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.tracker, self.base, self.every = tracker, base, every
        self.warm = list(warm or [])
        self.calls = 0

    def __call__(self, rows: list[dict]) -> None:
        self.calls += 1
        if self.calls % self.every:
            return
        try:
            publish_pareto(self.tracker, [*self.warm, *rows], self.base)
        except Exception as exc:  # noqa: BLE001 - a refresh must not end a long sweep
            warnings.warn(
                f"could not refresh the Pareto artifacts ({exc}); will retry", stacklevel=2
            )

    def final(self, rows: list[dict], wait_s: float = 0.0) -> bool:
        """Publish the front of the finished sweep; True once published, False when left in the spool.

        A tracking server that is away (its spool not sent, or the publish failing while it does
        not answer) is waited for up to `wait_s`, the publish retried every `FINAL_RETRY_S`; once
        the spool is sent, candidates that waited in it get their run ids here. Still away at the
        deadline: the publish becomes a spool record (`SweepTracker.defer_pareto`), made from
        MLflow's own records when the spool is sent (by the sweep, or `sweep --replay-spool`). A
        server that answers and still refuses raises after `FINAL_REFUSALS` tries; so does a
        tracker without a spool.
        """
        tracker, deadline, refused = self.tracker, time.monotonic() + wait_s, 0
        while True:
            left = max(0.0, deadline - time.monotonic())
            if tracker.flush(wait_s=left if tracker.offline else 0.0):
                _fill_run_ids([*self.warm, *rows], tracker.run_ids)
                try:
                    publish_pareto(tracker, [*self.warm, *rows], self.base)
                    return True
                except Exception:  # noqa: BLE001 - told apart below: away (wait) or refusing (raise)
                    if tracker.spool is None or reachable(tracker.uri):
                        refused += 1
                        if refused >= FINAL_REFUSALS or tracker.spool is None:
                            raise
            # A server that has just refused gets its tries even past the deadline; an absent one none.
            if time.monotonic() >= deadline and not (refused and reachable(tracker.uri)):
                tracker.defer_pareto()
                return False
            left = deadline - time.monotonic()
            time.sleep(min(FINAL_RETRY_S, left) if left > 0 else FINAL_RETRY_S)


def _fill_run_ids(rows: list[dict], run_ids: dict[str, str]) -> None:
    """Candidates that waited in the spool got their run ids when it was sent."""
    for row in rows:
        if not row.get("run_id") and row.get("candidate") in run_ids:
            row["run_id"] = run_ids[row["candidate"]]
