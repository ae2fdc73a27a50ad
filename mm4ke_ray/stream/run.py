"""A stream as `mm4ke-ray stream CONFIG` runs it: read and split the edits, resolve each round's
settings (every config problem is reported here, before a model is loaded), run the rounds on
one resident model, log every round to MLflow (step = round) and draw the retention curves;
or resume a killed run of the same stream from the rounds its folder kept."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from mm4ke_ray.config import SweepConfig
from mm4ke_ray.errors import UserError
from mm4ke_ray.evaluate.candidate import eval_settings
from mm4ke_ray.stream.curves import curve_table, draw_retention
from mm4ke_ray.stream.evaluation import StreamEvaluator, write_stream_edits
from mm4ke_ray.stream.kept import MANIFEST, read_manifest
from mm4ke_ray.stream.kept_reference import load_reference, save_reference
from mm4ke_ray.stream.protocol import StreamResult, run_stream
from mm4ke_ray.stream.resume_rounds import check_same_stream
from mm4ke_ray.stream.rounds import Stream, load_stream
from mm4ke_ray.stream.settings import RoundSettings, round_settings
from mm4ke_ray.stream.shared_base import SharedBase

PICTURE = "retention.png"
TABLE = "retention.md"


@dataclass
class StreamOutcome:
    result: StreamResult
    folder: Path
    picture: Path
    table: str
    run_id: str | None


def _summary(metrics: dict) -> str:
    """One round in a line that fits 80 columns, in the terminal table's words (`curves.SHORT`)
    and its 0..1 scale: generated first, teacher-forced in brackets."""
    parts = []
    for name, generated, forced in (("succ all", "seen.gen.edit_succ", "seen.edit_succ"),
                                    ("local", "gen.locality", "locality")):
        if generated in metrics:
            parts.append(f"{name} {metrics[generated] / 100:.3f}"
                         + (f" (tf {metrics[forced] / 100:.3f})" if forced in metrics else ""))
        elif forced in metrics:
            parts.append(f"tf.{name} {metrics[forced] / 100:.3f}")
    if "general_score" in metrics:
        parts.append(f"general {metrics['general_score']:.3f}")
    return ", ".join(parts)


def _kept_stream(folder: Path, info: dict, stream: Stream, settings: list[RoundSettings]) -> dict | None:
    """The manifest of this same stream in `folder` (None: there is none), checked before anything
    there is overwritten: a folder of another stream keeps its files."""
    if not (folder / MANIFEST).is_file():
        return None
    done = read_manifest(folder)
    check_same_stream(done, info, stream, settings, folder)
    return done


def _load(config: SweepConfig) -> Stream:
    if config.stream is None:
        raise UserError("the config has no `stream:` section: add one (e.g. stream: {rounds: 10}) to run a stream")
    return load_stream(config.stream, config.data.edits, data_format=config.data.format, limit=config.data.limit,
                       skip_invalid=config.data.skip_invalid)


def open_shared_base(config: SweepConfig, folder: str | Path, *, device: str = "cpu") -> SharedBase:
    """The base model and evaluator of `config`'s stream, loaded once for several streams of it
    that differ in their settings only (`run_stream_config(shared=...)`); its edit file in `folder`."""
    stream = _load(config)
    edits_file = write_stream_edits(stream, Path(folder))
    return SharedBase.build(eval_settings(config, device), edits_file, stream.round_of())


def run_stream_config(config: SweepConfig, folder: str | Path, *, device: str = "cpu", track: bool = True,
                      log: Callable[[str], None] = print, watch: Callable[[int, nn.Module], None] | None = None,
                      resume: bool = False, shared: SharedBase | None = None) -> StreamOutcome:
    """Run the stream `config.stream` describes into `folder` (deltas, manifest, curves).
    `watch(t, model)`, if given, sees the resident model after each round t this call runs (0: the base).

    `resume`: go on after the last round a killed run of this same stream kept in `folder` (a
    folder without `stream.json` starts from the base; one of another stream is refused, naming
    the differing fields). MLflow: a resume opens a new run, with param `resumed_after_round` = k,
    and logs the kept rounds' metrics 0..k there too (step = round), so its curves are whole; the
    killed run stays as it ended (FAILED, or RUNNING after a hard kill). A stream whose every round
    is kept loads no model: its recorded rounds are reported (and logged) as they are.

    `shared`: a base model and evaluator already loaded for this stream's records and evaluation
    settings (`shared_base.SharedBase.build`; another stream's are refused), used instead of
    loading them again; the model is put back to the base when the stream ends, even by an error.
    """
    stream = _load(config)
    settings = round_settings(config, len(stream.rounds))
    sizes = [len(r) for r in stream.rounds]
    log(f"{len(stream.rounds)} rounds of {sizes} edits; base {config.model.name}")
    folder = Path(folder)
    info = {"base_model": config.model.name, "dtype": config.model.dtype, "device": device,
            "trust_remote_code": config.model.trust_remote_code, "prompt_format": config.data.prompt_format,
            "edits": config.data.edits, "split": config.stream.model_dump(mode="json"), "sources": list(stream.sources),
            "config": config.model_dump(mode="json")}  # what a rebuild re-reads and re-evaluates with
    done = _kept_stream(folder, info, stream, settings) if resume else None
    kept = len(done["rounds"]) if done is not None else None
    if resume:
        log(f"resuming after round {kept} of {len(stream.rounds)}" if done is not None
            else f"nothing to resume in {folder} (no stream.json): starting from the base")
    finished = kept == len(stream.rounds)  # a resume with nothing left to run: no model to load
    evaluator = base = None
    if finished:
        log(f"every round of {kept} is kept: nothing left to run")
    else:
        edits_file = write_stream_edits(stream, folder)
        if shared is not None:
            shared.check(eval_settings(config, device), edits_file, stream.round_of())
            evaluator, base = shared.evaluator, shared.weights
        else:  # a resume reads the base's references back instead of measuring them again
            reference = load_reference(folder) if done is not None else None
            evaluator = StreamEvaluator(eval_settings(config, device), edits_file, stream.round_of(), reference)
            if reference is None:
                save_reference(folder, evaluator.candidate.reference)
            else:
                log("the base's references read back from the kept stream")
    model, tokenizer = (evaluator.model, evaluator.tokenizer) if evaluator else (None, None)
    tracker = None
    if track:
        from mm4ke_ray.tracking.stream_run import (  # MLflow: only when tracking
            log_round,
            open_stream_run,
        )

        tracker = open_stream_run(config, folder, len(stream.rounds), sizes, resumed_after=kept)

    def on_round(t: int, metrics: dict) -> None:
        restored = kept is not None and t <= kept
        log(f"round {t}{' (base)' if t == 0 else ''}{' (kept)' if restored else ''}: {_summary(metrics)}")
        if tracker is not None:
            log_round(tracker, t, metrics, settings[t - 1].merge_record() if t else None)
        if watch is not None and not restored:
            watch(t, model)

    try:
        if finished:
            result = StreamResult.from_manifest(done)
            for t, metrics in enumerate(result.curve_rows()):
                on_round(t, metrics)
        else:
            result = run_stream(model, tokenizer, stream, settings, folder, evaluator=evaluator, info=info,
                                on_round=on_round, done=done, base=base)
        rows = result.curve_rows()
        table = curve_table(rows)
        (folder / TABLE).write_text(table)
        picture = draw_retention(rows, folder / PICTURE, title=f"{config.name}: {len(rows) - 1} rounds of {sizes[0]}"
                                 f"{'+' if len(set(sizes)) > 1 else ''} edits")
    except BaseException:
        if tracker is not None:
            tracker.finish("FAILED")
        raise
    finally:
        if base is not None:
            base.restore_()
    run_id = None
    if tracker is not None:
        tracker.log_sweep_metrics(result.summary(), step=len(result.rounds))
        for path in (picture, folder / TABLE, folder / "stream.json"):
            tracker.log_artifact(path)
        tracker.finish()
        tracker.flush(wait_s=5.0)
        run_id = tracker.parent_run_id
    return StreamOutcome(result, folder, picture, table, run_id)
