"""Tuning settings for a stream (issue 29 §2), Ray-free: an Optuna study whose every trial runs
the whole stream with one setting drawn from `search.space` (ranges allowed here).

Objectives, both maximised: the edit score over the stream (`stream.objective`: `mean` = the
mean over rounds of the edit score on all edits so far, the area under its retention curve, or
`final` = after the last round) and the general score of the final model. Settings differ per
round only where `stream.per_round` says (those are not searched). A warm start enqueues the
best settings of a one-round sweep of the same model first (`warm_points`).

Every trial is a complete stream (`run_stream_config`): its own folder, MLflow run and curves,
so the chosen trial's rounds can be exported like any stream's. `tune.json` lists the trials,
the Pareto front and the choice (the front's best combined score).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna

from mm4ke_ray.config import Param, ScheduleParam, SweepConfig
from mm4ke_ray.errors import UserError
from mm4ke_ray.evaluate.pareto_front import ON_FRONT, split_front
from mm4ke_ray.evaluate.scores import COMBINED, EDIT, GENERAL
from mm4ke_ray.search.space import split_space
from mm4ke_ray.stream.run import run_stream_config

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
                warm: list[dict] = (), log: Callable[[str], None] = print) -> TuneOutcome:
    """Run `n_trials` streams with settings Optuna draws; return the trials, front and choice."""
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
    sampler = optuna.samplers.TPESampler(seed=config.search.seed, multivariate=True,
                                         n_startup_trials=min(config.search.startup_trials, n_trials))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=[EDIT.direction, GENERAL.direction], sampler=sampler)
    for point in warm:
        study.enqueue_trial(point)
    objective = config.stream.objective
    w = config.objectives.combined_edit_weight
    rows = []
    for i in range(n_trials):
        trial = study.ask(searched)
        values = {**fixed, **trial.params}
        overrides = {f"search.space.{k}": v for k, v in values.items()}
        trial_config = config.with_overrides(name=f"{config.name}-t{i:02d}", **overrides)
        log(f"trial {i}: {', '.join(f'{k}={v:g}' if isinstance(v, float) else f'{k}={v}' for k, v in trial.params.items())}")
        outcome = run_stream_config(trial_config, folder / f"trial{i:02d}", device=device, track=track,
                                    log=lambda m, i=i: log(f"  t{i:02d} {m}"))
        summary = outcome.result.summary()
        edit, general = summary[f"{objective}.{EDIT.name}"], summary[f"final.{GENERAL.name}"]
        study.tell(trial, [edit, general])
        rows.append({"candidate": f"t{i:02d}", "trial": i, "params": trial.params, "folder": str(outcome.folder),
                     "mlflow_run": outcome.run_id, "warm_start": i < len(warm), EDIT.name: edit, GENERAL.name: general,
                     COMBINED.name: w * edit + (1 - w) * general, "summary": summary})
    marked, front = split_front(rows)
    choice = front[0]
    doc = {"objective": f"{objective}.{EDIT.name} (over rounds) and final.{GENERAL.name}", "trials": marked,
           "front": [r["candidate"] for r in front], "choice": choice["candidate"], "choice_params": choice["params"]}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / TUNE_FILE).write_text(json.dumps(doc, indent=2, default=str) + "\n")
    log(f"front: {doc['front']}; choice {choice['candidate']} ({choice['params']}): {EDIT.name} {choice[EDIT.name]:.3f}, "
        f"{GENERAL.name} {choice[GENERAL.name]:.3f}")
    return TuneOutcome(marked, [r for r in marked if r[ON_FRONT]], choice, folder)
