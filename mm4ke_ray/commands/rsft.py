"""`mm4ke-ray rsft`: run R-SFT (Algorithm 1) on an edit set and save the delta of the trained MLP."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mm4ke_ray.commands._common import (
    add_model_arguments,
    add_out_dir_arguments,
    check_out_dir,
    model_options,
    seed,
)
from mm4ke_ray.errors import ConfigError
from mm4ke_ray.rsft.config import RSFTConfig

NAME = "rsft"
HELP = "Train one layer's MLP on an edit set with R-SFT and save the delta (θ_sft − θ_base)."


def _layer(text: str) -> int | list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a block index like 5 or a list like 5,6, got {text!r}"
        ) from None
    return values[0] if len(values) == 1 else values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    fields = RSFTConfig.model_fields

    def default(name: str) -> str:
        return f"{fields[name].description} Default: {fields[name].default}."

    parser.add_argument("--model", required=True, help="base model: local directory or hub id")
    parser.add_argument(
        "--data",
        required=True,
        metavar="FILE",
        help="edit set (KnowEdit JSON/JSONL, zsre_mend, ...)",
    )
    parser.add_argument(  # the data reader's errors name --format: every command that reads edits has it
        "--format", dest="data_format", help="force the data reader (detected when unset)"
    )
    parser.add_argument(
        "--limit", type=int, default=None, metavar="N", help="use the first N valid records"
    )
    parser.add_argument(
        "--skip-invalid", action="store_true", help="drop invalid records instead of failing"
    )
    parser.add_argument(
        "--layer", type=_layer, default=fields["layer"].default, help=default("layer")
    )
    parser.add_argument(
        "--epochs", type=int, default=fields["epochs"].default, help=default("epochs")
    )
    parser.add_argument("--steps", type=int, default=fields["steps"].default, help=default("steps"))
    parser.add_argument("--lr", type=float, default=fields["lr"].default, help=default("lr"))
    parser.add_argument(
        "--threshold", type=float, default=fields["threshold"].default, help=default("threshold")
    )
    parser.add_argument(
        "--optimizer", choices=["adamw", "sgd"], default="adamw", help=default("optimizer")
    )
    parser.add_argument(
        "--prompt-format", choices=["plain", "chat"], default="plain", help=default("prompt_format")
    )
    parser.add_argument("--seed", type=seed, default=0, help=default("seed"))
    add_model_arguments(parser, "train")
    add_out_dir_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _config(args: argparse.Namespace) -> RSFTConfig:
    try:
        return RSFTConfig(
            layer=args.layer,
            epochs=args.epochs,
            steps=args.steps,
            lr=args.lr,
            threshold=args.threshold,
            optimizer=args.optimizer,
            prompt_format=args.prompt_format,
            seed=args.seed,
        )
    except ValidationError as exc:
        problems = [
            f"--{'.'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        ]
        raise ConfigError("rsft options", problems) from None


def _progress_bar(total: int, quiet: bool):
    """A rich progress bar fed by run_rsft's per-record callback (a no-op when quiet)."""
    if quiet:
        return None, None
    bar = Progress(
        TextColumn("R-SFT"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        transient=True,
    )
    task = bar.add_task("rsft", total=total, info="")

    def update(entry: dict) -> None:
        bar.update(
            task,
            completed=entry["done"],
            info=f"epoch {entry['epoch']} loss {entry['losses'][-1]:.3f} updates {entry['updates']}",
        )

    return bar, update


def run(args: argparse.Namespace) -> int:
    # torch and transformers load here, when the command runs, not for --help.
    from mm4ke_ray.rsft.to_folder import RSFT_LOG, rsft_to_folder

    # Cheap checks first: nothing is loaded for a typo.
    config = _config(args)
    out = Path(args.out)
    check_out_dir(out, args.force)
    load = model_options(args)
    bar, update = None, None

    def progress_bar(total: int):
        nonlocal bar, update
        bar, update = _progress_bar(total, args.quiet)
        return bar

    done = rsft_to_folder(out, model=args.model, edits=args.data, config=config, **load, limit=args.limit,
                          skip_invalid=args.skip_invalid, data_format=args.data_format, before_training=progress_bar,
                          progress=lambda entry: update(entry) if update else None)
    if done.result is None:
        print(f"mm4ke-ray rsft: {done.reason}; nothing was written", file=sys.stderr)
        return 1
    result = done.result
    print(
        f"R-SFT on {result.num_records} record(s), layer(s) {result.layers}: {result.updates} update(s) in "
        f"{result.seconds:.1f} s; {len(result.delta)} tensor(s) in the delta"
    )
    print(f"wrote {out / 'delta.safetensors'} and {out / RSFT_LOG}")
    return 0
