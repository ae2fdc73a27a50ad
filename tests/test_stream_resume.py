"""A killed stream resumes from its kept rounds (`stream --resume`): to the same weights and
metrics as a stream that was never interrupted, without evaluating the base again; a folder of
another stream, or with a changed kept delta, is refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from test_stream import _config

from mm4ke_ray.cli import main
from mm4ke_ray.config import validate_config
from mm4ke_ray.delta import DELTA_FILE, load_delta, save_delta
from mm4ke_ray.stream.kept import MANIFEST, read_manifest, round_dir
from mm4ke_ray.stream.resume_rounds import KeptRoundsMismatchError, OtherStreamError

KILLED_IN = 3  # the evaluation of round 3 is interrupted: its delta is saved, its manifest entry is not


@pytest.fixture(scope="module")
def demo():
    from mm4ke_ray.demo.build import build_demo

    return build_demo()


class Killed(KeyboardInterrupt):
    """What Ctrl-C (or a killed job) does to a stream part-way."""


@pytest.fixture
def evaluated(monkeypatch):
    """The rounds `StreamEvaluator.evaluate` is called for (0: the base), in order; evaluating
    round `evaluated.kill_at` raises `Killed`."""
    from mm4ke_ray.stream.evaluation import StreamEvaluator

    original, calls = StreamEvaluator.evaluate, []

    def evaluate(self, upto, first_layer=None):
        calls.append(upto)
        if upto == getattr(evaluate, "kill_at", None):
            raise Killed
        return original(self, upto, first_layer=first_layer)

    monkeypatch.setattr(StreamEvaluator, "evaluate", evaluate)
    evaluate.calls = calls
    return evaluate


@pytest.fixture(scope="module")
def streams(demo, tmp_path_factory):
    """An uninterrupted 3-round stream and the same stream killed while round 3 was evaluated."""
    from mm4ke_ray.stream.evaluation import StreamEvaluator
    from mm4ke_ray.stream.run import run_stream_config

    tmp = tmp_path_factory.mktemp("resume")
    config = validate_config(_config(demo, tmp))
    whole = run_stream_config(config, tmp / "whole", track=False)
    original = StreamEvaluator.evaluate

    def evaluate(self, upto, first_layer=None):
        if upto == KILLED_IN:
            raise Killed
        return original(self, upto, first_layer=first_layer)

    StreamEvaluator.evaluate = evaluate
    try:
        with pytest.raises(Killed):
            run_stream_config(config, tmp / "killed")
    finally:
        StreamEvaluator.evaluate = original
    return config, whole, tmp / "killed"


def _copy(folder: Path, tmp_path: Path) -> Path:
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    return copy


def test_a_killed_stream_resumes_to_the_uninterrupted_result_without_evaluating_the_base(streams, evaluated,
                                                                                           tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from mm4ke_ray.stream.run import run_stream_config

    config, whole, killed = streams
    folder = _copy(killed, tmp_path)
    assert len(read_manifest(folder)["rounds"]) == KILLED_IN - 1
    assert (round_dir(folder, KILLED_IN) / DELTA_FILE).is_file()  # saved, but not in the manifest: redone
    lines = []

    def measured_again(*args, **kwargs):
        raise AssertionError("the resume measured the base's references again")

    from mm4ke_ray.evaluate.edit_metrics import EditEvaluator
    from mm4ke_ray.evaluate.generation import GenerationEvaluator

    monkeypatch.setattr(EditEvaluator, "base_predictions", measured_again)
    monkeypatch.setattr(GenerationEvaluator, "base_generations", measured_again)
    # Another name (the MLflow run's) does not make it another stream.
    resumed = run_stream_config(config.with_overrides(name="stream-test-resumed"), folder, resume=True,
                                log=lines.append)
    assert evaluated.calls == [KILLED_IN]  # only the round it had not finished
    assert f"resuming after round {KILLED_IN - 1} of 3" in lines
    assert "the base's references read back from the kept stream" in lines
    got, want = resumed.result, whole.result
    assert got.resumed_after == KILLED_IN - 1 and want.resumed_after is None
    assert got.base_metrics == want.base_metrics
    assert [r.digest for r in got.rounds] == [r.digest for r in want.rounds]
    for mine, theirs in zip(got.rounds, want.rounds, strict=True):
        assert mine.metrics == theirs.metrics, f"round {mine.round}"
        assert (mine.merge, mine.rsft["config"], mine.n_edits) == (theirs.merge, theirs.rsft["config"], theirs.n_edits)
    manifest, reference = read_manifest(folder), read_manifest(whole.folder)
    assert [r["weights_sha256"] for r in manifest["rounds"]] == [r["weights_sha256"] for r in reference["rounds"]]
    assert manifest["summary"] == reference["summary"] and manifest["resumed_after"] == [KILLED_IN - 1]
    assert resumed.table == whole.table

    client = MlflowClient(config.tracking.uri)  # a new run, whose curves hold the kept rounds too
    run = client.get_run(resumed.run_id)
    assert run.data.params["resumed_after_round"] == str(KILLED_IN - 1) and run.info.status == "FINISHED"
    history = client.get_metric_history(resumed.run_id, "seen.edit_succ")
    assert sorted(m.step for m in history) == [0, 1, 2, 3]
    assert {m.step: m.value for m in history}[1] == pytest.approx(want.rounds[0].metrics["seen.edit_succ"])


def test_resuming_a_finished_stream_loads_no_model_and_reports_its_kept_rounds(streams, monkeypatch, tmp_path):
    from mm4ke_ray.evaluate import candidate
    from mm4ke_ray.stream.run import run_stream_config

    config, whole, _ = streams
    folder = _copy(whole.folder, tmp_path)

    def no_model(*args, **kwargs):
        raise AssertionError("a finished stream's resume loaded a model")

    monkeypatch.setattr(candidate, "load_model", no_model)
    lines = []
    again = run_stream_config(config, folder, resume=True, track=False, log=lines.append)
    assert "every round of 3 is kept: nothing left to run" in lines
    assert again.result.curve_rows() == whole.result.curve_rows()
    assert again.result.summary() == whole.result.summary() and again.table == whole.table
    assert read_manifest(folder) == read_manifest(whole.folder)  # reported, not rewritten


@pytest.mark.parametrize(("overrides", "field"), [
    ({"stream.per_round": {"alpha": [0.1, 0.2, 0.5]}}, "config.stream.per_round.alpha is [0.1, 0.2, 0.5] here but "
                                                       "[0.1, 0.2, 0.3] there"),
    ({"search.space.lr": 4e-4}, "round1.rsft.lr is 0.0004 here but 0.0003 there"),
    ({"data.limit": 6}, "sources is"),
])
def test_resuming_another_stream_is_refused_naming_the_field_before_anything_is_overwritten(
        streams, evaluated, tmp_path, overrides, field):
    from mm4ke_ray.stream.run import run_stream_config

    config, _, killed = streams
    folder = _copy(killed, tmp_path)
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    with pytest.raises(OtherStreamError, match="use another --out, or --force") as err:
        run_stream_config(config.with_overrides(**overrides), folder, resume=True, track=False)
    assert field in str(err.value)
    assert evaluated.calls == [] and {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before


def test_a_changed_kept_delta_is_refused_on_resume(streams, evaluated, tmp_path):
    from mm4ke_ray.stream.run import run_stream_config

    config, _, killed = streams
    folder = _copy(killed, tmp_path)
    delta, meta = load_delta(round_dir(folder, 1))
    name = sorted(delta)[0]
    delta[name] = delta[name] * 1.001
    save_delta(round_dir(folder, 1), delta, meta)
    with pytest.raises(KeptRoundsMismatchError, match=r"kept rounds 1\.\.2 re-added to the base give weights sha256"):
        run_stream_config(config, folder, resume=True, track=False)
    assert evaluated.calls == []  # refused before any round ran


def test_cli_resume(streams, demo, evaluated, tmp_path, capsys):
    config, whole, _ = streams
    path = tmp_path / "stream.yaml"
    path.write_text(yaml.safe_dump(_config(demo, tmp_path)))
    out = _copy(whole.folder, tmp_path)
    args = ["stream", str(path), "--out", str(out), "--device", "cpu"]
    assert main([*args, "--resume", "--force"]) == 2
    assert "--resume goes on with the stream kept in --out and --force starts it over" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("not a stream")
    assert main(["stream", str(path), "--out", str(other), "--resume"]) == 2
    assert f"holds no {MANIFEST}, so there is no stream to resume there" in capsys.readouterr().err
    assert main([*args]) == 2  # without --resume a non-empty --out stays refused
    assert "is not empty" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0  # every round kept: nothing left to run
    assert "resuming after round 3 of 3" in capsys.readouterr().out
    assert evaluated.calls == []
    assert read_manifest(out)["summary"] == whole.result.summary()
