"""`mm4ke-ray stream CONFIG`: lifelong editing in rounds (the config's `stream:` section).

Round t runs R-SFT from the model merged after round t-1 and merges into it; every round's
delta is kept (rebuild round t with `mm4ke-ray stream-export`), every round is evaluated
(this round's edits, all edits so far, locality against the base, general tasks) and logged
to MLflow with step = round; the retention curves are drawn to retention.png.
"""

from __future__ import annotations

from pathlib import Path

from mm4ke_ray.commands._common import check_out_dir, resolve_device
from mm4ke_ray.commands.sweep import add_verbose_argument, parse_overrides
from mm4ke_ray.config import load_config
from mm4ke_ray.quiet import set_verbose

NAME = "stream"
HELP = ("Lifelong editing in rounds: R-SFT + merge per round from the previous round's merged model, "
        "retention curves over rounds in MLflow and a picture; every round's model can be exported.")


def add_arguments(p) -> None:
    p.add_argument("config", metavar="CONFIG", help="Sweep YAML with a `stream:` section and one value per "
                   "search.space parameter (or stream.per_round values for alpha/sparsity).")
    p.add_argument("--out", metavar="DIR", help="Stream folder: round deltas, stream.json, retention.png "
                   "(default: <storage_path>/<name>-stream).")
    p.add_argument("--force", action="store_true", help="Write into a non-empty --out.")
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda or cuda:N.")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="Override a config field, e.g. --set stream.rounds=5 (YAML value syntax).")
    add_verbose_argument(p)


def run(args) -> int:
    config = load_config(args.config, parse_overrides(args.set))
    set_verbose(args.verbose)
    from mm4ke_ray.demo.resolve import resolve_demo  # torch: only when a stream runs
    from mm4ke_ray.stream.run import run_stream_config

    out = Path(args.out) if args.out else Path(config.storage_path) / f"{config.name}-stream"
    check_out_dir(out, args.force)
    outcome = run_stream_config(resolve_demo(config), out, device=resolve_device(args.device))
    print(outcome.table, end="")
    print(f"wrote {outcome.folder} ({len(outcome.result.rounds)} rounds; picture {outcome.picture}); MLflow run "
          f"{outcome.run_id}; export round t with: mm4ke-ray stream-export {outcome.folder} --round T --out DIR")
    return 0
