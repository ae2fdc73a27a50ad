"""A config that names the demo ('demo' as model or edit set), pointed at the built demo assets.

Called by the command layer (`demo`, `sweep`, `plan`) before a sweep is planned or started, so
the sweep itself only ever sees real paths.
"""

from __future__ import annotations

from rich.console import Console

from mm4ke_ray.config import DEMO, SweepConfig
from mm4ke_ray.demo.build import build_demo

console = Console(stderr=True)


def uses_demo(config: SweepConfig) -> bool:
    return DEMO in (config.model.name, config.data.edits)


def resolve_demo(config: SweepConfig, build_kwargs: dict | None = None) -> SweepConfig:
    """Replace 'demo' model/data with the locally built (cached) demo assets."""
    if not uses_demo(config):
        return config
    assets = build_demo(progress=lambda msg: console.print(f"[dim]demo: {msg}[/]"), **(build_kwargs or {}))
    overrides = {}
    if config.model.name == DEMO:
        overrides["model.name"] = str(assets.model_dir)
    if config.data.edits == DEMO:
        overrides["data.edits"] = str(assets.edits_path)
        overrides["evaluation.task_include_path"] = str(assets.tasks_dir)
    return config.with_overrides(**overrides)


def resolve_demo_argument(value: str | None, what: str) -> str | None:
    """'demo' given to a command's model option (`what` = "model") or edit-set option ("data"):
    the built (cached) demo asset's path, as a sweep of a config naming 'demo' uses it."""
    if value != DEMO:
        return value
    assets = build_demo(progress=lambda msg: console.print(f"[dim]demo: {msg}[/]"))
    return str(assets.edits_path if what == "data" else assets.model_dir)
