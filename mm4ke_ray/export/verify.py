"""Checks on a written export: untouched weights equal the base bit for bit, the reloaded model
scores what MLflow recorded, and the checksums file matches the files.

Re-evaluation runs the sweep's own `CandidateEvaluator` on the reloaded directory, with the base
model's reference (locality predictions, general scores) computed exactly as the sweep did, so
every recorded metric can be compared one to one.

Tolerance: each re-evaluated metric must be within `DEFAULT_TOLERANCE` (absolute, in the metric's
own unit: percent for edit metrics, 0..1 for scores) of the recorded value. The rebuilt weights
are bit-identical to the in-place merge the sweep evaluated, so on the same device and dtype the
numbers are identical; the bound only absorbs float summation-order noise. Exports evaluated on
another device than the sweep (GPU sweep, CPU export) may need a looser `--tolerance`: one flipped
argmax token moves a percent metric by 100 / (answer tokens).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from safetensors import safe_open

from mm4ke_ray.digest import sha256_file

CHECKSUM_FILE = "checksums.sha256"
# Timings and counters differ run to run; everything else the candidate run recorded is compared.
_NOT_COMPARED = (
    "eval_seconds",
    "merge_seconds",
    "rsft_seconds",
    "rsft_updates",
    "rsft_wall_seconds",
)
# Successive halving's bookkeeping: evaluation compute over all of a candidate's rungs, its lower
# rungs' own scores and `fidelity.*` (rung reached, rungs read back, front points seen): how the
# sweep got there, not what the exported model scores in full.
_NOT_COMPARED_PATTERN = re.compile(r"^(compute|rung\d+|fidelity)\.")


class ExportVerificationError(RuntimeError):
    """The exported directory does not reproduce the recorded candidate; do not ship it."""


def _bytes_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def check_weights(out: Path, base_model, update: dict[str, torch.Tensor]) -> dict:
    """Compare the saved tensors with the base model: only `update`'s tensors may differ, and those
    must equal cast(float32(base) + update) bit for bit. Returns a summary; raises on any mismatch."""
    base = base_model.state_dict()
    files = sorted(out.glob("*.safetensors"))
    if not files:
        raise ExportVerificationError(f"no *.safetensors weights were written to {out}")
    seen, problems = set(), []
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                seen.add(name)
                saved = f.get_tensor(name)
                if name not in base:
                    problems.append(f"{file.name}: tensor {name!r} is not in the base model")
                    continue
                ref = base[name].detach().cpu()
                if name in update:
                    work = torch.promote_types(ref.dtype, torch.float32)
                    ref = (ref.to(work) + update[name].cpu().to(work)).to(ref.dtype)
                    if bool(update[name].count_nonzero()) and _bytes_equal(
                        saved, base[name].detach().cpu()
                    ):
                        problems.append(
                            f"edited tensor {name!r} equals the base: the merge did not reach the file"
                        )
                if not _bytes_equal(saved, ref):
                    what = "edited tensor" if name in update else "tensor outside the delta"
                    problems.append(f"{what} {name!r} differs from the expected bits")
    missing = sorted(set(update) - seen)
    if missing:
        problems.append(f"edited tensor(s) missing from the saved weights: {missing}")
    if problems:
        raise ExportVerificationError("weights check failed:\n  " + "\n  ".join(problems[:20]))
    return {"tensors": len(seen), "edited": sorted(update), "unchanged": len(seen) - len(update)}


def compare_metrics(recorded: dict, measured: dict, tolerance: float) -> tuple[dict, list[str]]:
    """Per metric {recorded, measured, abs_diff}, and the problems (missing or beyond `tolerance`)."""
    keys = sorted(k for k, v in recorded.items()
                  if isinstance(v, float) and k not in _NOT_COMPARED and not _NOT_COMPARED_PATTERN.match(k))
    table, problems = {}, []
    for key in keys:
        got = measured.get(key)
        want = recorded[key]
        if got is None:
            problems.append(
                f"{key}: recorded {want:.10g}, but the re-evaluation did not produce it"
            )
            continue
        diff = abs(got - want) if math.isfinite(got) else math.inf
        table[key] = {"recorded": want, "measured": got, "abs_diff": diff}
        if not diff <= tolerance:
            problems.append(
                f"{key}: recorded {want:.10g}, re-evaluated {got:.10g} (|diff| {diff:.3g} > tolerance {tolerance:g})"
            )
    return table, problems


def write_checksums(out: Path) -> Path:
    """`checksums.sha256` over every file in `out` (recursive), in `sha256sum -c` format."""
    lines = [
        f"{sha256_file(p)}  {p.relative_to(out).as_posix()}"
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != CHECKSUM_FILE
    ]
    path = out / CHECKSUM_FILE
    path.write_text("\n".join(lines) + "\n")
    return path


def verify_checksums(out: str | Path) -> list[str]:
    """Problems found checking `out` against its checksums file (empty list: all files verify)."""
    out = Path(out)
    path = out / CHECKSUM_FILE
    if not path.is_file():
        return [f"{path} does not exist"]
    problems, listed = [], set()
    for n, line in enumerate(path.read_text().splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64:
            problems.append(f"{CHECKSUM_FILE} line {n} is not '<sha256>  <file>'")
            continue
        listed.add(name)
        file = out / name
        if not file.is_file():
            problems.append(f"{name}: listed but missing")
        elif sha256_file(file) != digest:
            problems.append(f"{name}: checksum mismatch")
    extra = sorted(
        p.relative_to(out).as_posix()
        for p in out.rglob("*")
        if p.is_file() and p.name != CHECKSUM_FILE
    )
    problems += [f"{name}: present but not listed" for name in extra if name not in listed]
    return problems
