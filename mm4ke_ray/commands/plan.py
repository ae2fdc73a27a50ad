"""`mm4ke-ray plan CONFIG [--gpus N] [--probe | --from-real]`: a sweep's GPU-hours and wall time, before it runs.

Nothing heavy at import time (torch, transformers, ray load only when the command runs), so
`mm4ke-ray --help` stays fast.
"""

from __future__ import annotations

import json
import sys

from mm4ke_ray.commands.sweep import (  # the same --set as `mm4ke-ray sweep`
    add_verbose_argument,
    parse_overrides,
)
from mm4ke_ray.planning import plan_sweep
from mm4ke_ray.planning.report import render
from mm4ke_ray.quiet import set_verbose

NAME = "plan"
HELP = ("Estimate a sweep's wall time and GPU-hours before submitting it: from the config and per-step "
        "costs probed here (--probe) or stored per GPU kind.")


def add_arguments(p) -> None:
    p.add_argument("config", metavar="CONFIG", help="Sweep YAML, e.g. search_spaces/zsre_qwen2.5-7b.yaml.")
    p.add_argument("--gpus", type=int, default=0, metavar="N",
                   help="GPUs of the cluster the sweep will run on (default 0: this machine's CPUs).")
    p.add_argument("--cpus", type=float, default=None, metavar="N",
                   help="CPUs of that cluster (default: this machine's without --gpus, else what the workers ask for).")
    p.add_argument("--probe", action="store_true",
                   help="Measure per-step costs here: a few R-SFT updates and one candidate evaluation "
                        "(needs the model's weights; seconds on a small model).")
    p.add_argument("--from-real", action="store_true",
                   help="CPU plans: scale the real SmolLM2-135M sweep measured here (benchmarks/results/real.json) "
                        "to the model by parameter count, for a model too big to probe here.")
    p.add_argument("--gpu-kind", default="h200", metavar="KIND",
                   help="Whose stored figures to scale to the model when not probing (default: h200, from "
                        "benchmarks/results/gpu_check.json).")
    p.add_argument("--records", type=int, default=None, metavar="N",
                   help="Edit records, when data.edits cannot be read here (a hub dataset offline).")
    p.add_argument("--num-trials", type=int, default=None, metavar="N", help="Override search.num_trials.")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="Override a config field (YAML value), as for `mm4ke-ray sweep`; repeatable.")
    p.add_argument("--results", default=None, metavar="DIR",
                   help="Folder of benchmark results to read (default: this checkout's benchmarks/results).")
    p.add_argument("--json", action="store_true", help="Print the plan as JSON instead of tables.")
    add_verbose_argument(p)


def run(args) -> int:
    set_verbose(args.verbose)  # --probe loads a model and lm-eval: their bars and notices stay off
    plan = plan_sweep(args.config, gpus=args.gpus, cpus=args.cpus, probe=args.probe, from_real=args.from_real,
                      gpu_kind=args.gpu_kind, records=args.records, num_trials=args.num_trials,
                      overrides=parse_overrides(args.set) or None, results=args.results)
    if args.json:
        json.dump(plan.as_json(), sys.stdout, indent=2)
        print()
        return 0
    render(plan.as_json())
    return 0
