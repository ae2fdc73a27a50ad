"""Resuming a killed stream from the rounds its folder kept.

A stream folder keeps every finished round: its delta (`roundNN/`, saved before the merge) and
its manifest entry (`stream.json`, written after the round's evaluation). A resume re-adds the
kept rounds 1..k to the base through the rebuild's own code (`rebuild.add_rounds_`), proves the
weights equal those the stream had after round k (the manifest's digest), takes the metrics of
the base and of rounds 1..k from the manifest and goes on with round k+1. A round whose delta was
saved but whose entry was not (killed while it merged or was evaluated) is simply redone.

Only the same stream resumes (`check_same_stream`): every field that decides what a round
trains, merges or measures must equal the manifest's; where and under what name it is logged
may differ.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from mm4ke_ray.errors import UserError
from mm4ke_ray.stream.base_weights import BaseWeights
from mm4ke_ray.stream.kept import weights_digest
from mm4ke_ray.stream.rebuild import add_rounds_
from mm4ke_ray.stream.rounds import Stream
from mm4ke_ray.stream.settings import RoundSettings

# Manifest fields (the `info` of `run_stream_config`, and the round count) that decide the rounds.
INFO_FIELDS = ("base_model", "dtype", "device", "trust_remote_code", "prompt_format", "edits", "split", "sources",
               "config", "n_rounds")
# Config fields that change no round's weights or metrics: the names and places of what is logged
# and stored, and what only a sweep reads (its sampler and budget, Ray's resources and retries,
# the extra merge candidates per trial). Every other config field must match.
CONFIG_LEFT_OUT = ("config.name", "config.tracking", "config.storage_path", "config.resources", "config.max_failures",
                   "config.search.num_trials", "config.search.sampler", "config.search.startup_trials",
                   "config.merge.extra_candidates", "config.merge.candidates", "config.merge.grid")
_SHOWN = 80  # characters of a differing value in the error
_LISTED = 6  # differing fields named in the error


class OtherStreamError(UserError):
    """The folder holds a manifest of a stream that differs from the one asked to resume."""


class KeptRoundsMismatchError(UserError):
    """The kept rounds, re-added to the base, do not give the weights the stream recorded."""


def _flat(value, name: str) -> dict:
    """Dotted name → leaf value (lists stay whole), so a refusal names the one field that differs."""
    if isinstance(value, dict) and value:
        out = {}
        for key, inner in value.items():
            out.update(_flat(inner, f"{name}.{key}"))
        return out
    return {name: value}


def _as_json(value):
    return json.loads(json.dumps(value, default=str))  # as the manifest stored it: tuples are lists


def _left_out(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in CONFIG_LEFT_OUT)


def _round_fields(entry: dict) -> dict:
    return {k: entry[k] for k in ("n_edits", "source", "merge", "rsft")}


def stream_fields(head: dict, rounds: list[dict]) -> dict:
    """The fields (dotted name → JSON value) two streams must share to be one: `head`'s
    `INFO_FIELDS` (config less `CONFIG_LEFT_OUT`) and each round's edits and settings."""
    out = {}
    for key in INFO_FIELDS:
        out.update(_flat(_as_json(head.get(key)), key))
    for entry in rounds:
        out.update(_flat(_as_json(_round_fields(entry)), f"round{entry['round']}"))
    return {k: v for k, v in out.items() if not _left_out(k)}


def planned_rounds(stream: Stream, settings: list[RoundSettings], upto: int) -> list[dict]:
    """Rounds 1..upto as this stream would record them (the fields `stream_fields` compares)."""
    return [{"round": t, "n_edits": len(stream.rounds[t - 1]), "source": stream.sources[t - 1],
             "merge": settings[t - 1].merge_record(), "rsft": settings[t - 1].rsft.model_dump()}
            for t in range(1, min(upto, len(stream.rounds)) + 1)]


def _kept_rounds(done: dict) -> list[dict]:
    """The manifest's round entries as `stream_fields` compares them (R-SFT: its config only)."""
    return [{**entry, "rsft": entry.get("rsft", {}).get("config")} for entry in done.get("rounds", [])]


def _show(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "…"


def check_same_stream(done: dict, info: dict, stream: Stream, settings: list[RoundSettings], out: str | Path) -> None:
    """OtherStreamError naming every field where the stream kept in `out` (its manifest `done`)
    differs from this one (`info` as the manifest would hold it, its rounds and settings)."""
    k = len(done.get("rounds", []))
    if [e.get("round") for e in done.get("rounds", [])] != list(range(1, k + 1)):
        raise UserError(f"{out}: the manifest's rounds are not 1..{k} in order; was it changed by hand?")
    here = stream_fields({**info, "n_rounds": len(stream.rounds)}, planned_rounds(stream, settings, k))
    there = stream_fields(done, _kept_rounds(done))
    diff = [(f, here.get(f), there.get(f)) for f in sorted(set(here) | set(there)) if here.get(f) != there.get(f)]
    if diff:
        lines = "; ".join(f"{f} is {_show(a)} here but {_show(b)} there" for f, a, b in diff[:_LISTED])
        lines += f"; and {len(diff) - _LISTED} more" if len(diff) > _LISTED else ""
        raise OtherStreamError(f"cannot resume: '{out}' holds another stream ({len(diff)} field(s) differ: {lines}); "
                               "use another --out, or --force to start this stream over there (its kept rounds are "
                               "then lost)")


def restore_kept_rounds_(model: nn.Module, out: str | Path, done: dict, base: BaseWeights | None = None) -> set[str]:
    """Add the kept rounds 1..k (`done`'s entries) to `model` (the base, changed in place) and
    check its weights against the digest recorded after round k; the tensors they changed.
    `base`: see `kept.merge_round_`."""
    rounds = done.get("rounds", [])
    touched = add_rounds_(model, out, len(rounds), base)
    if rounds and (digest := weights_digest(model, touched)) != rounds[-1]["weights_sha256"]:
        k = len(rounds)
        raise KeptRoundsMismatchError(
            f"cannot resume '{out}': its kept rounds 1..{k} re-added to the base give weights sha256 {digest[:12]}, "
            f"not the {rounds[-1]['weights_sha256'][:12]} the stream had after round {k}: a kept delta "
            "(roundNN/delta.safetensors) or the base model changed since; use another --out, or --force to start "
            "over there")
    return touched
