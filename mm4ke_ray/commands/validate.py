"""`mm4ke-ray validate CONFIG`: check a sweep config without starting Ray or loading weights."""

from __future__ import annotations

from mm4ke_ray.config import load_config
from mm4ke_ray.preflight import preflight

NAME = "validate"
HELP = "Check a sweep config (every problem at once, naming the field); starts no Ray, loads no weights."


def add_arguments(p) -> None:
    p.add_argument("configs", nargs="+", metavar="CONFIG", help="Sweep YAML file(s), e.g. search_spaces/demo.yaml.")
    p.add_argument("--offline", action="store_true", help="Skip checks that need the network (MLflow server reachability).")


def run(args) -> int:
    for path in args.configs:
        config = load_config(path)
        preflight(config, path, check_tracking=not args.offline and not config.tracking.uri.startswith("http"))
        print(f"{path}: ok ({config.search.num_trials} trials, sampler {config.search.sampler}, "
              f"model {config.model.name}, edits {config.data.edits})")
    return 0
