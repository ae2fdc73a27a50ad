"""Tuning settings for a stream (issue 29 §2), Ray-free: an Optuna study whose every trial runs
the whole stream with one setting drawn from `search.space` (ranges allowed here).

Objectives, both maximised: the edit score over the stream (`stream.objective`: `mean` = the
mean over rounds of the edit score on all edits so far, the area under its retention curve, or
`final` = after the last round) and the general score of the final model. Settings differ per
round only where `stream.per_round` says (those are not searched). A warm start enqueues the
best settings of a one-round sweep of the same model first (`warm_points`).

Every trial is a complete stream (`run_stream_config`): its own folder, MLflow run and curves,
so the chosen trial's rounds can be exported like any stream's; all trials stream from one
loaded base model whose references are measured once (`shared_base`). `tune.json` lists the
trials, the Pareto front and the choice (the front's best combined score), rewritten after each
trial so a killed tuning resumes (`resume=True`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna

from mm4ke_ray.atomic_write import write_text_atomic
from mm4ke_ray.config import Param, ScheduleParam, SweepConfig
from mm4ke_ray.errors import UserError
from mm4ke_ray.evaluate.pareto_front import ON_FRONT, split_front
from mm4ke_ray.evaluate.scores import COMBINED, EDIT, GENERAL
from mm4ke_ray.search.space import split_space
from mm4ke_ray.stream.run import open_shared_base, run_stream_config

TUNE_FILE = "tune.json"


@dataclass
class TuneOutcome:
    rows: list[dict]
    front: list[dict]
    choice: dict
    folder: Path


def _inside(p: Param | ScheduleParam, value) -> bool:
    if p.choices is not None:
        return value in p.choices
    return isinstance(value, int | float) and p.low <= value <= p.high


def warm_points(rows: list[dict], config: SweepConfig, most: int) -> list[dict]:
    """The searched parameters of an earlier sweep's candidates, best combined score first, that
    lie inside this search space (others are dropped), at most `most`, without repeats."""
    searched, _ = split_space(config.search)
    space = config.search.space
    points, seen = [], set()
    for row in sorted(rows, key=lambda r: -(r.get(COMBINED.name) or -math.inf)):
        point = {k: row.get(k) for k in searched}
        if any(v is None or not _inside(getattr(space, k), v) for k, v in point.items()):
            continue
        key = json.dumps(point, sort_keys=True)
        if key not in seen:
            seen.add(key)
            points.append(point)
    return points[:most]


def tune_stream(config: SweepConfig, folder: str | Path, n_trials: int, *, device: str = "cpu", track: bool = True,
                warm: list[dict] = (), log: Callable[[str], None] = print, resume: bool = False) -> TuneOutcome:
    """Run `n_trials` streams with settings Optuna draws; return the trials, front and choice.

    The trials share one loaded base model and its references (`SharedBase`). `tune.json` is
    rewritten after every trial (the trials so far, their front and choice, the trial running);
    `resume` goes on from it: the finished trials are told to the study again and a trial killed
    part-way resumes after its last kept round with the same setting. A `tune.json` of another
    tuning (other config) is refused.
    """
    if config.stream is None:
        raise UserError("tuning a stream needs a `stream:` section in the config")
    if n_trials < 1:
        raise UserError(f"--tune must be >= 1 trials, got {n_trials}")
    searched, fixed = split_space(config.search)
    for key in config.stream.per_round:  # given per round: not searched, and its one value unused
        searched.pop(key, None)
        fixed.setdefault(key, 0.0)
    if not searched:
        raise UserError("search.space searches nothing: give a range or choices for the parameters to tune")
    folder = Path(folder)
    key = config.model_dump(mode="json")
    rows, running = _kept_trials(folder, key) if resume else ([], None)
    sampler = optuna.samplers.TPESampler(seed=config.search.seed, multivariate=True,
                                         n_startup_trials=min(config.search.startup_trials, n_trials))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=[EDIT.direction, GENERAL.direction], sampler=sampler)
    for row in rows:  # a resumed tuning's finished trials, as they were told
        study.add_trial(optuna.trial.create_trial(params=row["params"], values=[row[EDIT.name], row[GENERAL.name]],
                                                  distributions={k: searched[k] for k in row["params"]}))
    pending = [running["params"]] if running else []
    for point in [*pending, *warm[len(rows) + len(pending):]]:  # warm points are the first trials
        study.enqueue_trial(point)
    if rows:
        log(f"resuming after trial {len(rows) - 1} of {n_trials}" + (f" (trial {len(rows)} part-way)" if running else ""))
    objective = config.stream.objective
    w = config.objectives.combined_edit_weight
    shared = None
    for i in range(len(rows), n_trials):
        trial = study.ask(searched)
        values = {**fixed, **trial.params}
        overrides = {f"search.space.{k}": v for k, v in values.items()}
        trial_config = config.with_overrides(name=f"{config.name}-t{i:02d}", **overrides)
        log(f"trial {i}: {', '.join(f'{k}={v:g}' if isinstance(v, float) else f'{k}={v}' for k, v in trial.params.items())}")
        _write(folder, key, rows, {"trial": i, "params": trial.params}, objective)
        if shared is None:  # the base model and its references, once for every trial
            shared = open_shared_base(config, folder / "base", device=device)
        outcome = run_stream_config(trial_config, folder / f"trial{i:02d}", device=device, track=track,
                                    log=lambda m, i=i: log(f"  t{i:02d} {m}"), shared=shared,
                                    resume=bool(running) and i == running["trial"])
        summary = outcome.result.summary()
        edit, general = summary[f"{objective}.{EDIT.name}"], summary[f"final.{GENERAL.name}"]
        study.tell(trial, [edit, general])
        rows.append({"candidate": f"t{i:02d}", "trial": i, "params": trial.params, "folder": str(outcome.folder),
                     "mlflow_run": outcome.run_id, "warm_start": i < len(warm), EDIT.name: edit, GENERAL.name: general,
                     COMBINED.name: w * edit + (1 - w) * general, "summary": summary})
    marked, front, choice = _write(folder, key, rows, None, objective)
    log(f"front: {[r['candidate'] for r in front]}; choice {choice['candidate']} ({choice['params']}): "
        f"{EDIT.name} {choice[EDIT.name]:.3f}, {GENERAL.name} {choice[GENERAL.name]:.3f}")
    return TuneOutcome(marked, front, choice, folder)


def _write(folder: Path, key: dict, rows: list[dict], running: dict | None,
           objective: str) -> tuple[list[dict], list[dict], dict | None]:
    """`tune.json`: the trials so far, their front and choice (the front's best combined score)
    and the trial running (None: none is)."""
    marked, front = split_front(rows) if rows else ([], [])
    choice = front[0] if front else None
    doc = {"objective": f"{objective}.{EDIT.name} (over rounds) and final.{GENERAL.name}", "trials": marked,
           "front": [r["candidate"] for r in front], "choice": choice and choice["candidate"],
           "choice_params": choice and choice["params"], "running": running, "key": key}
    write_text_atomic(folder / TUNE_FILE, json.dumps(doc, indent=2, default=str) + "\n")
    return marked, front, choice


def _kept_trials(folder: Path, key: dict) -> tuple[list[dict], dict | None]:
    """The finished trials and the running one of the tuning `folder` holds (none: a fresh start)."""
    path = folder / TUNE_FILE
    if not path.is_file():
        return [], None
    doc = json.loads(path.read_text())
    if doc.get("key") != key:
        raise UserError(f"cannot resume the tuning in '{folder}': its {TUNE_FILE} was written for another config "
                        "(or by a version without resume); use another --out, or start over without --resume")
    rows = [{k: v for k, v in r.items() if k != ON_FRONT} for r in doc["trials"]]
    return rows, doc.get("running")
