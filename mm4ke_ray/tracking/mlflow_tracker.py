"""One MLflow parent run per sweep, one nested child run per evaluated merge candidate.

Layout: parent run (name = sweep name) → child run per candidate, tagged with its trial id,
candidate kind (sampled / pure_rsft / extra / base) and `mm4ke.parent_trial`. Every call is a
batched `log_batch`, never one call per metric. Uses `MlflowClient` (no global active run), so
it is safe to use from Tune callbacks in the driver.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

_MAX_PARAM_LEN = 6000


def _now_ms() -> int:
    return int(time.time() * 1000)


def _metrics(values: dict, step: int = 0) -> list[Metric]:
    ts = _now_ms()
    out = []
    for k, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            continue
        out.append(Metric(key=k.replace("/", "."), value=float(v), timestamp=ts, step=step))
    return out


def _params(values: dict) -> list[Param]:
    return [Param(k, str(v)[:_MAX_PARAM_LEN]) for k, v in values.items() if v is not None]


def resolve_local_uri(uri: str) -> str:
    """Make a relative sqlite:/// URI's folder exist (MLflow does not create it)."""
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
    return uri


class SweepTracker:
    """Writes a sweep to MLflow. `parent_run_id` lets a resumed sweep keep its parent run."""

    def __init__(self, uri: str, experiment: str, artifact_location: str | None = None):
        self.uri = resolve_local_uri(uri)
        self.client = MlflowClient(tracking_uri=self.uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            location = artifact_location
            if location and "://" not in location:
                location = Path(location).expanduser().resolve().as_uri()
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
        else:
            self.experiment_id = exp.experiment_id
        self.parent_run_id: str | None = None

    def start_sweep(self, name: str, params: dict, tags: dict, parent_run_id: str | None = None) -> str:
        if parent_run_id:
            self.parent_run_id = parent_run_id
            self.client.update_run(parent_run_id, status="RUNNING")
            return parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags={"mm4ke.role": "sweep", **tags})
        self.parent_run_id = run.info.run_id
        self.client.log_batch(self.parent_run_id, params=_params(params))
        return self.parent_run_id

    def log_candidate(self, name: str, params: dict, metrics: dict, tags: dict) -> str:
        """A nested child run for one evaluated candidate; returns its run id."""
        run = self.client.create_run(
            self.experiment_id,
            run_name=name,
            tags={"mlflow.parentRunId": self.parent_run_id, "mm4ke.role": "candidate", **{k: str(v) for k, v in tags.items()}},
        )
        self.client.log_batch(run.info.run_id, metrics=_metrics(metrics), params=_params(params))
        self.client.set_terminated(run.info.run_id, status="FINISHED" if tags.get("mm4ke.status", "ok") == "ok" else "FAILED")
        return run.info.run_id

    def log_sweep_metrics(self, metrics: dict, step: int) -> None:
        self.client.log_batch(self.parent_run_id, metrics=_metrics(metrics, step=step))

    def set_sweep_tags(self, tags: dict) -> None:
        self.client.log_batch(self.parent_run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.parent_run_id, str(path), artifact_path=artifact_path)

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.parent_run_id, str(folder), artifact_path=artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        if self.parent_run_id:
            self.client.set_terminated(self.parent_run_id, status=status)
