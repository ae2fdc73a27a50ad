"""Checks a sweep config against the world before any Ray work: paths, layers, tasks, methods.

Every problem is collected and reported at once, each naming the config field.
"""

from __future__ import annotations

import json
from pathlib import Path

from mm4ke_ray.config import DEMO, SweepConfig
from mm4ke_ray.errors import ConfigError, UserError


def _num_layers(model: str) -> int | None:
    """Layer count from a local model's config.json; None for hub ids (not checked offline)."""
    cfg = Path(model).expanduser() / "config.json"
    if not cfg.is_file():
        return None
    data = json.loads(cfg.read_text())
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if key in data:
            return int(data[key])
    return None


def _check_tracking(uri: str) -> str | None:
    if uri.startswith(("http://", "https://")):
        import urllib.request

        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5)
        except Exception as exc:  # noqa: BLE001 - any failure means "cannot reach"
            return f"tracking.uri: cannot reach the MLflow server at {uri} ({exc}); start it or fix the URI"
    elif uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).expanduser().resolve().parent
        probe = folder
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir() or not __import__("os").access(probe, __import__("os").W_OK):
            return f"tracking.uri: cannot create the SQLite file's folder {folder}"
    elif "://" not in uri:
        return f"tracking.uri: {uri!r} is not a URI; use sqlite:///path/mlflow.db or http://host:port"
    return None


def preflight(config: SweepConfig, source: str, num_layers: int | None = None, check_tracking: bool = True) -> None:
    """Raise one ConfigError listing every problem found (no Ray, no model weights loaded)."""
    from mm4ke_ray.modeling.loading import check_model_source

    problems: list[str] = []
    model = config.model.name
    if model != DEMO:
        try:
            check_model_source(model)
        except UserError as exc:
            problems.append(f"model.name: {exc}")
        num_layers = num_layers or _num_layers(model)
    if num_layers is not None:
        bad = [layer for layer in config.search.space.layers() if layer >= num_layers]
        if bad:
            problems.append(
                f"search.space.layer: {bad} out of range: the model has {num_layers} layers (0..{num_layers - 1})"
            )
    edits = config.data.edits
    if edits != DEMO and not edits.startswith("hf://") and ("/" not in edits or edits.startswith((".", "/", "~"))):
        if not Path(edits).expanduser().exists():
            problems.append(f"data.edits: file '{edits}' does not exist")
    try:
        from mm4ke_ray.merge.registry import get_sparsifier

        get_sparsifier(config.merge.method)
    except UserError as exc:
        problems.append(f"merge.method: {exc}")
    tasks = config.evaluation.general_tasks
    if tasks and config.model.name != DEMO:
        try:
            from mm4ke_ray.evaluate.general import validate_tasks

            validate_tasks(tasks, config.evaluation.task_include_path)
        except UserError as exc:
            problems.append(f"evaluation.general_tasks: {exc}")
    if check_tracking and (msg := _check_tracking(config.tracking.uri)):
        problems.append(msg)
    if problems:
        raise ConfigError(source, problems)
