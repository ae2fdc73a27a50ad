"""`mm4ke-ray merge`: write base + (1 − α) · sparsify(Δ) as a Hugging Face model directory."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from mm4ke_ray.commands._common import (
    add_model_arguments,
    add_out_dir_arguments,
    check_out_dir,
    model_options,
    seed,
)
from mm4ke_ray.config import MergeConfig

_METHOD = MergeConfig.model_fields["method"]

NAME = "merge"
HELP = (
    "Merge a base model with an R-SFT delta (or a fine-tuned model) and save it as an HF directory."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True, help="base model: local directory or hub id")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--delta",
        metavar="DIR",
        help="R-SFT delta (directory holding delta.safetensors, or the file)",
    )
    source.add_argument(
        "--sft",
        metavar="PATH",
        help="fine-tuned model with the base's architecture; Δ = every tensor that differs",
    )
    parser.add_argument(
        "--alpha",
        type=float,
        required=True,
        help="base model's weight α in [0, 1); the delta is scaled by 1 − α",
    )
    parser.add_argument(
        "--sparsity",
        type=float,
        required=True,
        help="fraction of each delta tensor set to zero, in [0, 1); density = 1 − sparsity",
    )
    parser.add_argument(
        "--method",
        default=_METHOD.default,
        # From the config's field, not the registry: --help answers without importing torch;
        # an unknown name is refused by the registry (with the known ones) before any loading.
        help=f"{_METHOD.description.lower()} (default: {_METHOD.default}, the paper's Top_p)",
    )
    parser.add_argument(
        "--seed", type=seed, default=0, help="seed for random sparsifiers such as dare (default: 0)"
    )
    add_model_arguments(parser, "merge and save")
    add_out_dir_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from mm4ke_ray.export.atomic import clean_leftovers, new_staging_dir, publish, publish_into
    from mm4ke_ray.merge.apply import validate_merge_params
    from mm4ke_ray.merge.merged_model import MERGE_INFO_FILE
    from mm4ke_ray.merge.methods import get_sparsifier

    # Cheap checks first: no model is loaded for a typo.
    validate_merge_params(args.alpha, args.sparsity)
    get_sparsifier(args.method)
    out = Path(args.out)
    check_out_dir(out, args.force)
    clean_leftovers(out)
    # Written in a hidden sibling, then renamed: a killed merge leaves no half-written --out.
    stage = new_staging_dir(out)
    try:
        info = _write(args, stage)
        if out.is_dir() and any(out.iterdir()):  # --force into a non-empty directory: keep its
            publish_into(stage, out, last=MERGE_INFO_FILE)  # other files, the record last
        else:
            if out.is_dir():
                out.rmdir()
            publish(stage, out)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    print(
        f"merged {info['base']} + {args.delta or args.sft}: {len(info['tensors'])} tensor(s), "
        f"alpha={info['alpha']:g} (delta scaled by {info['delta_scale']:g}), "
        f"sparsity={info['sparsity']:g} (density {info['density']:g}), method={info['method']}, "
        f"kept {info['kept_entries']:,} of {info['total_entries']:,} delta entries"
    )
    print(f"wrote {out} (load with AutoModelForCausalLM.from_pretrained)")
    return 0


def _write(args: argparse.Namespace, stage: Path) -> dict:
    """Write the merge into `stage`: tensor by tensor for a delta (no model built), by building
    both models for --sft (its delta is every tensor that differs)."""
    # What both ways share: the merge recipe and how the models load.
    merge = dict(alpha=args.alpha, sparsity=args.sparsity, method=args.method, seed=args.seed, **model_options(args))
    if args.sft is None:
        from mm4ke_ray.export.merged_weights import write_merged

        return write_merged(args.base, stage, delta_dir=args.delta, **merge).info
    from mm4ke_ray.merge.merged_model import build_merged, save_merged

    result = build_merged(args.base, sft=args.sft, **merge)
    save_merged(result.model, args.base, stage, result.info)
    return result.info
