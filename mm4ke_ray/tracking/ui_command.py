"""The `mlflow ui` command a sweep prints: pasteable from any directory, and opening the
experiment's runs (MLflow's UI through this package's app, see tracking/mlflow_ui.py)."""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

APP_NAME = "mm4ke"  # the `mlflow.app` entry point in pyproject.toml


def app_installed() -> bool:
    """Whether `mlflow ui --app-name mm4ke` will find this app (the package's entry point)."""
    return any(ep.name == APP_NAME for ep in entry_points(group="mlflow.app"))


def absolute_store_uri(uri: str) -> str:
    """A sqlite URI with an absolute path, so the command works from any directory."""
    if not uri.startswith("sqlite:///"):
        return uri
    return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).expanduser().resolve())


def ui_command(mlflow: str, uri: str, port: int = 5000) -> str:
    """The `mlflow ui` line a sweep prints: this app when installed, the store's absolute path."""
    app_flag = f" --app-name {APP_NAME}" if app_installed() else ""
    # One worker: one person's browser needs no more, and uvicorn's supervisor of several kills
    # workers that start slowly, which on a busy laptop they all do (seen at load 40 on 2 cores).
    return (f"{mlflow} ui{app_flag} --backend-store-uri {absolute_store_uri(uri)} --host 127.0.0.1 --port {port}"
            " --workers 1")
