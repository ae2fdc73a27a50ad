"""One MLflow parent run per sweep, one nested run per R-SFT trial, one per evaluated merge candidate.

Layout: parent run (name = sweep name) → trial run per R-SFT trial ("t03 L1 lr3.2e-04 τ0.10",
its R-SFT params) → candidate run per merge candidate of its delta ("α.30 s.57 t03c2"),
tagged with its trial id and kind (sampled / pure_rsft / extra); the base model's run hangs
off the parent. Every trial and candidate run carries the parent's id (`mm4ke.sweep_run_id`),
which is how readers find a sweep's runs at any depth. Every call is a batched `log_batch`,
never one call per metric. Uses `MlflowClient` (no global active run), so
it is safe to use from Tune callbacks in the driver.

Reliability: with a `spool_path`, a write that fails (server away) is kept in a JSON Lines
spool on disk and sent, in order, as soon as the server answers again (see `buffer.py`); the
sweep never stops for MLflow. Safety: params, tags and logged text pass through `redact`, so
a secret from the environment (tokens, keys, passwords) or a password in a URL never reaches
MLflow.
"""

from __future__ import annotations

import math
import os
import re
import time
import warnings
from pathlib import Path
from urllib.parse import urlparse

from mlflow import MlflowClient
from mlflow.entities import Param
from mlflow.exceptions import MlflowException

from mm4ke_ray.schema import (
    EXPERIMENT_KIND_TAG,
    MODEL_TRAINING_KIND,
    PRUNED,
    ROLE_CANDIDATE,
    ROLE_SWEEP,
    SUMMARY_DIGITS,
    Tag,
)
from mm4ke_ray.tracking.buffer import ReplayReport, Spool, reachable, replay_spool, send_record
from mm4ke_ray.tracking.pareto_artifacts import publish_pareto
from mm4ke_ray.tracking.query import load_sweep
from mm4ke_ray.tracking.system_samples import SYSTEM_METRICS, TRIAL_END_MS, TRIAL_START_MS
from mm4ke_ray.tracking.ui_command import absolute_store_uri

_MAX_PARAM_LEN = 6000
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|ACCESS_?KEY|CREDENTIAL|PRIVATE|AUTH", re.I)
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<pw>[^@/\s]+)@", re.I)
REDACTED = "***"
PROBE_EVERY_S = 5.0  # while the server is away, how often a new write checks whether it is back


def _secret_values() -> list[str]:
    """Values of environment variables whose names look secret (long enough to be one)."""
    return sorted({v for k, v in os.environ.items() if _SECRET_NAME.search(k) and len(v) >= 8}, key=len, reverse=True)


def redact(text: str) -> str:
    """`text` with secret environment values and URL passwords replaced by ***."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", text)
    for value in _secret_values():
        text = text.replace(value, REDACTED)
    return text


def _now_ms() -> int:
    return int(time.time() * 1000)


def _metric_items(values: dict, step: int = 0) -> list[list]:
    ts = _now_ms()
    out = []
    for k, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            continue
        out.append([k.replace("/", "."), float(v), ts, step])
    return out


def _param_items(values: dict) -> list[list]:
    return [[k, redact(str(v))[:_MAX_PARAM_LEN]] for k, v in values.items() if v is not None]


def _tag_items(values: dict) -> list[list]:
    return [[k, redact(str(v))] for k, v in values.items()]


def resolve_local_uri(uri: str) -> str:
    """A sqlite:/// URI with an absolute path, its folder created (MLflow does not create it).

    Absolute because MLflow keeps one store per URI string for the life of the process: after a
    chdir, a relative URI would go on writing to the file of the first directory it was used in."""
    if uri.startswith("sqlite:///"):
        uri = absolute_store_uri(uri)
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return uri


def quick_http_failures(uri: str) -> None:
    """Make MLflow's HTTP client give up on a dead server in seconds, not minutes.

    Its defaults (7 retries, backoff factor 2, 120 s timeout) block one write for minutes; the
    spool does the waiting instead. Values the user set in the environment are kept.
    """
    if uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


class SweepTracker:
    """Writes a sweep to MLflow. `parent_run_id` lets a resumed sweep keep its parent run.

    With `spool_path`, writes never raise: failures are spooled (see the module docstring);
    without it, they raise as MlflowClient does.
    """

    def __init__(self, uri: str, experiment: str, artifact_location: str | None = None,
                 spool_path: str | Path | None = None):
        self.uri = resolve_local_uri(uri)
        self.client = MlflowClient(tracking_uri=self.uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            location = artifact_location
            # A plain path becomes a file URI; "s3://", "mlflow-artifacts:/x" etc. stay as given
            # (a one-letter "scheme" is a Windows drive, i.e. a path).
            if location and len(urlparse(location).scheme) <= 1:
                location = Path(location).expanduser().resolve().as_uri()
            self.experiment_id = self._create_experiment(experiment, location)
        else:
            self.experiment_id = exp.experiment_id
            if EXPERIMENT_KIND_TAG not in exp.tags:  # made by an older version or by hand
                self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
        self._setup(spool_path)

    def _create_experiment(self, name: str, location: str | None) -> str:
        """Create experiment `name`; if another sweep created it since we looked, use that one."""
        try:
            return self.client.create_experiment(name, artifact_location=location,
                                                 tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND})
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            exp = self.client.get_experiment_by_name(name)
            if exp is None:  # deleted again meanwhile: nothing sensible to share
                raise
            return exp.experiment_id

    def _setup(self, spool_path, parent_run_id: str | None = None) -> None:
        self.parent_run_id = parent_run_id
        self.spool = (Spool(spool_path, self.uri, self.experiment_id, parent_run_id, republish=self._republish)
                      if spool_path else None)
        self.offline_since: float | None = None
        self._last_probe = 0.0
        self.run_ids: dict[str, str] = {}  # candidate id → run id, also for spooled candidates once sent
        self.trial_runs: dict[str, str] = {}  # trial id → its trial run's id, once sent
        self._trial_status: dict[str, str] = {}  # trial id → the status its run was last given
        self.spooled = 0  # records that had to wait in the spool, over the whole sweep
        self._system = None  # MLflow's system metrics monitor, when tracking.system_metrics is on

    @classmethod
    def attach(cls, uri: str, parent_run_id: str) -> SweepTracker:
        """A tracker writing to an existing sweep's parent run (e.g. to republish its Pareto front)."""
        self = cls.__new__(cls)
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        self.experiment_id = self.client.get_run(parent_run_id).info.experiment_id
        self._setup(None, parent_run_id)
        return self

    # -- sending ---------------------------------------------------------------------------------

    @property
    def offline(self) -> bool:
        return self.offline_since is not None

    @property
    def pending(self) -> int:
        """Records waiting in the spool."""
        return len(self.spool.records()) if self.spool else 0

    def _sent(self, record: dict, run_id: str | None) -> None:
        if record["op"] == "candidate" and run_id:
            # Spools written before run names became readable name the candidate by its run name.
            self.run_ids[record.get("candidate", record["name"])] = run_id
            if record.get("trial_run_id"):
                self.trial_runs[record["trial"]["trial_id"]] = record["trial_run_id"]

    def _republish(self, parent_run_id: str) -> None:
        republish_pareto(self.uri, parent_run_id)

    def flush(self, wait_s: float = 0.0) -> bool:
        """Send the spool (waiting up to `wait_s` for the server); True when nothing is left."""
        if not self.spool:
            return True
        deadline = time.monotonic() + wait_s
        while True:
            if reachable(self.uri) and self.spool.flush(self.client, self._sent):
                if self.offline:
                    warnings.warn(f"MLflow at {self.uri} is back; the spooled records were sent", stacklevel=2)
                self.offline_since = None
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))

    def _emit(self, record: dict) -> str | None:
        if self.spool is None:
            run_id = send_record(self.client, record, self._republish)
            self._sent(record, run_id)
            return run_id
        if self.offline and time.monotonic() - self._last_probe >= PROBE_EVERY_S:
            self._last_probe = time.monotonic()
            self.flush()
        if not self.offline:
            try:
                run_id = send_record(self.client, record, self._republish)
                self._sent(record, run_id)
                return run_id
            except Exception as exc:  # noqa: BLE001 - the sweep must go on; the record is kept
                self.offline_since = time.time()
                self._last_probe = time.monotonic()
                warnings.warn(f"MLflow write failed ({type(exc).__name__}: {str(exc)[:200]}); keeping records in "
                              f"{self.spool.path} until {self.uri} answers again", stacklevel=3)
        self.spool.append(record)
        self.spooled += 1
        return None

    # -- the sweep's writes ----------------------------------------------------------------------

    def start_sweep(self, name: str, params: dict, tags: dict, parent_run_id: str | None = None) -> str:
        """Create the parent run (or reopen `parent_run_id` on resume); this one must succeed."""
        if parent_run_id:
            self.client.update_run(parent_run_id, status="RUNNING")
        else:
            run = self.client.create_run(self.experiment_id, run_name=name,
                                         tags=dict(_tag_items({Tag.ROLE: ROLE_SWEEP, **tags})))
            parent_run_id = run.info.run_id
        self.parent_run_id = parent_run_id
        if self.spool:
            self.spool.parent_run_id = parent_run_id
        if not params:
            return parent_run_id
        self.client.log_batch(self.parent_run_id, params=[Param(k, v) for k, v in _param_items(params)])
        return self.parent_run_id

    def log_candidate(self, candidate: str, params: dict, metrics: dict, tags: dict,
                      run_name: str | None = None, trial: dict | None = None) -> str | None:
        """A nested run for one evaluated candidate (or failed attempt); its run id (None while spooled).

        `candidate` is the stable id, kept in the `mm4ke.candidate` tag (what pareto, export
        --pick and a resume look up); `run_name` is only what the UI shows (default: the id).
        With `trial` (`records.trial_run`: trial id, name, R-SFT params; when it ran and its
        system metrics, if known) the run nests under that trial's run, made when the trial's
        first run is sent; without, under the parent.
        """
        all_tags = {"mlflow.parentRunId": self.parent_run_id, Tag.ROLE: ROLE_CANDIDATE,
                    Tag.SWEEP_RUN_ID: self.parent_run_id, Tag.CANDIDATE: candidate, **tags}
        # A pruned candidate (successive halving) finished as intended: its run is not a failure.
        status = "FINISHED" if str(tags.get(Tag.STATUS, "ok")) in ("ok", PRUNED) else "FAILED"
        record = {"op": "candidate", "experiment_id": self.experiment_id, "candidate": candidate,
                  "name": run_name or candidate, "tags": _tag_items(all_tags), "params": _param_items(params),
                  "metrics": _metric_items(metrics), "status": status}
        if trial is not None:
            record.update(self._trial_part(trial, status))
        return self._emit(record)

    def _trial_part(self, trial: dict, status: str) -> dict:
        """A candidate record's trial: what makes or finds its trial run, and the run's status
        when it changes (FINISHED once any candidate of the trial is, FAILED before)."""
        trial_id = trial["trial_id"]
        known = self._trial_status.get(trial_id)
        wanted = "FINISHED" if "FINISHED" in (status, known) else "FAILED"
        self._trial_status[trial_id] = wanted
        part = {"trial": {"trial_id": trial_id, "name": trial["name"], "params": _param_items(trial["params"]),
                          "sweep_run_id": self.parent_run_id, "status": wanted if wanted != known else None,
                          # when it ran and its system metrics (`records.trial_run`), if the trial said
                          **{k: trial[k] for k in (TRIAL_START_MS, TRIAL_END_MS, SYSTEM_METRICS) if k in trial}}}
        if trial_id in self.trial_runs:
            part["trial_run_id"] = self.trial_runs[trial_id]
        return part

    def mark_trial(self, trial_id: str, status: str, tags: dict) -> None:
        """Tag a trial's run and set its status (e.g. KILLED for an orphaned trial), if it has one."""
        self.trial_runs.pop(trial_id, None)
        self._trial_status.pop(trial_id, None)
        self._emit({"op": "trial_mark", "experiment_id": self.experiment_id, "sweep_run_id": self.parent_run_id,
                    "trial_id": trial_id, "tags": _tag_items(tags), "status": status})

    def log_sweep_metrics(self, metrics: dict, step: int) -> None:
        # Summaries are read by people in the UI: 0.9925, not float32's 0.99249999...
        metrics = {k: round(v, SUMMARY_DIGITS) if isinstance(v, float) else v for k, v in metrics.items()}
        self._emit({"op": "batch", "run_id": self.parent_run_id, "metrics": _metric_items(metrics, step=step)})

    def set_sweep_tags(self, tags: dict) -> None:
        self._emit({"op": "batch", "run_id": self.parent_run_id, "tags": _tag_items(tags)})

    def mark_run(self, run_id: str, status: str, tags: dict) -> None:
        """Tag a child run and set its status (e.g. KILLED for an orphaned trial's runs)."""
        self._emit({"op": "batch", "run_id": run_id, "tags": _tag_items(tags)})
        self._emit({"op": "status", "run_id": run_id, "status": status})

    def log_text(self, text: str, artifact_file: str) -> None:
        self._emit({"op": "text", "run_id": self.parent_run_id, "text": redact(text), "artifact_file": artifact_file})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._emit({"op": "artifact", "run_id": self.parent_run_id, "local": str(path), "artifact_path": artifact_path})

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        self._emit({"op": "artifacts", "run_id": self.parent_run_id, "local": str(folder),
                    "artifact_path": artifact_path})

    def defer_pareto(self) -> None:
        """Leave the sweep's final Pareto publish in the spool (the server is away): it is made
        from MLflow's records once those before it are sent (`republish_pareto`), by this sweep
        or by `sweep --replay-spool`."""
        self._emit({"op": "pareto", "run_id": self.parent_run_id})

    def monitor_system(self, interval_s: float, resumed: bool = False) -> None:
        """MLflow's system metrics (`system/cpu_utilization_percentage`, memory, disk, network, GPU
        when present) of this machine on the parent run, every `interval_s`, until `finish`."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self._system = SystemMetricsMonitor(self.parent_run_id, sampling_interval=interval_s,
                                            resume_logging=resumed, tracking_uri=self.uri)
        self._system.start()

    def finish(self, status: str = "FINISHED") -> None:
        if self._system is not None:  # before the status: its loop stops on a finished run
            self._system.finish()
            self._system = None
        if self.parent_run_id:
            self._emit({"op": "status", "run_id": self.parent_run_id, "status": status})


def replay(path: str | Path, uri: str | None = None) -> ReplayReport:
    """Send a sweep's MLflow spool (see `buffer.replay_spool`); once all is sent, rebuild the
    sweep's Pareto artifacts and tags, which the sweep could not publish while MLflow was away."""
    report = replay_spool(path, uri, republish=republish_pareto)
    if report.left == 0 and report.parent_run_id and not report.published:
        republish_pareto(report.uri, report.parent_run_id)
    return report


def republish_pareto(uri: str, parent_run_id: str) -> None:
    """Write the `pareto/` artifacts and tags of a logged sweep again, from MLflow alone."""
    sweep = load_sweep(uri, parent_run_id)
    if sweep.base is not None:
        publish_pareto(SweepTracker.attach(uri, parent_run_id), sweep.edited, sweep.base)
