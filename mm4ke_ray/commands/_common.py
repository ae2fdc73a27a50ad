"""Arguments several subcommands share (the MLflow sweep source, model loading, --out); the
checks behind them live below the commands (`storage.check_out_dir`, `device.resolve_device`)."""

from __future__ import annotations

import argparse

from mm4ke_ray.device import resolve_device
from mm4ke_ray.storage import check_out_dir

__all__ = ["add_model_arguments", "add_out_dir_arguments", "add_sweep_source_arguments", "check_out_dir",
           "model_options", "resolve_device", "seed"]


def seed(text: str) -> int:
    """argparse type of a --seed: an integer in [0, 2^32), what numpy and torch take (exit 2 otherwise)."""
    value = int(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be in [0, 2^32), got {value}")
    return value


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
        help="sweep name (refused, with the run ids, when several sweeps share it) or the parent run's id",
    )
    parser.add_argument("--experiment", metavar="NAME", help="MLflow experiment to look in (default: all)")


def add_model_arguments(parser: argparse.ArgumentParser, use: str) -> None:
    """--dtype, --device and --trust-remote-code, the same for every command that loads a model."""
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help=f"dtype to load and {use} in (default: float32)",
    )
    parser.add_argument(
        "--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda or cuda:N (default: auto)"
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the model repository's own code (off by default; only for code you trust)",
    )


def model_options(args: argparse.Namespace) -> dict:
    """`add_model_arguments`' values as model loaders take them (dtype, device, trust_remote_code),
    the device resolved: an unusable --device fails here, before anything is loaded."""
    return {"dtype": args.dtype, "device": resolve_device(args.device), "trust_remote_code": args.trust_remote_code}


def add_out_dir_arguments(parser: argparse.ArgumentParser) -> None:
    """--out DIR and --force, checked by `check_out_dir`."""
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (must be empty unless --force)")
    parser.add_argument("--force", action="store_true", help="write into a non-empty --out")
