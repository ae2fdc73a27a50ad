"""`mm4ke-ray demo`: the embedded default sweep, the same as `mm4ke-ray sweep search_spaces/demo.yaml`."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from mm4ke_ray.commands.sweep import add_verbose_argument, start_sweep
from mm4ke_ray.config import load_config
from mm4ke_ray.quiet import set_verbose

NAME = "demo"
HELP = "Run the embedded demo sweep: no network, no GPU, local Ray, MLflow in ./runs/mlflow.db."


def add_arguments(p) -> None:
    p.add_argument("--smoke-test", action="store_true", help="4 trials × 3 candidates.")
    p.add_argument("--num-trials", type=int, help="Override search.num_trials.")
    add_verbose_argument(p)


def demo_config_path() -> Path:
    """The demo sweep config shipped in the package (search_spaces/demo.yaml links to it)."""
    return Path(str(resources.files("mm4ke_ray.demo") / "sweep.yaml"))


def run(args) -> int:
    set_verbose(args.verbose)  # before the demo model build and Ray
    path = demo_config_path()
    outcome = start_sweep(load_config(path), source=str(path), num_trials=args.num_trials, smoke_test=args.smoke_test)
    from mm4ke_ray.search.outcome import print_summary  # Ray: only once a sweep ran

    print_summary(outcome)
    return 0
