"""Tuning for a stream (issue 29 §2) on the demo model: the trials share one loaded base and its
references yet score exactly as separate streams do, the model goes back to the base between
trials, and a killed tuning resumes where it stopped (finished trials kept, the trial killed
part-way after its last kept round, with the same setting)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mm4ke_ray.config import validate_config
from mm4ke_ray.errors import UserError
from mm4ke_ray.stream import evaluation
from mm4ke_ray.stream.kept import read_manifest

SPACE = {"threshold": 0.1, "steps": 6, "epochs": 3, "layer": 1, "sparsity": 0.1,
         "lr": {"low": 1e-4, "high": 6e-4, "log": True}, "alpha": {"low": 0.0, "high": 0.6}}


@pytest.fixture(scope="module")
def demo():
    from mm4ke_ray.demo.build import build_demo

    return build_demo()


def _config(demo, tmp: Path, **changes):
    raw = {"name": "tune-test", "model": {"name": str(demo.model_dir)},
           "data": {"edits": str(demo.edits_path), "limit": 4},
           "evaluation": {"mode": "both", "general_tasks": list(demo.task_names),
                          "task_include_path": str(demo.tasks_dir), "general_limit": 20},
           "search": {"space": SPACE, "seed": 0, "startup_trials": 1},
           "storage_path": str(tmp / "runs"), "stream": {"rounds": 2, "objective": "mean"}, **changes}
    return validate_config(raw)


class Interrupted(Exception):
    pass


def _kill_at(marker: str, lines: list[str]):
    def log(message: str) -> None:
        lines.append(message)
        if marker in message:
            raise Interrupted(message)
    return log


@pytest.fixture(scope="module")
def tuned(demo, tmp_path_factory, request):
    """A 3-trial tuning killed after trial 1's first round and resumed, with what each part logged
    and how many base evaluators were built."""
    from mm4ke_ray.stream.tune import tune_stream

    tmp = tmp_path_factory.mktemp("tune")
    config = _config(demo, tmp)
    built = []
    real_init = evaluation.CandidateEvaluator.__init__

    def counting_init(self, *args, **kwargs):
        built.append(1)
        real_init(self, *args, **kwargs)

    mp = pytest.MonkeyPatch()
    request.addfinalizer(mp.undo)
    mp.setattr(evaluation.CandidateEvaluator, "__init__", counting_init)
    first, second = [], []
    with pytest.raises(Interrupted):
        tune_stream(config, tmp / "tune", 3, track=False, log=_kill_at("t01 round 1:", first))
    built_first = len(built)
    outcome = tune_stream(config, tmp / "tune", 3, track=False, log=second.append, resume=True)
    return config, tmp, outcome, first, second, built_first, len(built)


def test_trials_share_one_base_evaluator(tuned):
    *_, built_first, built_all = tuned
    assert built_first == 1  # trials 0 and 1 of the first call
    assert built_all == 2  # and one more for the resumed call's trials 1 and 2


def test_a_killed_tuning_resumes_after_its_last_finished_trial_with_the_same_setting(tuned):
    _, tmp, outcome, first, second, *_ = tuned
    assert any(m.startswith("trial 0:") for m in first) and not any(m.startswith("trial 0:") for m in second)
    killed_setting = next(m for m in first if m.startswith("trial 1:"))
    assert killed_setting in second  # the killed trial's own setting again, not a new draw
    assert any("t01 resuming after round 1 of 2" in m for m in second)
    assert [r["candidate"] for r in outcome.rows] == ["t00", "t01", "t02"]
    doc = json.loads((tmp / "tune" / "tune.json").read_text())
    assert doc["running"] is None and doc["choice"] in doc["front"]
    assert [r["candidate"] for r in doc["trials"]] == ["t00", "t01", "t02"]


def test_each_trial_scores_exactly_as_a_stream_of_its_own(tuned):
    """Shared base, restored weights, cached round 0 and a resume in between change nothing: the
    resumed trial 1 and trial 2 equal fresh streams of their settings, metric for metric and in
    their weights' digests."""
    from mm4ke_ray.stream.run import run_stream_config

    config, tmp, outcome, *_ = tuned
    for row in outcome.rows[1:]:
        alone = config.with_overrides(name=f"alone-{row['candidate']}",
                                      **{f"search.space.{k}": v for k, v in row["params"].items()})
        fresh = run_stream_config(alone, tmp / f"alone-{row['candidate']}", track=False, log=lambda m: None)
        trial = read_manifest(row["folder"])
        assert trial["base_metrics"] == fresh.result.base_metrics
        assert [r["weights_sha256"] for r in trial["rounds"]] == [r.digest for r in fresh.result.rounds]
        assert [r["metrics"] for r in trial["rounds"]] == [r.metrics for r in fresh.result.rounds]


def test_a_shared_base_is_back_to_the_base_after_a_stream_and_refuses_another_edit_set(demo, tmp_path):
    from mm4ke_ray.stream.run import open_shared_base, run_stream_config

    config = _config(demo, tmp_path, evaluation={"mode": "teacher-forced"},
                     search={"space": {**SPACE, "lr": 4e-4, "alpha": 0.2}, "seed": 0})
    shared = open_shared_base(config, tmp_path / "base")
    before = {k: v.clone() for k, v in shared.evaluator.model.state_dict().items()}
    outcome = run_stream_config(config, tmp_path / "one", track=False, log=lambda m: None, shared=shared)
    assert outcome.result.touched  # the stream did change the model ...
    after = shared.evaluator.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # ... and gave the base back
    other = config.with_overrides(**{"data.limit": 2})
    with pytest.raises(ValueError, match="one edit set|one split"):
        run_stream_config(other, tmp_path / "two", track=False, log=lambda m: None, shared=shared)


def test_resuming_the_tuning_of_another_config_is_refused(demo, tmp_path):
    from mm4ke_ray.stream.tune import TUNE_FILE, tune_stream

    (tmp_path / "tune").mkdir()
    (tmp_path / "tune" / TUNE_FILE).write_text(json.dumps({"key": {"name": "another"}, "trials": []}))
    with pytest.raises(UserError, match="written for another config"):
        tune_stream(_config(demo, tmp_path), tmp_path / "tune", 2, track=False, resume=True)


def test_cli_tune_resume_goes_on_and_refuses_a_folder_without_a_tuning(demo, tmp_path, capsys):
    import yaml

    from mm4ke_ray.cli import main

    config = _config(demo, tmp_path, evaluation={"mode": "teacher-forced"})
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    assert main(["stream", str(path), "--tune", "1", "--resume", "--out", str(stray)]) == 2
    assert "holds no tune.json, so there is no tuning to resume there" in capsys.readouterr().err
    out = tmp_path / "tune"
    assert main(["stream", str(path), "--tune", "1", "--out", str(out)]) == 0
    assert main(["stream", str(path), "--tune", "2", "--resume", "--out", str(out)]) == 0
    doc = json.loads((out / "tune.json").read_text())
    assert [r["candidate"] for r in doc["trials"]] == ["t00", "t01"]
    assert "resuming after trial 0 of 2" in capsys.readouterr().out
