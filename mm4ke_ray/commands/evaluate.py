"""`mm4ke-ray evaluate`: edit metrics of one model on an edit set, written as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mm4ke_ray.commands._common import add_model_arguments, resolve_device
from mm4ke_ray.errors import UserError

NAME = "evaluate"
HELP = "Score a model on an edit set: Edit Succ., Generalization, Portability, Locality, Fluency (EasyEdit definitions)."

PROTOCOL = "sequential"
PROTOCOL_NOTE = (
    "metrics of the given model on every record; under the paper's protocol the model was edited on all "
    "records first (sequential editing, evaluate after all edits)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `mm4ke-ray evaluate`."""
    parser.add_argument(
        "--model", required=True, help="Edited model: local Hugging Face directory or hub id."
    )
    parser.add_argument(
        "--base", help="Unedited base model; needed for Locality (omitted without it)."
    )
    parser.add_argument(
        "--data", required=True, help="Edit set: KnowEdit/zsre_mend/... file or dataset id."
    )
    parser.add_argument(
        "--format", dest="data_format", help="Force the data reader (detected when unset)."
    )
    parser.add_argument("--limit", type=int, help="Evaluate the first N records only.")
    parser.add_argument(
        "--skip-invalid", action="store_true", help="Drop invalid records instead of failing."
    )
    parser.add_argument(
        "--fluency", action="store_true", help="Also compute Fluency (sampled generations; slower)."
    )
    parser.add_argument(
        "--fluency-seed",
        type=int,
        default=0,
        help="Seed of the fluency samples (record i uses seed+i).",
    )
    parser.add_argument(
        "--prompt-format",
        choices=("plain", "chat"),
        default="plain",
        help="How prompt and answer are joined; use the format the model was edited with.",
    )
    parser.add_argument(
        "--batch-size", type=int, default=32, help="Teacher-forced evaluation batch size."
    )
    add_model_arguments(parser, "evaluate")
    parser.add_argument("--out", required=True, help="Output JSON file.")


def run(args: argparse.Namespace) -> int:
    """Load data and models, evaluate, write the JSON report."""
    from mm4ke_ray.data import load_edit_records
    from mm4ke_ray.evaluate.edit_metrics import EditEvaluator
    from mm4ke_ray.modeling import load_model, load_tokenizer

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    out = Path(args.out)
    if out.is_dir():
        raise UserError(
            f"--out {out} is a directory; give a file name such as {out / 'metrics.json'}"
        )
    device = resolve_device(args.device)
    dataset = load_edit_records(
        args.data, limit=args.limit, skip_invalid=args.skip_invalid, fmt=args.data_format
    )
    tokenizer = load_tokenizer(args.model, trust_remote_code=args.trust_remote_code)
    evaluator = EditEvaluator(
        tokenizer, dataset.records, prompt_format=args.prompt_format, batch_size=args.batch_size
    )
    load = dict(dtype=args.dtype, device=device, trust_remote_code=args.trust_remote_code)

    notes, reference = [], None
    if args.base:
        # One model in memory at a time: the base's locality predictions are all we keep of it.
        base = load_model(args.base, **load)
        reference = evaluator.base_predictions(base)
        del base
    else:
        notes.append(
            "locality omitted: it compares against the base model's predictions; pass --base"
        )
    model = load_model(args.model, **load)
    metrics = evaluator.evaluate(
        model, reference, fluency=args.fluency, fluency_seed=args.fluency_seed
    )

    report = {
        "metrics": metrics.as_dict(),
        "units": {
            "edit_succ": "%",
            "generalization": "%",
            "portability": "%",
            "locality": "%",
            "fluency": "n-gram entropy x 100",
        },
        "model": args.model,
        "base": args.base,
        "data": dataset.source,
        "data_format": dataset.format,
        "n_records": len(dataset.records),
        "skipped_records": dataset.skipped,
        "protocol": PROTOCOL,
        "protocol_note": PROTOCOL_NOTE,
        "prompt_format": args.prompt_format,
        "definitions": "EasyEdit/KnowEdit teacher-forced token accuracy; locality = agreement with the base model's argmax",
        "fluency_seed": args.fluency_seed if args.fluency else None,
        "notes": notes,
        "per_record": metrics.per_record,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    shown = ", ".join(
        f"{k} {v:.2f}" if v is not None else f"{k} n/a" for k, v in metrics.as_dict().items()
    )
    print(f"{len(dataset.records)} records: {shown} -> {out}")
    return 0
