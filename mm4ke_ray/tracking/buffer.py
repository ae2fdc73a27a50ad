"""MLflow writes that could not be sent: a JSON Lines spool on disk, replayed in order later.

A sweep runs for hours; a tracking server that is away for a minute must not end it or lose
what it computed. Every write the sweep makes is one self-contained record (`op` plus its
data: a candidate run with params/metrics/tags, a batch on the parent run, an artifact folder,
a run status). When a write fails, it and every later one go to the spool file, in order,
until the server answers again; then the spool is sent first. A record that a *reachable*
server still refuses (it would block the spool forever) goes to `<spool>.rejected.jsonl` with
the error, so nothing is dropped silently.

`replay_spool(path)` (or `mm4ke-ray sweep --replay-spool PATH`) sends what is left after a sweep
that ended while the server was away.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from mm4ke_ray.atomic_write import write_text_atomic
from mm4ke_ray.errors import UserError
from mm4ke_ray.schema import ROLE_TRIAL, Tag
from mm4ke_ray.tracking.health import reachable
from mm4ke_ray.tracking.store_check import check_store
from mm4ke_ray.tracking.system_samples import (
    SYSTEM_METRICS,
    TRIAL_END_MS,
    TRIAL_START_MS,
    metric_items,
)

SPOOL_FILE = "mlflow-spool.jsonl"
HEADER = "header"
SPOOL_FORMAT = "mm4ke-mlflow-spool"  # the header's `format`: what tells a spool from any other JSON Lines file
SPOOL_VERSION = 1
# Every op `send_record` performs; a file with any other op is not (this version's) spool.
OPS = frozenset({HEADER, "candidate", "batch", "artifacts", "artifact", "text", "status", "trial_mark", "pareto"})


def _metrics(items: list) -> list[Metric]:
    return [Metric(key=k, value=v, timestamp=ts, step=step) for k, v, ts, step in items]


def _params(items: list) -> list[Param]:
    return [Param(k, v) for k, v in items]


def _tags(items: list) -> list[RunTag]:
    return [RunTag(k, v) for k, v in items]


def find_trial_run(client, experiment_id: str, sweep_run_id: str, trial_id: str) -> str | None:
    """The run of R-SFT trial `trial_id` in sweep `sweep_run_id`, if one was made (by this driver,
    a driver before a resume, or a replayed spool); a run marked orphaned does not count."""
    runs = client.search_runs([experiment_id], f"tags.`{Tag.ROLE}` = '{ROLE_TRIAL}' AND "
                              f"tags.`{Tag.SWEEP_RUN_ID}` = '{sweep_run_id}' AND tags.`{Tag.TRIAL_ID}` = '{trial_id}'",
                              max_results=20, order_by=["attributes.start_time ASC"])
    return next((r.info.run_id for r in runs if r.data.tags.get(Tag.STATUS) != "orphaned"), None)


def _trial_run_id(client, record: dict) -> str:
    """The trial run a candidate record nests under: found by its tags, else created now.

    Created only when the trial's first record is sent, so a spooled trial gets its run at
    replay and a resumed sweep reuses the run its first driver made: never two per trial. The
    run spans the trial (its start and end, when the record knows them) and carries the trial's
    system metrics, sampled where it ran (`system_samples`), once.
    """
    trial = record["trial"]
    if not record.get("trial_run_id"):
        found = find_trial_run(client, record["experiment_id"], trial["sweep_run_id"], trial["trial_id"])
        if found is None:
            tags = {Tag.ROLE: ROLE_TRIAL, Tag.SWEEP_RUN_ID: trial["sweep_run_id"], Tag.TRIAL_ID: trial["trial_id"],
                    "mlflow.parentRunId": trial["sweep_run_id"]}
            found = client.create_run(record["experiment_id"], run_name=trial["name"], tags=tags,
                                      start_time=trial.get(TRIAL_START_MS)).info.run_id
            trial["params_due"] = True  # kept in the record: a failure before they are sent retries them
        record["trial_run_id"] = found
    if trial.get("params_due"):
        client.log_batch(record["trial_run_id"], params=_params(trial["params"]))
        trial["params_due"] = False
    if trial.get(SYSTEM_METRICS):  # their own timestamps and steps; MLflow batches them by 1000
        client.log_batch(record["trial_run_id"], metrics=_metrics(metric_items(trial[SYSTEM_METRICS])))
        trial[SYSTEM_METRICS] = None
    if trial.get("status"):  # the trial's outcome changed (first record, or a retry that succeeded)
        client.set_terminated(record["trial_run_id"], status=trial["status"], end_time=trial.get(TRIAL_END_MS))
        trial["status"] = None
    return record["trial_run_id"]


def send_record(client, record: dict, republish=None) -> str | None:
    """Perform one spool record with `client`; returns the run id it wrote to.

    A `pareto` record (the sweep's final Pareto publish, deferred while the server was away) is
    performed by `republish(parent_run_id)`, which rebuilds the front from MLflow's records: the
    ones before it in the spool have been sent by then.

    A candidate record remembers its run id as soon as the run exists, so a failure half-way
    (run created, metrics not yet logged) is resumed in the same run, not a duplicate. A
    candidate record with a `trial` nests under that trial's run (`_trial_run_id`); older
    records carry their parent in their tags.
    """
    op = record["op"]
    if op == "candidate":
        if not record.get("run_id"):
            tags = dict(record["tags"])
            if record.get("trial"):
                tags["mlflow.parentRunId"] = _trial_run_id(client, record)
            run = client.create_run(record["experiment_id"], run_name=record["name"], tags=tags)
            record["run_id"] = run.info.run_id
        client.log_batch(record["run_id"], metrics=_metrics(record["metrics"]), params=_params(record["params"]))
        client.set_terminated(record["run_id"], status=record["status"])
    elif op == "batch":
        client.log_batch(record["run_id"], metrics=_metrics(record.get("metrics", [])),
                         params=_params(record.get("params", [])), tags=_tags(record.get("tags", [])))
    elif op == "artifacts":
        client.log_artifacts(record["run_id"], record["local"], artifact_path=record.get("artifact_path"))
    elif op == "artifact":
        client.log_artifact(record["run_id"], record["local"], artifact_path=record.get("artifact_path"))
    elif op == "text":
        client.log_text(record["run_id"], record["text"], record["artifact_file"])
    elif op == "status":
        client.set_terminated(record["run_id"], status=record["status"])
    elif op == "trial_mark":  # e.g. an orphaned trial's run: nothing to do if it never got one
        run_id = find_trial_run(client, record["experiment_id"], record["sweep_run_id"], record["trial_id"])
        if run_id:
            client.log_batch(run_id, tags=_tags(record["tags"]))
            client.set_terminated(run_id, status=record["status"])
        return run_id
    elif op == "pareto":
        if republish is None:
            raise ValueError("a pareto spool record needs a republish function (mlflow_tracker.republish_pareto)")
        republish(record["run_id"])
    elif op != HEADER:
        raise ValueError(f"unknown spool record op {op!r}")
    return record.get("run_id")


class Spool:
    """The append-only spool file (and a folder beside it for artifact copies)."""

    def __init__(self, path: str | Path, uri: str, experiment_id: str | None = None, parent_run_id: str | None = None,
                 republish=None):
        """`republish(parent_run_id)`: what performs a `pareto` record (see `send_record`)."""
        self.path = Path(path)
        self.uri, self.experiment_id, self.parent_run_id = uri, experiment_id, parent_run_id
        self.republish = republish
        self.files = self.path.with_name(self.path.stem + "-files")

    @property
    def rejected_path(self) -> Path:
        return self.path.with_name(self.path.stem + ".rejected.jsonl")

    def records(self) -> list[dict]:
        """Every record waiting to be sent, oldest first (the header excluded)."""
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            if line.strip():
                try:
                    rec = json.loads(line)
                except ValueError:  # a line cut by a crash mid-write: nothing was promised for it
                    continue
                if rec.get("op") != HEADER:
                    out.append(self._resolved(rec))
        return out

    # Artifact copies are recorded relative to the spool's files folder, so a sweep folder that
    # was moved or copied still sends them (absolute paths of older spools are kept as they are).
    def _resolved(self, record: dict) -> dict:
        if "local" in record and not Path(record["local"]).is_absolute():
            return {**record, "local": str(self.files / record["local"])}
        return record

    def _stored(self, record: dict) -> dict:
        if "local" in record and Path(record["local"]).is_relative_to(self.files):
            return {**record, "local": str(Path(record["local"]).relative_to(self.files))}
        return record

    def append(self, record: dict) -> None:
        """Add a record (artifact folders/files are copied into the spool, since callers delete them)."""
        if record["op"] in ("artifacts", "artifact"):
            dst = self.files / uuid.uuid4().hex
            src = Path(record["local"])
            if src.is_dir():
                shutil.copytree(src, dst)
            else:
                dst.mkdir(parents=True)
                dst = dst / src.name
                shutil.copy2(src, dst)
            record = {**record, "local": str(dst.relative_to(self.files))}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.is_file()
        with self.path.open("a") as out:
            if new:
                out.write(json.dumps(self._header()) + "\n")
            out.write(json.dumps(record) + "\n")

    def _header(self) -> dict:
        return {"op": HEADER, "format": SPOOL_FORMAT, "version": SPOOL_VERSION, "uri": self.uri,
                "experiment_id": self.experiment_id,
                "parent_run_id": self.parent_run_id, "created": time.time()}

    def _rewrite(self, records: list[dict]) -> None:
        if not records:
            self.path.unlink(missing_ok=True)
            _remove_if_empty(self.files)  # only the copies this spool made were removed (`_sent`)
            return
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in [self._header(), *map(self._stored, records)]))

    def flush(self, client, on_sent=None) -> bool:
        """Send waiting records in order; True when none is left. Stops at the first failure
        while the server is away; a record a reachable server refuses is set aside (rejected)."""
        records = self.records()
        if not records:
            return True
        left = list(records)
        try:
            while left:
                record = left[0]
                try:
                    run_id = send_record(client, record, self.republish)
                except Exception as exc:  # noqa: BLE001
                    if reachable(self.uri):
                        self._reject(record, exc)
                        left.pop(0)
                        continue
                    return False
                left.pop(0)
                self._sent(record)
                if on_sent:
                    on_sent(record, run_id)
            return True
        finally:
            self._rewrite(left)

    def _sent(self, record: dict) -> None:
        """Remove a sent artifact record's copy: its own `<files>/<uuid>` folder, nothing else."""
        local = record.get("local")
        if record.get("op") in ("artifacts", "artifact") and local:
            copy = Path(local)
            if copy.is_relative_to(self.files) and copy != self.files:
                own = self.files / copy.relative_to(self.files).parts[0]
                shutil.rmtree(own, ignore_errors=True)

    def _reject(self, record: dict, exc: Exception) -> None:
        with self.rejected_path.open("a") as out:
            out.write(json.dumps({**record, "error": f"{type(exc).__name__}: {exc}"[:2000]}) + "\n")


@dataclass
class ReplayReport:
    sent: int
    left: int
    rejected: int
    path: str
    uri: str = ""
    parent_run_id: str | None = None
    published: bool = False  # a deferred Pareto publish was among the records sent


def spool_header(path: str | Path) -> dict:
    """A spool file's header: the tracking URI, experiment and parent run it was written for."""
    p = Path(path)
    for line in p.read_text().splitlines() if p.is_file() else []:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("op") == HEADER:
            return rec
    return {}


def replay_spool(path: str | Path, uri: str | None = None, republish=None) -> ReplayReport:
    """Send a spool file's records to MLflow (`uri`, default: the one in its header), in order.

    Returns how many were sent, how many are still waiting (server away) and how many were
    refused (written to `<spool>.rejected.jsonl`). `republish(uri, parent_run_id)` performs a
    deferred Pareto publish (a `pareto` record).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--replay-spool {path}: no such spool file; a sweep prints its spool path when it ends "
                        f"with unsent MLflow records ({SPOOL_FILE} in the sweep's storage folder)")
    if problem := spool_problem(path):
        raise UserError(f"--replay-spool {path}: not an MLflow spool of mm4ke-ray: {problem}; nothing was read, "
                        f"sent or changed. Give the {SPOOL_FILE} a sweep printed")
    header = spool_header(path)
    uri = uri or header.get("uri")
    if not uri:
        raise UserError(f"--replay-spool {path}: the file has no header naming its tracking URI; give --tracking-uri")
    check_store(uri, create=True, what=f"--replay-spool {path}: its tracking URI")  # never into another app's database
    spool = Spool(path, uri, header.get("experiment_id"), header.get("parent_run_id"),
                  republish=(lambda run_id: republish(uri, run_id)) if republish else None)
    rejected_before = _count_lines(spool.rejected_path)
    total = len(spool.records())
    sent_ops: set[str] = set()
    spool.flush(MlflowClient(tracking_uri=uri), lambda record, _run_id: sent_ops.add(record["op"]))
    left = len(spool.records())
    rejected = _count_lines(spool.rejected_path) - rejected_before
    return ReplayReport(sent=total - left - rejected, left=left, rejected=rejected, path=str(path), uri=uri,
                        parent_run_id=header.get("parent_run_id"), published="pareto" in sent_ops)


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # absent, or holds files that are not this spool's sent copies: kept
        pass


def spool_problem(path: str | Path) -> str | None:
    """Why `path` is not a spool this version can replay (None when it is one).

    Checked before anything is read as a record, sent, rewritten or deleted: replaying a file
    that is not a spool would reject each line and then remove the file (and a `<stem>-files`
    folder beside it). A spool's first line is its header (`op: header`, a tracking `uri`; spools
    since `format` was added name it and their version), and every later line has a known `op`.
    """
    lines = [line for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    try:
        header = json.loads(lines[0]) if lines else None
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("op") != HEADER or not isinstance(header.get("uri"), str):
        return "its first line is not a spool header ({\"op\": \"header\", \"uri\": ...})"
    if header.get("format", SPOOL_FORMAT) != SPOOL_FORMAT:
        return f"its header names the format {header.get('format')!r}, not {SPOOL_FORMAT!r}"
    version = header.get("version", 1)
    if not isinstance(version, int) or version > SPOOL_VERSION:
        return f"its header has version {version!r}; this mm4ke-ray reads spools up to version {SPOOL_VERSION}"
    for number, line in enumerate(lines[1:], start=2):
        try:
            record = json.loads(line)
        except ValueError:
            if number == len(lines):  # the last line cut by a crash mid-write: skipped by `records`
                continue
            return f"line {number} is not JSON"
        if not isinstance(record, dict) or record.get("op") not in OPS:
            op = record.get("op") if isinstance(record, dict) else None
            return f"line {number} has no known spool op (got {op!r}; known: {', '.join(sorted(OPS))})"
    return None


def _count_lines(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.is_file() else 0
