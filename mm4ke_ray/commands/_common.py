"""Pieces several subcommands share: output-folder checks and the MLflow sweep arguments."""

from __future__ import annotations

import argparse
from pathlib import Path

from mm4ke_ray.errors import UserError


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse a file, or a non-empty directory unless --force: nothing already there is lost."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out '{out}' is a file; give a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(
            f"--out '{out}' is not empty; choose an empty or new directory, or pass --force to write into it"
        )


def add_sweep_source_arguments(parser: argparse.ArgumentParser) -> None:
    """--tracking-uri, --sweep and --experiment: where a finished sweep is read back from."""
    parser.add_argument(
        "--tracking-uri",
        required=True,
        metavar="URI",
        help="MLflow tracking URI the sweep logged to: sqlite:///runs/mlflow.db or http://127.0.0.1:5000",
    )
    parser.add_argument(
        "--sweep",
        required=True,
        metavar="NAME|RUN_ID",
        help="sweep name (its newest parent run) or the parent run's id",
    )
    parser.add_argument("--experiment", metavar="NAME", help="MLflow experiment to look in (default: all)")
