"""Export round t of a stream: the base plus the kept deltas of rounds 1..t, written as a
checked Hugging Face directory.

Checks, in order: the rebuilt weights' digest equals the one the stream recorded after round t
(`stream.rebuild`); the written safetensors reload bit for bit as the rebuilt model; the
reloaded model, evaluated as the stream evaluated it, reproduces round t's recorded metrics
within `tolerance`. Then checksums, and the directory is published atomically.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from mm4ke_ray.config import validate_config
from mm4ke_ray.evaluate.candidate import eval_settings
from mm4ke_ray.export.atomic import new_staging_dir, publish
from mm4ke_ray.export.verify import (
    ExportVerificationError,
    compare_metrics,
    verify_checksums,
    write_checksums,
)
from mm4ke_ray.merge.merged_model import MERGE_INFO_FILE, save_merged
from mm4ke_ray.modeling import load_model
from mm4ke_ray.stream.evaluation import STREAM_EDITS, StreamEvaluator
from mm4ke_ray.stream.kept import read_manifest
from mm4ke_ray.stream.rebuild import check_round, rebuild_round_


@dataclass
class RoundExport:
    out: Path
    recipe: dict


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def check_saved_weights(folder: Path, model) -> int:
    """Every tensor written to `folder` equals the model's bit for bit; returns how many."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    seen, problems = set(), []
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                seen.add(name)
                if name not in state or not _same_bits(f.get_tensor(name), state[name]):
                    problems.append(name)
    if not seen or problems:
        raise ExportVerificationError(f"written weights differ from the rebuilt model: {problems[:10] or 'none written'}")
    return len(seen)


def export_round(stream_dir: str | Path, t: int, out: str | Path, *, device: str = "cpu", tolerance: float = 1e-6,
                 reevaluate: bool = True, log: Callable[[str], None] = print) -> RoundExport:
    """Rebuild round `t` of the stream in `stream_dir` and write it, checked, to `out`."""
    manifest = read_manifest(stream_dir)
    entry = check_round(manifest, t)  # a round not in the stream fails before any model loads
    config = validate_config(manifest["config"], f"{stream_dir}/stream.json config")
    base = manifest["base_model"]
    evaluator = None
    if reevaluate:  # loads the base and computes its references first, as the stream did
        rounds = [r["round"] for r in manifest["rounds"] for _ in range(r["n_edits"])]
        evaluator = StreamEvaluator(eval_settings(config, device), Path(stream_dir) / STREAM_EDITS, rounds)
        model = evaluator.model
    else:
        model = load_model(base, dtype=manifest["dtype"], device=device,
                           trust_remote_code=manifest.get("trust_remote_code", False))
    rebuild_round_(model, stream_dir, t)
    log(f"rebuilt round {t} from {base} and {t} kept delta(s); weights sha256 matches the stream's")
    out = Path(out)
    stage = new_staging_dir(out)
    recipe = {"source": {"stream": str(Path(stream_dir).resolve()), "round": t, "of_rounds": manifest["n_rounds"]},
              "base_model": base, "protocol": manifest["protocol"], "rounds": manifest["rounds"][:t],
              "verification": {"weights_sha256": entry["weights_sha256"], "device": device}}
    try:
        _write_checked(stage, model, base, recipe, evaluator, entry, t, tolerance, log)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)  # nothing half-checked is left beside `out`
        raise
    publish(stage, out)
    return RoundExport(out, recipe)


def _write_checked(stage: Path, model, base: str, recipe: dict, evaluator, entry: dict, t: int, tolerance: float,
                   log: Callable[[str], None]) -> None:
    save_merged(model, base, stage)
    recipe["verification"]["tensors"] = check_saved_weights(stage, model)
    if evaluator is not None:
        measured = evaluator.evaluate(t)
        table, problems = compare_metrics(entry["metrics"], measured, tolerance)
        recipe["verification"].update(metrics=table, tolerance=tolerance, status="failed" if problems else "passed")
        if problems:
            raise ExportVerificationError(f"round {t} rebuilt does NOT reproduce the stream's metrics: {problems}")
        log(f"re-evaluated: {len(table)} metrics within {tolerance:g} of the stream's")
    (stage / MERGE_INFO_FILE).write_text(json.dumps(recipe, indent=2, default=str) + "\n")
    write_checksums(stage)
    if bad := verify_checksums(stage):
        raise ExportVerificationError(f"checksums of {stage} do not verify: {bad}")
