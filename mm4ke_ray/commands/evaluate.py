"""`mm4ke-ray evaluate`: edit metrics of one model on an edit set, written as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mm4ke_ray.commands._common import add_model_arguments, model_options, seed
from mm4ke_ray.commands.sweep import add_verbose_argument
from mm4ke_ray.errors import UserError
from mm4ke_ray.evaluate.definitions import AGGREGATION, DEFAULT_MAX_NEW_TOKENS, EDIT_DEFINITIONS
from mm4ke_ray.evaluate.stop_rules import STOP_RULE_TEXT, STOP_RULES
from mm4ke_ray.quiet import set_verbose

NAME = "evaluate"
HELP = "Score a model on an edit set: Edit Succ., Generalization, Portability, Locality, Fluency (EasyEdit definitions)."
MODES = ("teacher-forced", "generation", "both")

PROTOCOL = "sequential"
PROTOCOL_NOTE = (
    "metrics of the given model on every record; under the paper's protocol the model was edited on all "
    "records first (sequential editing, evaluate after all edits)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `mm4ke-ray evaluate`."""
    parser.add_argument(
        "--model", required=True, help="Edited model: local Hugging Face directory or hub id ('demo': the demo's model)."
    )
    parser.add_argument(
        "--base", help="Unedited base model; needed for Locality (omitted without it; 'demo': the demo's model)."
    )
    parser.add_argument(
        "--data", required=True, help="Edit set: KnowEdit/zsre_mend/... file or dataset id ('demo': the demo's edits)."
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
        type=seed,
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
        "--batch-size", type=int, default=32, help="Evaluation batch size (both modes; default: %(default)s)."
    )
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="teacher-forced",
        help="teacher-forced: EasyEdit's token accuracy (key 'metrics'); generation: the model "
        "generates each answer greedily (key 'generation_metrics'); both. Default: %(default)s.",
    )
    parser.add_argument(
        "--match",
        choices=("equals", "starts_with", "contains"),
        default="equals",
        help="Generation mode: how the normalised answer must match the normalised target; equals is "
        "WILD's exact match, starts_with and contains are lenient (recorded in the JSON; default: %(default)s).",
    )
    parser.add_argument(
        "--stop",
        choices=STOP_RULES,
        default="wild",
        help="Generation mode: where an answer ends besides EOS/end of turn; wild: a sentence-ending "
        "'.' (not after Dr., St., initials; not inside 3.5) or a newline; newline: a newline only "
        "(default: %(default)s).",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=DEFAULT_MAX_NEW_TOKENS,
        help="Generation mode: new tokens an answer may take (cut at the stop; default: %(default)s).",
    )
    parser.add_argument(
        "--extra-new-tokens",
        type=int,
        default=None,
        help="Generation mode, the pre-WILD bound (off by default): also cap each answer at the "
        "target's token count + this.",
    )
    add_model_arguments(parser, "evaluate")
    parser.add_argument("--out", required=True, help="Output JSON file (new, unless --force).")
    parser.add_argument("--force", action="store_true", help="Replace an existing --out file.")
    add_verbose_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Load data and models, evaluate, write the JSON report."""
    set_verbose(args.verbose)  # before transformers and tqdm load: they read it at import
    from mm4ke_ray.data import load_edit_records
    from mm4ke_ray.evaluate.edit_metrics import EditEvaluator
    from mm4ke_ray.evaluate.generation import GenerationEvaluator
    from mm4ke_ray.modeling import load_model, load_tokenizer

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.extra_new_tokens is not None and args.extra_new_tokens < 0:
        raise UserError(f"--extra-new-tokens must be >= 0, got {args.extra_new_tokens}")
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    forced, generation = args.mode != "generation", args.mode != "teacher-forced"
    if args.fluency and not forced:
        raise UserError("--fluency is reported with the teacher-forced metrics: use --mode both")
    out = Path(args.out)
    if out.is_dir():
        raise UserError(
            f"--out {out} is a directory; give a file name such as {out / 'metrics.json'}"
        )
    if out.exists() and not args.force:  # checked before any model loads, like every other writer
        raise UserError(f"--out {out} exists; give a new file name, or pass --force to replace it")
    from mm4ke_ray.demo.resolve import resolve_demo_argument

    # 'demo' names the demo's built assets, as in a sweep config (issue 26 §4)
    args.model, args.base = (resolve_demo_argument(m, "model") for m in (args.model, args.base))
    args.data = resolve_demo_argument(args.data, "data")
    load = model_options(args)
    dataset = load_edit_records(
        args.data, limit=args.limit, skip_invalid=args.skip_invalid, fmt=args.data_format
    )
    tokenizer = load_tokenizer(args.model, trust_remote_code=args.trust_remote_code)
    evaluator = (
        EditEvaluator(
            tokenizer, dataset.records, prompt_format=args.prompt_format, batch_size=args.batch_size
        )
        if forced
        else None
    )
    gen_evaluator = None
    if generation:
        gen_evaluator = GenerationEvaluator(
            tokenizer,
            dataset.records,
            prompt_format=args.prompt_format,
            batch_size=args.batch_size,
            match=args.match,
            stop=args.stop,
            max_new_tokens=args.max_new_tokens,
            extra_new_tokens=args.extra_new_tokens,
        )

    notes, reference, gen_reference = [], None, None
    if args.base:
        # One model in memory at a time: the base's locality predictions are all we keep of it.
        base = load_model(args.base, **load)
        reference = evaluator.base_predictions(base) if forced else None
        gen_reference = gen_evaluator.base_generations(base) if generation else None
        del base
    else:
        notes.append(
            "locality omitted: it compares against the base model's predictions; pass --base"
        )
    model = load_model(args.model, **load)
    metrics = gen_metrics = None
    if forced:
        metrics = evaluator.evaluate(
            model, reference, fluency=args.fluency, fluency_seed=args.fluency_seed
        )
    if generation:
        gen_metrics = gen_evaluator.evaluate(model, gen_reference)

    report = {
        "mode": args.mode,
        # Flat names: the five aggregates, then per-kind means such as "portability.Reasoning".
        "metrics": metrics.flat() if metrics is not None else None,
        "generation_metrics": gen_metrics.flat() if gen_metrics is not None else None,
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
        "aggregation": AGGREGATION,
        "edit_definitions": EDIT_DEFINITIONS,
        "generation": {
            **gen_evaluator.rules(),
            "stop_rule": STOP_RULE_TEXT[args.stop],
            "definitions": GENERATION_DEFINITIONS,
        }
        if generation
        else None,
        "fluency_seed": args.fluency_seed if args.fluency else None,
        "notes": notes,
        "per_record": _per_record(metrics, gen_metrics),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    for label, family in (("teacher-forced", metrics), (f"generated (WILD, {args.match}, stop {args.stop})", gen_metrics)):
        if family is not None:
            shown = ", ".join(
                f"{k} {v:.2f}" if v is not None else f"{k} n/a" for k, v in family.as_dict().items()
            )
            print(f"{len(dataset.records)} records, {label}: {shown} -> {out}")
    return 0


GENERATION_DEFINITIONS = (
    "greedy generation from the training prompt format (chat: the template with its default system "
    "prompt), stopped at end-of-sequence/end-of-turn, the stop rule ('stop'), or max_new_tokens (and "
    "with extra_new_tokens the target's token count + that); a hit when the normalised answer (NFKC, "
    "lower case, punctuation/symbols and articles a/an/the removed, words) matches the normalised "
    "target by 'match'; locality = the answer equals the base model's answer, normalised alike"
)


def _per_record(metrics, gen_metrics) -> list[dict]:
    """Teacher-forced rows, each with its generation results under "generation" when run."""
    if gen_metrics is None:
        return metrics.per_record
    head = ("index", "source", "prompt", "target_new")
    rows = metrics.per_record if metrics else [
        {k: row[k] for k in head} for row in gen_metrics.per_record
    ]
    return [
        {**row, "generation": {k: v for k, v in gen.items() if k not in head}}
        for row, gen in zip(rows, gen_metrics.per_record, strict=True)
    ]
