"""Read a sweep back from MLflow alone: its parent run and every candidate's params, metrics, tags.

Nothing here needs Ray, the Tune storage or the machines that ran the sweep: `mm4ke-ray pareto`
and `mm4ke-ray export` work from the tracking server (or SQLite file) and its artifact store.

Rows come back in the same normalized shape `pareto_artifacts` writes to `pareto/*.csv`: the
identity columns (`ID_COLUMNS`), the R-SFT and merge parameters (`PARAM_COLUMNS`, numbers), and
every metric as a float under its MLflow key ('.' where the sweep used '/').
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass, field

from mm4ke_ray.errors import UserError
from mm4ke_ray.schema import (
    BASE,
    ID_COLUMNS,
    PARAM_COLUMNS,
    PRUNED,
    ROLE_CANDIDATE,
    ROLE_SWEEP,
    WARM_START,
    Tag,
)
from mm4ke_ray.tracking.store_check import check_store

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_PAGE = 1000


def parse_param(text: str | None) -> int | float | str | None:
    """An MLflow param string back as the number it was logged from (str(3) → 3, str(0.1) → 0.1)."""
    if text is None:
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def normalize_row(row: dict) -> dict:
    """One candidate in the shape shared by the CSV artifacts and MLflow queries.

    Identity columns are strings (or None), parameters keep their numbers, every other numeric
    value becomes a float under its MLflow key ('/' → '.'); non-numeric extras are dropped. A row
    copied from an earlier sweep (--warm-start) keeps that sweep's name in `warm_start`.
    """
    out: dict = {}
    for key in ID_COLUMNS:
        value = row.get(key)
        out[key] = None if value is None else str(value)
    if row.get(WARM_START):
        out[WARM_START] = str(row[WARM_START])
    for key in PARAM_COLUMNS:
        value = row.get(key)
        if value is not None:
            out[key] = parse_param(value) if isinstance(value, str) else value
    for key, value in row.items():
        if key in ID_COLUMNS or key in PARAM_COLUMNS or key == WARM_START:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            continue
        out[key.replace("/", ".")] = float(value)
    return out


@dataclass
class Sweep:
    """A sweep as MLflow holds it. `candidates` are the runs that evaluated fine, base included."""

    uri: str
    run_id: str
    name: str
    experiment_id: str
    params: dict[str, str]
    tags: dict[str, str]
    candidates: list[dict]
    failed: list[dict] = field(default_factory=list)
    run_tags: dict[str, dict[str, str]] = field(default_factory=dict)  # run id → that run's tags
    others_with_name: int = 0  # older parent runs with the same sweep name (the newest is used)
    experiment_name: str = ""
    pruned: list[str] = field(default_factory=list)  # candidate names and run ids halving stopped

    @property
    def base(self) -> dict | None:
        """The base model's row (kind 'base'), if the sweep logged one."""
        return next((r for r in self.candidates if r.get("kind") == BASE), None)

    @property
    def edited(self) -> list[dict]:
        """Every candidate except the base model."""
        return [r for r in self.candidates if r.get("kind") != BASE]

    def find(self, pick: str) -> dict:
        """The candidate whose run id or candidate name is `pick`; UserError listing a few otherwise."""
        for row in self.candidates:
            if pick in (row["run_id"], row["candidate"]):
                return row
        if pick in self.pruned:
            raise UserError(f"candidate {pick!r} of sweep {self.name!r} was pruned: successive halving stopped it "
                            "on a subset of the evaluation, so it has no full result to export; pick one of "
                            "`mm4ke-ray pareto`'s candidates")
        failed = next((r for r in self.failed if pick in (r["run_id"], r["candidate"])), None)
        if failed is not None:
            raise UserError(
                f"candidate {pick!r} of sweep {self.name!r} has status {failed['status']!r}: it has no model to export"
            )
        shown = ", ".join(f"{r['candidate']} ({r['run_id']})" for r in self.edited[:5])
        raise UserError(
            f"sweep {self.name!r} (run {self.run_id}) has no candidate with run id or name {pick!r}; "
            f"some of its {len(self.edited)} candidates: {shown or 'none'}. Use `mm4ke-ray pareto` to list them."
        )


def open_client(uri: str):
    """An MlflowClient for `uri`, which only reads: a SQLite URI must name an existing MLflow
    database (MLflow would create or migrate its schema in any other file)."""
    from mlflow import MlflowClient

    check_store(uri, create=False)
    return MlflowClient(tracking_uri=uri)


def _all_runs(
    client, experiment_ids: list[str], filter_string: str, order_by: list[str] | None = None
) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs(
            experiment_ids, filter_string, max_results=_PAGE, order_by=order_by, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _experiment_ids(client, experiment: str | None) -> list[str]:
    if experiment is not None:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            names = [e.name for e in client.search_experiments()]
            raise UserError(
                f"--experiment {experiment!r} does not exist in this tracking store (it has: {', '.join(names) or 'none'})"
            )
        return [exp.experiment_id]
    return [e.experiment_id for e in client.search_experiments()]


def find_sweep_run(client, sweep: str, experiment: str | None = None):
    """The parent run of `sweep` (a run id, or a sweep name that only one sweep run has; a
    UserError lists the run ids when several share it); and 0 (older runs sharing the name)."""
    if _RUN_ID.match(sweep):
        from mlflow.exceptions import MlflowException

        try:
            run = client.get_run(sweep)
        except MlflowException:
            run = None
        if run is not None:
            role = run.data.tags.get(Tag.ROLE)
            if role != ROLE_SWEEP:
                parent = run.data.tags.get(Tag.SWEEP_RUN_ID) or run.data.tags.get("mlflow.parentRunId")
                hint = f"; its sweep's run id is {parent}" if parent else ""
                raise UserError(
                    f"run {sweep} is not a sweep's parent run (mm4ke.role={role!r}){hint}"
                )
            return run, 0
    ids = _experiment_ids(client, experiment)
    name = sweep.replace("'", "\\'")
    runs = _all_runs(
        client,
        ids,
        f"tags.`mm4ke.role` = 'sweep' AND attributes.run_name = '{name}'",
        ["attributes.start_time DESC"],
    )
    if not runs:
        sweeps = _all_runs(
            client, ids, "tags.`mm4ke.role` = 'sweep'", ["attributes.start_time DESC"]
        )
        known = sorted({r.info.run_name for r in sweeps})
        where = f"experiment {experiment!r}" if experiment else "any experiment"
        raise UserError(
            f"--sweep {sweep!r}: no sweep run with that name or run id in {where} of this tracking store "
            f"(sweeps found: {', '.join(known[:10]) or 'none'})"
        )
    if len(runs) > 1:  # a second sweep of the same config: never pick one silently (issue 26 §4)
        listed = "; ".join(f"{r.info.run_id} (started {_started(r)}, {r.info.status.lower()})" for r in runs[:10])
        raise UserError(
            f"--sweep {sweep!r}: {len(runs)} sweep runs are named {sweep!r}; pass one by its run id "
            f"(`--sweep RUN_ID`), newest first: {listed}"
        )
    return runs[0], 0


def _started(run) -> str:
    return dt.datetime.fromtimestamp((run.info.start_time or 0) / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def candidate_id(run) -> str:
    """A candidate run's stable id: its `mm4ke.candidate` tag; the run name for sweeps logged
    before run names became readable (they named the run by its id)."""
    return run.data.tags.get(Tag.CANDIDATE) or run.info.run_name


def candidate_row(run) -> dict:
    """One child run as a normalized row (see `normalize_row`)."""
    tags = run.data.tags
    row = {
        "candidate": candidate_id(run),
        "kind": tags.get(Tag.KIND),
        "trial_id": tags.get(Tag.TRIAL_ID),
        "run_id": run.info.run_id,
        **{k: parse_param(v) for k, v in run.data.params.items()},
        **run.data.metrics,
        WARM_START: tags.get(Tag.WARM_START_FROM),
    }
    return normalize_row(row)


def candidate_runs(client, experiment_id: str, parent_run_id: str) -> list:
    """Every candidate run (failed attempts included) of the sweep whose parent run is
    `parent_run_id`, oldest first, however it nests: under its trial's run, tagged with the
    parent's id, or (sweeps logged before trial runs existed) directly under the parent."""
    order = ["attributes.start_time ASC"]
    tagged = _all_runs(client, [experiment_id], f"tags.`{Tag.ROLE}` = '{ROLE_CANDIDATE}' AND "
                       f"tags.`{Tag.SWEEP_RUN_ID}` = '{parent_run_id}'", order)
    direct = _all_runs(client, [experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'", order)
    seen = {r.info.run_id for r in tagged}
    older = [r for r in direct if r.info.run_id not in seen and r.data.tags.get(Tag.ROLE) == ROLE_CANDIDATE]
    return sorted([*tagged, *older], key=lambda r: r.info.start_time or 0)


def load_sweep(uri: str, sweep: str, experiment: str | None = None) -> Sweep:
    """Read the sweep `sweep` (name or parent run id) and all its candidate runs from MLflow."""
    client = open_client(uri)
    parent, others = find_sweep_run(client, sweep, experiment)
    ok, failed, run_tags, pruned = [], [], {}, []
    for run in candidate_runs(client, parent.info.experiment_id, parent.info.run_id):
        tags = run.data.tags
        run_tags[run.info.run_id] = dict(tags)
        status = tags.get(Tag.STATUS, "ok")
        if status == "ok":
            ok.append(candidate_row(run))
        elif status == PRUNED:  # stopped by successive halving: neither a candidate row nor a failure
            pruned += [run.info.run_id, candidate_id(run)]
        else:
            failed.append(
                {
                    "candidate": candidate_id(run),
                    "run_id": run.info.run_id,
                    "status": status,
                    "reason": tags.get(Tag.REASON, ""),
                }
            )
    # Base first, then in logging order: the order `publish_pareto` writes.
    ok.sort(key=lambda r: r.get("kind") != BASE)
    return Sweep(
        uri=uri,
        run_id=parent.info.run_id,
        name=parent.info.run_name,
        experiment_id=parent.info.experiment_id,
        params=dict(parent.data.params),
        tags=dict(parent.data.tags),
        candidates=ok,
        failed=failed,
        run_tags=run_tags,
        others_with_name=others,
        experiment_name=client.get_experiment(parent.info.experiment_id).name,
        pruned=pruned,
    )


def download_parent_artifact(uri: str, run_id: str, path: str, dst: str) -> str:
    """Download one artifact file or folder of a run into `dst`; UserError naming it when missing."""
    from mlflow.exceptions import MlflowException

    client = open_client(uri)
    try:
        return client.download_artifacts(run_id, path, dst)
    except (MlflowException, OSError) as exc:
        raise UserError(
            f"artifact {path!r} of run {run_id} could not be read from {uri}: {exc}"
        ) from exc


def ui_runs_url(uri: str, parent_run_id: str, host: str = "http://127.0.0.1:5000") -> str | None:
    """The `mlflow ui` page of a sweep's runs. MLflow 3.17's UI opens on GenAI traces unless the
    URL asks for the model-training view (`workflowType=machine_learning`); None if unreadable."""
    try:
        experiment_id = open_client(uri).get_run(parent_run_id).info.experiment_id
    except Exception:  # noqa: BLE001 - only a hint: the command above still opens the UI
        return None
    return f"{host}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
