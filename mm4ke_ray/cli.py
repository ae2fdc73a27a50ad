"""The `mm4ke-ray` console script: one subcommand per module in `mm4ke_ray.commands`.

Each command module defines `NAME`, `HELP`, `add_arguments(parser)` and `run(args) -> int`, and
keeps torch, Ray and MLflow out of its module level, so `--help` answers without them.
A `UserError` anywhere prints its message (no traceback) and exits with code 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from mm4ke_ray import __version__
from mm4ke_ray.commands import (
    demo,
    evaluate,
    export,
    merge,
    pareto,
    plan,
    rsft,
    stream,
    stream_export,
    sweep,
    validate,
)
from mm4ke_ray.errors import UserError

# Order here is the order in `--help`.
COMMANDS = (demo, sweep, validate, plan, rsft, merge, evaluate, pareto, export, stream, stream_export)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mm4ke-ray",
        description="Knowledge editing by Robust SFT + model merging, swept with Ray Tune + Optuna.",
        # No prefix matching: `--mode both` on a command without --mode would silently be `--model both`.
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"mm4ke-ray {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP, allow_abbrev=False)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Logging a trial's candidates to MLflow takes ~1 s; Tune would warn about it at 0.5 s.
    os.environ.setdefault("TUNE_WARN_THRESHOLD_S", "5")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except UserError as exc:
        print(f"mm4ke-ray {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
