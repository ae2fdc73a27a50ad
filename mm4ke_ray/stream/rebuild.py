"""Round t of a stream, rebuilt from the base model and the kept deltas of rounds 1..t.

Each round is added with its own merge settings through `kept.merge_round_`, the code the
stream itself ran, in round order; the result's weights digest is compared with the one the
stream recorded for round t, so a rebuild that differs in a single bit is refused.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from mm4ke_ray.errors import UserError
from mm4ke_ray.stream.base_weights import BaseWeights
from mm4ke_ray.stream.kept import load_round, merge_round_, read_manifest, weights_digest


class RebuildMismatchError(UserError):
    """The rebuilt weights differ from those the stream had after that round."""


def check_round(manifest: dict, t: int) -> dict:
    """The manifest's entry of round t; UserError naming the rounds there are."""
    rounds = manifest.get("rounds", [])
    if not rounds:
        raise UserError(f"this stream has no finished round yet (of {manifest.get('n_rounds', '?')}): it stopped "
                        "before round 1 ended; go on with `mm4ke-ray stream CONFIG --out <this folder> --resume`")
    if not 1 <= t <= len(rounds):
        raise UserError(f"round {t} is not in this stream: it has rounds 1..{len(rounds)}")
    return rounds[t - 1]


def add_rounds_(model: nn.Module, root: str | Path, t: int, base: BaseWeights | None = None) -> set[str]:
    """Add the kept rounds 1..t of the stream in `root` to `model`, in order, each with its own
    merge settings; the names of the tensors they changed (what `weights_digest` covers).
    `base`: see `merge_round_`."""
    touched: set[str] = set()
    for s in range(1, t + 1):
        delta, merge = load_round(root, s)
        merge_round_(model, delta, merge["alpha"], merge["sparsity"], merge["method"], merge["seed"], base)
        touched.update(delta)
    return touched


def rebuild_round_(model: nn.Module, root: str | Path, t: int, verify: bool = True) -> dict:
    """Add rounds 1..t of the stream in `root` to `model` (the base, changed in place) and, with
    `verify`, check its weights against the digest recorded for round t. Returns round t's entry."""
    manifest = read_manifest(root)
    entry = check_round(manifest, t)
    touched = add_rounds_(model, root, t)
    if verify:
        digest = weights_digest(model, touched)
        if digest != entry["weights_sha256"]:
            raise RebuildMismatchError(
                f"round {t} rebuilt from the base and {t} kept delta(s) does not match the stream's model after "
                f"round {t} (weights sha256 {digest[:12]} != recorded {entry['weights_sha256'][:12]}); rebuild on "
                f"the device and dtype the stream ran on ({manifest.get('device')}, {manifest.get('dtype')})")
    return entry
