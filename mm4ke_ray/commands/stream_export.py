"""`mm4ke-ray stream-export STREAM_DIR --round T --out DIR`: round T's model of a stream, rebuilt
from the base and the kept deltas of rounds 1..T, written as a checked Hugging Face directory."""

from __future__ import annotations

import sys
from pathlib import Path

from mm4ke_ray.commands._common import check_out_dir, resolve_device
from mm4ke_ray.commands.sweep import add_verbose_argument
from mm4ke_ray.export import DEFAULT_TOLERANCE
from mm4ke_ray.quiet import set_verbose

NAME = "stream-export"
HELP = ("Rebuild round T of a stream (`mm4ke-ray stream`) from the base model and its kept deltas, check it bit "
        "for bit against the stream's model and its metrics, and write it as a Hugging Face directory.")


def add_arguments(p) -> None:
    p.add_argument("stream_dir", metavar="STREAM_DIR", help="The stream's folder (holds stream.json).")
    p.add_argument("--round", type=int, required=True, metavar="T", help="Which round's model (1..number of rounds).")
    p.add_argument("--out", required=True, metavar="DIR", help="Output directory (new or empty).")
    p.add_argument("--force", action="store_true", help="Write into a non-empty --out.")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (the stream's device for a "
                   "bit-exact rebuild).")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help=f"Largest accepted |re-evaluated − recorded| per metric (default {DEFAULT_TOLERANCE:g}).")
    p.add_argument("--no-reevaluate", action="store_true", help="Check the weights only (skip re-evaluation).")
    add_verbose_argument(p)


def run(args) -> int:
    set_verbose(args.verbose)
    from mm4ke_ray.export.stream_round import export_round  # torch: only when exporting
    from mm4ke_ray.export.verify import ExportVerificationError

    check_out_dir(Path(args.out), args.force)
    try:
        done = export_round(args.stream_dir, args.round, args.out, device=resolve_device(args.device),
                            tolerance=args.tolerance, reevaluate=not args.no_reevaluate,
                            log=lambda m: print(f"stream-export: {m}", file=sys.stderr))
    except ExportVerificationError as exc:
        print(f"mm4ke-ray stream-export: VERIFICATION FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {done.out}: round {args.round} of {args.stream_dir}; load with AutoModelForCausalLM.from_pretrained")
    return 0
