"""`mm4ke-ray pareto`: print a sweep's Pareto front, best combined score first, from MLflow alone."""

from __future__ import annotations

import argparse
import json
import sys

from mm4ke_ray.commands._common import add_sweep_source_arguments

NAME = "pareto"
HELP = "Print a sweep's Pareto front (edit score vs. general ability kept) from MLflow, best combined score first."

def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_sweep_source_arguments(parser)
    parser.add_argument(
        "--format",
        choices=("table", "csv", "json"),
        default="table",
        help="table (default; a readable subset of columns), csv or json (every column, as in pareto/front.csv)",
    )
    parser.add_argument(
        "--all",
        action="store_true",
        help="list every candidate, not only the front (with an on_front column)",
    )
    parser.add_argument(
        "--wide",
        action="store_true",
        help="table: every column (R-SFT parameters, each edit metric, run id), not only those that fit",
    )


def front_rows(sweep, everything: bool = False) -> list[dict]:
    """The sweep's front (or every candidate, marked), sorted by combined score, best first."""
    # optuna loads only when the command runs
    from mm4ke_ray.evaluate.pareto_front import minimums_from_params, sort_by_combined, split_front

    marked, front = split_front(sweep.candidates, minimums_from_params(sweep.params))
    return sort_by_combined(marked) if everything else front


def run(args: argparse.Namespace) -> int:
    # optuna, numpy and MLflow load when the command runs, not for --help.
    from mm4ke_ray.evaluate.pareto_front import ON_FRONT
    from mm4ke_ray.tracking.pareto_artifacts import columns, to_csv
    from mm4ke_ray.tracking.query import load_sweep

    sweep = load_sweep(args.tracking_uri, args.sweep, args.experiment)
    from mm4ke_ray.evaluate.pareto_front import (
        best_candidate,
        describe_minimums,
        minimums_from_params,
    )

    if not sweep.edited:  # an empty table would look like a front of nothing
        print(f"note: sweep {sweep.name!r} (run {sweep.run_id}) has no edited candidate yet"
              f"{f' ({len(sweep.failed)} failed)' if sweep.failed else ''}: nothing to rank; "
              "it may still be running, or every trial failed", file=sys.stderr)
    mins = minimums_from_params(sweep.params)
    if mins and sweep.edited and best_candidate(sweep.candidates, mins) is None:
        print(f"note: no candidate of sweep {sweep.name!r} meets {describe_minimums(mins)}; the front holds no edited "
              "candidate (--all lists every candidate with its feasible column)", file=sys.stderr)
    warm = sum(1 for r in sweep.edited if r.get("warm_start"))  # copied from earlier sweeps (--warm-start)
    rows = front_rows(sweep, args.all)
    if not args.all:
        rows = [{k: v for k, v in r.items() if k != ON_FRONT} for r in rows]
    if args.format == "csv":
        sys.stdout.write(to_csv(rows, columns(rows)))
    elif args.format == "json":
        print(json.dumps(rows, indent=2))
    else:
        from mm4ke_ray.tracking.tables import (
            counts_line,
            print_table,
            reference_rows,
        )

        front = [r for r in rows if r.get(ON_FRONT, True)]
        # With --all every row is listed (on_front says which); else the references sit apart.
        refs = [] if args.all else reference_rows(sweep.candidates, front)
        what = "Candidates" if args.all else "Pareto front"
        print_table(
            rows,
            f"{what} of sweep {sweep.name} (run {sweep.run_id}): "
            f"{counts_line(len(front), len(sweep.edited), len(sweep.failed), warm=warm)}",
            wide=args.wide,
            references=refs,
            edit_mode=sweep.params.get("edit_mode"),
        )
    return 0
