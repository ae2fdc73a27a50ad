"""`mm4ke-ray export`: rebuild a sweep candidate from MLflow, write it as a checked HF directory."""

from __future__ import annotations

import argparse
import os
import sys

from mm4ke_ray.commands._common import add_sweep_source_arguments
from mm4ke_ray.commands.sweep import add_verbose_argument
from mm4ke_ray.export import DEFAULT_TOLERANCE
from mm4ke_ray.quiet import set_verbose

NAME = "export"
HELP = (
    "Rebuild a sweep's candidate (best by combined score, or a run id) from MLflow alone and write it as a "
    "Hugging Face directory with model card, recipe and checksums; re-evaluated and checked before it is done."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_sweep_source_arguments(parser)
    parser.add_argument(
        "--pick",
        default="best",
        metavar="best|CANDIDATE_RUN_ID",
        help="'best' (highest combined score; default) or a candidate's run id or name (see `mm4ke-ray pareto`)",
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="output directory (new or empty)"
    )
    parser.add_argument(
        "--register",
        metavar="NAME",
        help="also register the directory in the MLflow Model Registry as model NAME",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an earlier export in --out (a directory with mm4ke_merge.json); other non-empty directories are refused",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help=f"largest accepted |re-evaluated − recorded| per metric, in the metric's unit (default {DEFAULT_TOLERANCE:g}; "
        "loosen when the sweep evaluated on another device or dtype)",
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="device to merge and re-evaluate on: auto (cuda if present), cpu, cuda",
    )
    parser.add_argument(
        "--strict-tokenizer",
        action="store_true",
        help="refuse the export when plain AutoTokenizer does not give the ids of its tokenizer.json "
        "(default: warn, with the cause and the fix, and record it in mm4ke_merge.json)",
    )
    add_verbose_argument(parser)


def run(args: argparse.Namespace) -> int:
    set_verbose(args.verbose)  # before transformers, lm-eval and tqdm load: they read it at import
    # torch and MLflow load when the export runs, not for --help.
    from mm4ke_ray.export.verify import ExportVerificationError
    from mm4ke_ray.export.writer import export_candidate

    # MLflow's per-file download bars would bury the export's own progress lines.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    def log(msg: str) -> None:
        print(f"export: {msg}", file=sys.stderr)

    try:
        result = export_candidate(
            args.tracking_uri,
            args.sweep,
            args.out,
            pick=args.pick,
            experiment=args.experiment,
            register=args.register,
            force=args.force,
            tolerance=args.tolerance,
            device=args.device,
            strict_tokenizer=args.strict_tokenizer,
            log=log,
        )
    except ExportVerificationError as exc:
        print(f"mm4ke-ray export: VERIFICATION FAILED: {exc}", file=sys.stderr)
        return 1
    src = result.recipe["source"]
    if result.model_version is None:
        _log_unregistered_model(args.tracking_uri, result, log)
    print(
        f"wrote {result.out}: {src['candidate']} (run {src['candidate_run_id']}) of sweep {src['sweep_name']}, "
        f"alpha={result.plan.alpha:g}, sparsity={result.plan.sparsity:g}; verified "
        f"(max |diff| {result.recipe['verification']['max_abs_diff']:.3g}); load with AutoModelForCausalLM.from_pretrained"
    )
    if result.model_version is not None:
        from mm4ke_ray.tracking.registry import CHAMPION

        print(f"registered model {args.register!r} version {result.model_version.version}, alias {CHAMPION!r} "
              f"(models:/{args.register}@{CHAMPION})")
    return 0


def _log_unregistered_model(uri: str, result, log) -> None:
    """Record the export as a LoggedModel of its candidate run (files stay in --out). A store that
    refuses the write (read-only, away) costs the record, not the verified export."""
    from mm4ke_ray.tracking.registry import log_export_model

    try:
        model = log_export_model(uri, result.out, result.recipe, upload=False)
    except Exception as exc:  # noqa: BLE001 - the export itself is done and verified
        log(f"could not record the export as a logged model in MLflow ({type(exc).__name__}: {str(exc)[:200]})")
        return
    # by name too: a repeated export of the candidate is a second model, "…-export2" in the UI
    log(f"recorded as logged model {model.name!r} ({model.model_id}) of run "
        f"{result.recipe['source']['candidate_run_id']}")
