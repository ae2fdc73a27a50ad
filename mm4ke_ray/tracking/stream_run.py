"""A stream (lifelong editing in rounds) in MLflow: one run, metrics with step = round.

The run is tagged `mm4ke.role = stream` (not a sweep: `pareto`/`export` do not read it) and
carries the config, the sweep fingerprint fields (the stream section among them) and, per
round, every metric of `stream.evaluation` plus the round's α and sparsity at that step. The
retention picture, its table and the stream's manifest are its artifacts.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from mm4ke_ray.config import SweepConfig
from mm4ke_ray.schema import CONFIG_ARTIFACT, Tag
from mm4ke_ray.tracking.mlflow_tracker import SweepTracker, quick_http_failures
from mm4ke_ray.tracking.sweep_run import (
    fingerprint_tags,
    git_revision,
    recorded_choices,
    spool_path,
    versions,
)

ROLE_STREAM = "stream"


def stream_params(config: SweepConfig, n_rounds: int, rounds_sizes: list[int]) -> dict:
    """The run's params: what was edited, in how many rounds, trained and merged how."""
    s = config.stream
    fixed = {f"{k}": p.text() for k, p in config.search.space}
    return {"protocol": "stream", "model": config.model.name, "edits": config.data.edits, "dtype": config.model.dtype,
            "prompt_format": config.data.prompt_format, "merge_method": config.merge.method,
            "seed": config.search.seed, "optimizer": config.search.rsft.optimizer, "stream_split": s.split,
            "stream_rounds": n_rounds, "stream_edits_per_round": ",".join(map(str, rounds_sizes)),
            **({"stream_field": s.field} if s.field else {}),
            **{f"stream_per_round.{k}": ",".join(f"{v:g}" for v in vals) for k, vals in s.per_round.items()},
            **fixed, **recorded_choices(config)}


def open_stream_run(config: SweepConfig, folder: str | Path, n_rounds: int, rounds_sizes: list[int],
                    resumed_after: int | None = None) -> SweepTracker:
    """A new MLflow run for the stream in `folder` (spooled there when the server is away);
    `resumed_after`: the kept rounds a resumed stream goes on from (param `resumed_after_round`)."""
    quick_http_failures(config.tracking.uri)
    location = config.tracking.artifact_location
    if config.tracking.uri.startswith(("http://", "https://")) and "artifact_location" not in config.tracking.model_fields_set:
        location = None
    tracker = SweepTracker(config.tracking.uri, config.tracking.experiment, location,
                           spool_path=spool_path(str(folder)))
    tags = {Tag.ROLE: ROLE_STREAM, Tag.GIT_REVISION: git_revision(), Tag.PROTOCOL: "stream",
            Tag.PROMPT_FORMAT: config.data.prompt_format, Tag.SWEEP_FOLDER: str(folder), **fingerprint_tags(config),
            **{Tag.version(k): v for k, v in versions().items()}}
    params = stream_params(config, n_rounds, rounds_sizes)
    if resumed_after is not None:
        params["resumed_after_round"] = resumed_after
    tracker.start_sweep(config.name, params=params, tags=tags)
    tracker.log_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), CONFIG_ARTIFACT)
    return tracker


def log_round(tracker: SweepTracker, t: int, metrics: dict, merge: dict | None = None) -> None:
    """Round t's metrics (0 = the base) and, from round 1, its merge settings, at step t."""
    extra = {k: merge[k] for k in ("alpha", "sparsity") if merge and k in merge}
    tracker.log_sweep_metrics({**metrics, **extra}, step=t)
