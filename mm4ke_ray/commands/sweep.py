"""`mm4ke-ray sweep CONFIG`: run a Ray Tune + Optuna sweep of R-SFT + merging."""

from __future__ import annotations

from mm4ke_ray.config import load_config

NAME = "sweep"
HELP = "Run a sweep: R-SFT trials (Ray Train) × merge candidates (actor pool), Optuna multi-objective, MLflow."


def add_arguments(p) -> None:
    p.add_argument("config", metavar="CONFIG", help="Sweep YAML, e.g. search_spaces/demo.yaml.")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray).")
    p.add_argument("--num-trials", type=int, help="Override search.num_trials.")
    p.add_argument("--smoke-test", action="store_true", help="4 trials × 3 candidates: a quick end-to-end check.")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="Override a config field, e.g. --set search.seed=3 (YAML value syntax).")


def parse_overrides(items: list[str]) -> dict:
    import yaml

    from mm4ke_ray.errors import UserError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. search.seed=3")
        out[key.strip()] = yaml.safe_load(value)
    return out


def run(args) -> int:
    from mm4ke_ray.search.driver import run_sweep

    config = load_config(args.config, parse_overrides(args.set))
    run_sweep(config, source=args.config, address=args.address, num_trials=args.num_trials, smoke_test=args.smoke_test)
    return 0
