"""Lifelong editing in rounds on one resident model, Ray-free.

    θ_0 = base
    for t in 1..T:
      Δ_t = R-SFT(θ_{t-1}, round t's edits)          # run_rsft gives the model back unchanged
      θ_t = θ_{t-1} + (1 − α_t) · sparsify_t(Δ_t)    # merged in place and kept: the next base
      keep Δ_t and (α_t, sparsity_t, method, seed) on disk; evaluate θ_t

Each round's R-SFT trains from the model merged after the round before, so what a round
learns is measured against the knowledge the stream already holds. The model's weights after
round t are fingerprinted (`weights_digest` of every tensor some round changed) so that
`rebuild.rebuild_round` can prove it made the same model from the base and the kept deltas,
and a killed stream can go on from its kept rounds (`resume_rounds`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from mm4ke_ray.errors import UserError
from mm4ke_ray.evaluate.candidate import delta_first_layer
from mm4ke_ray.rsft.trainer import DivergedError, run_rsft
from mm4ke_ray.stream.base_weights import BaseWeights
from mm4ke_ray.stream.evaluation import StreamEvaluator
from mm4ke_ray.stream.kept import merge_round_, save_round, weights_digest, write_manifest
from mm4ke_ray.stream.resume_rounds import check_same_stream, restore_kept_rounds_
from mm4ke_ray.stream.rounds import Stream
from mm4ke_ray.stream.settings import RoundSettings

# Metrics a whole stream is summarised by (prefixes and names).
SUMMARIZED = ("seen.", "edit_score", "general_score", "combined_score", "locality", "gen.locality")
STREAM_PROTOCOL = "stream: R-SFT from the previous round's merged model, merged in place per round"


@dataclass
class RoundResult:
    """One round: its edits, settings, R-SFT summary, weights' digest and metrics after it."""

    round: int
    n_edits: int
    source: str
    merge: dict
    rsft: dict
    digest: str
    metrics: dict
    seconds: dict

    def as_json(self) -> dict:
        return {"round": self.round, "n_edits": self.n_edits, "source": self.source, "merge": self.merge,
                "rsft": self.rsft, "weights_sha256": self.digest, "metrics": self.metrics, "seconds": self.seconds,
                "delta": f"round{self.round:02d}/delta.safetensors"}

    @classmethod
    def from_json(cls, entry: dict) -> RoundResult:
        """A kept round back from its manifest entry (`as_json`)."""
        return cls(entry["round"], entry["n_edits"], entry["source"], entry["merge"], entry["rsft"],
                   entry["weights_sha256"], entry["metrics"], entry["seconds"])


@dataclass
class StreamResult:
    base_metrics: dict
    rounds: list[RoundResult] = field(default_factory=list)
    touched: list[str] = field(default_factory=list)  # every tensor some round changed
    resumed_after: int | None = None  # the kept rounds a resume went on from (None: ran from the base)

    @classmethod
    def from_manifest(cls, done: dict) -> StreamResult:
        """The result a stream's manifest records (`resumed_after`: its kept rounds)."""
        rounds = [RoundResult.from_json(e) for e in done.get("rounds", [])]
        return cls(done["base_metrics"], rounds, sorted(done.get("touched", [])), len(rounds))

    def summary(self) -> dict[str, float]:
        """Per curve metric measured in every round: `final.<m>` (after the last round) and
        `mean.<m>` (the mean over rounds 1..T, the area under the retention curve per round):
        the two ways to score a whole stream (issue 29 §2)."""
        out = {}
        for key in self.rounds[0].metrics if self.rounds else ():
            if not key.startswith(SUMMARIZED) and key not in SUMMARIZED:
                continue
            values = [r.metrics.get(key) for r in self.rounds]
            if all(isinstance(v, int | float) for v in values):
                out[f"final.{key}"], out[f"mean.{key}"] = values[-1], sum(values) / len(values)
        return out

    def curve_rows(self) -> list[dict]:
        """The metrics after rounds 0 (the base) .. T, one dict per round."""
        return [self.base_metrics] + [r.metrics for r in self.rounds]

    def curve(self, metric: str) -> list[float | None]:
        """`metric` after rounds 0 (the base) .. T; None where it was not measured."""
        return [row.get(metric) for row in self.curve_rows()]


def run_stream(model: nn.Module, tokenizer, stream: Stream, settings: list[RoundSettings], out: str | Path, *,
               evaluator: StreamEvaluator | None = None, info: dict | None = None,
               on_round: Callable[[int, dict], None] | None = None, done: dict | None = None,
               base: BaseWeights | None = None) -> StreamResult:
    """Run every round of `stream` on `model` (changed in place: it ends as round T's model),
    keeping each round's delta in `out/roundNN/` and the manifest in `out/stream.json`.

    `evaluator` (built on the base `model` before this call) scores the base as round 0 and the
    model after every round; `on_round(t, metrics)` is called after each (0 for the base).
    `info` goes into the manifest as it is (base model, dtype, data sources: what a rebuild needs).

    `done`: the manifest `out` holds, to resume that stream (`resume_rounds`): refused unless it is this
    stream; its kept rounds 1..k are re-added to the base `model` and checked against the digest
    recorded after round k, `on_round` sees their recorded metrics (0..k: the model is already
    round k's then), and the rounds go on from k+1; the base is not evaluated again.

    `base`, if given, copies each tensor's base value before the stream first changes it, so that
    the caller can put the base back (`BaseWeights.restore_`) and stream again on the same model.
    """
    if len(settings) != len(stream.rounds):
        raise ValueError(f"{len(settings)} round settings for {len(stream.rounds)} rounds")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {**(info or {}), "protocol": STREAM_PROTOCOL, "n_rounds": len(stream.rounds), "base_metrics": {},
                "rounds": []}
    if done is None:
        result, touched = StreamResult(evaluator.evaluate(0) if evaluator else {}), set()
        manifest["base_metrics"] = result.base_metrics
        write_manifest(out, manifest)  # the base's metrics are kept: a resume does not measure them again
        if on_round:
            on_round(0, result.base_metrics)
    else:
        result, touched = _resume(model, out, done, manifest, stream, settings, info or {}, base)
        if on_round:
            for t, metrics in enumerate(result.curve_rows()):
                on_round(t, metrics)
    for t, (records, s) in enumerate(zip(stream.rounds, settings, strict=True), 1):
        if t <= len(result.rounds):  # kept, restored by the resume
            continue
        start = time.perf_counter()
        try:
            trained = run_rsft(model, tokenizer, list(records), s.rsft)
        except DivergedError as exc:  # the rounds before stay kept and in the manifest
            raise UserError(f"stream round {t} of {len(stream.rounds)}: {exc}; rounds 1..{t - 1} are kept in {out}") from exc
        rsft_s = time.perf_counter() - start
        save_round(out, t, trained.delta, s, trained.as_json())
        merge_round_(model, trained.delta, s.alpha, s.sparsity, s.method, s.seed, base)
        touched.update(trained.delta)
        digest = weights_digest(model, touched)
        eval_start = time.perf_counter()
        metrics = evaluator.evaluate(t, first_layer=delta_first_layer(model, touched)) if evaluator else {}
        seconds = {"rsft": rsft_s, "eval": time.perf_counter() - eval_start}
        summary = {"updates": trained.updates, "layers": trained.layers, "config": s.rsft.model_dump()}
        rnd = RoundResult(t, len(records), stream.sources[t - 1], s.merge_record(), summary, digest, metrics, seconds)
        result.rounds.append(rnd)
        result.touched = sorted(touched)
        manifest["rounds"].append(rnd.as_json())
        manifest["touched"] = result.touched
        manifest["summary"] = result.summary()
        write_manifest(out, manifest)
        if on_round:
            on_round(t, metrics)
    return result


def _resume(model: nn.Module, out: Path, done: dict, manifest: dict, stream: Stream, settings: list[RoundSettings],
            info: dict, base: BaseWeights | None) -> tuple[StreamResult, set[str]]:
    """The kept rounds of `done` on `model` and in `result` and `manifest` (changed in place)."""
    check_same_stream(done, info, stream, settings, out)
    touched = restore_kept_rounds_(model, out, done, base)
    result = StreamResult.from_manifest(done)
    result.touched, k = sorted(touched), len(done["rounds"])
    manifest.update(base_metrics=result.base_metrics, rounds=list(done["rounds"]), touched=result.touched,
                    summary=result.summary(), resumed_after=[*done.get("resumed_after", []), k])
    return result, touched
