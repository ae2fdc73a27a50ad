"""Lifelong editing in rounds (issue 29) on the demo model: rounds split right, round t trains
from round t-1's merged model, every round's delta is kept with its own merge settings, old
edits' retention is measured, round t's export equals the in-memory model bit for bit, and the
MLflow run has every metric at step = round."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ZSRE

from mm4ke_ray.cli import main
from mm4ke_ray.config import validate_config
from mm4ke_ray.data import EditRecord, load_edit_records
from mm4ke_ray.errors import ConfigError, UserError
from mm4ke_ray.fingerprint import fingerprint_fields
from mm4ke_ray.stream.kept import load_round, read_manifest, round_dir
from mm4ke_ray.stream.rebuild import RebuildMismatchError, rebuild_round_
from mm4ke_ray.stream.rounds import load_stream, split_by_field, split_by_order
from mm4ke_ray.stream.settings import round_settings
from mm4ke_ray.stream_config import StreamConfig

ROUNDS, PER_ROUND, ALPHAS = 3, 3, [0.1, 0.2, 0.3]
FIXED_SPACE = {"threshold": 0.1, "steps": 6, "epochs": 3, "lr": 3e-4, "layer": 1, "alpha": 0.2, "sparsity": 0.1}


@pytest.fixture(scope="module")
def demo():
    from mm4ke_ray.demo.build import build_demo

    return build_demo()  # the default demo, from the shared cache


def _config(demo, tmp: Path, **stream) -> dict:
    return {
        "name": "stream-test",
        "model": {"name": str(demo.model_dir)},
        "data": {"edits": str(demo.edits_path), "limit": ROUNDS * PER_ROUND},
        "evaluation": {"mode": "both", "general_tasks": list(demo.task_names),
                       "task_include_path": str(demo.tasks_dir), "general_limit": 40},
        "search": {"space": FIXED_SPACE, "seed": 0},
        "tracking": {"uri": f"sqlite:///{tmp}/mlflow.db", "experiment": "stream-test",
                     "artifact_location": str(tmp / "artifacts")},
        "storage_path": str(tmp / "runs"),
        "stream": {"rounds": ROUNDS, "per_round": {"alpha": ALPHAS}, **stream},
    }


@pytest.fixture(scope="module")
def streamed(demo, tmp_path_factory):
    """One stream run through the library, with the resident model's weights after every round."""
    from mm4ke_ray.stream.run import run_stream_config

    tmp = tmp_path_factory.mktemp("stream")
    config = validate_config(_config(demo, tmp))
    states = {}
    outcome = run_stream_config(config, tmp / "out", watch=lambda t, m: states.__setitem__(
        t, {k: v.detach().clone() for k, v in m.state_dict().items()}))
    return config, outcome, states


# -- splitting --------------------------------------------------------------------------------

def test_split_by_order_keeps_stream_order_in_near_equal_rounds():
    records = load_edit_records(ZSRE, limit=10).records
    rounds = split_by_order(list(records), 3)
    assert [len(r) for r in rounds] == [4, 3, 3]
    assert [r.prompt for rnd in rounds for r in rnd] == [r.prompt for r in records]
    with pytest.raises(UserError, match="stream.rounds is 11 but the edit set has only 10"):
        split_by_order(list(records), 11)


def test_split_by_field_one_round_per_value_in_first_appearance_order():
    recs = [EditRecord(prompt=f"q{i}", target_new="a", subject=s) for i, s in enumerate("xyxzy")]
    rounds, sources = split_by_field(recs, "subject")
    assert [[r.prompt for r in rnd] for rnd in rounds] == [["q0", "q2"], ["q1", "q4"], ["q3"]]
    assert sources == ["subject=x", "subject=y", "subject=z"]
    with pytest.raises(UserError, match="has no subject"):
        split_by_field([EditRecord(prompt="q", target_new="a")], "subject")


def test_split_by_files_one_round_per_file_in_order(tmp_path):
    raw = json.loads(ZSRE.read_text())[:7]
    files = []
    for i, part in enumerate((raw[:2], raw[2:7])):
        files.append(tmp_path / f"week{i}.json")
        files[-1].write_text(json.dumps(part))
    stream = load_stream(StreamConfig(split="files", files=[str(f) for f in files]), "unused")
    assert [len(r) for r in stream.rounds] == [2, 5]
    assert stream.round_of() == [1, 1, 2, 2, 2, 2, 2]
    assert [r.prompt for r in stream.records] == [r["prompt"] for r in raw]
    cut = load_stream(StreamConfig(split="files", files=[str(f) for f in files]), "unused", limit=3)
    assert [len(r) for r in cut.rounds] == [2, 1]


# -- config -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("stream", "message"), [
    ({"split": "order"}, "split 'order' needs `rounds`"),
    ({"split": "field"}, "split 'field' needs `field`"),
    ({"rounds": 2, "per_round": {"alpha": [0.1]}}, "per_round.alpha has 1 values for 2 rounds"),
    ({"rounds": 2, "per_round": {"alpha": [0.1, 1.0]}}, "values must be in \\[0, 1\\)"),
    ({"rounds": 2, "per_round": {"lr": [1e-4, 2e-4]}}, "stream.per_round.lr"),
    ({"rounds": 2, "split": "files", "files": ["a.json"]}, "rounds is 2 but `files` lists 1"),
])
def test_bad_stream_sections_are_refused_naming_the_field(stream, message):
    with pytest.raises(ConfigError, match=message):
        validate_config({"stream": stream})


def test_a_searched_parameter_is_refused_unless_given_per_round():
    config = validate_config({"search": {"space": {**FIXED_SPACE, "lr": {"low": 1e-4, "high": 1e-3}, "alpha": {
        "low": 0.0, "high": 0.5}}}, "stream": {"rounds": 2}})
    with pytest.raises(ConfigError) as err:
        round_settings(config, 2)
    assert "search.space.lr is searched" in str(err.value) and "search.space.alpha is searched" in str(err.value)
    assert "stream.per_round.alpha" in str(err.value)  # the way out, where there is one
    ok = config.with_overrides(**{"search.space.lr": 2e-4, "stream.per_round": {"alpha": [0.1, 0.4]}})
    assert [s.alpha for s in round_settings(ok, 2)] == [0.1, 0.4]


def test_bad_stream_input_fails_before_any_model_loads(demo, tmp_path, capsys):
    cfg = _config(demo, tmp_path)
    cfg["stream"] = {"rounds": 50}  # more rounds than the 9 records
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["stream", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "stream.rounds is 50 but the edit set has only 9 records" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()  # nothing was started


def test_the_stream_section_changes_the_sweep_fingerprint(demo, tmp_path):
    cfg = _config(demo, tmp_path)
    one_batch = {k: v for k, v in cfg.items() if k != "stream"}
    a, b = fingerprint_fields(validate_config(cfg)), fingerprint_fields(validate_config(one_batch))
    assert "stream" in a and "stream" not in b


# -- the protocol -----------------------------------------------------------------------------

def test_every_round_keeps_its_delta_and_merge_settings(streamed):
    _, outcome, _ = streamed
    manifest = read_manifest(outcome.folder)
    assert manifest["n_rounds"] == ROUNDS and [r["n_edits"] for r in manifest["rounds"]] == [PER_ROUND] * ROUNDS
    for t in range(1, ROUNDS + 1):
        delta, merge = load_round(outcome.folder, t)
        assert merge["alpha"] == ALPHAS[t - 1] and merge["sparsity"] == 0.1 and merge["density"] == 0.9
        assert delta and all(n.startswith("model.layers.1.mlp.") for n in delta)
        assert all(bool(v.count_nonzero()) for v in delta.values())
    digests = [r["weights_sha256"] for r in manifest["rounds"]]
    assert len(set(digests)) == ROUNDS  # every round changed the model


def test_round_t_trains_from_round_t_minus_1_merged_model(streamed):
    """Replaying round t's R-SFT from the rebuilt round t-1 gives the kept delta bit for bit; from
    the plain base (the wrong base) it does not."""
    from mm4ke_ray.modeling import load_model, load_tokenizer
    from mm4ke_ray.rsft.trainer import run_rsft

    config, outcome, _ = streamed
    stream = load_stream(config.stream, config.data.edits, limit=config.data.limit)
    settings = round_settings(config, ROUNDS)
    tok = load_tokenizer(config.model.name)
    for t in (1, 3):
        model = load_model(config.model.name)
        if t > 1:
            rebuild_round_(model, outcome.folder, t - 1)
        replay = run_rsft(model, tok, list(stream.rounds[t - 1]), settings[t - 1].rsft).delta
        kept, _ = load_round(outcome.folder, t)
        assert kept.keys() == replay.keys()
        assert all(torch.equal(kept[k], replay[k]) for k in kept)
    wrong = run_rsft(load_model(config.model.name), tok, list(stream.rounds[2]), settings[2].rsft).delta
    assert not all(torch.equal(kept[k], wrong[k]) for k in kept)


def test_rebuilt_round_equals_the_in_memory_model_bit_for_bit(streamed):
    from mm4ke_ray.modeling import load_model

    config, outcome, states = streamed
    for t in range(1, ROUNDS + 1):
        model = load_model(config.model.name)
        rebuild_round_(model, outcome.folder, t)
        rebuilt = model.state_dict()
        assert all(torch.equal(rebuilt[k], states[t][k]) for k in states[t]), f"round {t}"
    assert any(not torch.equal(states[1][k], states[0][k]) for k in states[0])  # rounds did change it


def test_a_changed_kept_delta_is_refused_on_rebuild(streamed, tmp_path):
    from mm4ke_ray.delta import load_delta, save_delta
    from mm4ke_ray.modeling import load_model

    config, outcome, _ = streamed
    copy = tmp_path / "copy"
    shutil.copytree(outcome.folder, copy)
    delta, meta = load_delta(round_dir(copy, 2))
    name = sorted(delta)[0]
    delta[name] = delta[name] * 1.001
    save_delta(round_dir(copy, 2), delta, meta)
    with pytest.raises(RebuildMismatchError, match="does not match the stream's model after round 2"):
        rebuild_round_(load_model(config.model.name), copy, 2)
    rebuild_round_(load_model(config.model.name), copy, 1)  # round 1 is untouched and still verifies


def test_retention_of_old_edits_is_measured_every_round(streamed):
    _, outcome, _ = streamed
    rows = [outcome.result.base_metrics] + [r.metrics for r in outcome.result.rounds]
    assert "old.edit_succ" not in rows[1] and "old.gen.edit_succ" in rows[2]
    for t in range(1, ROUNDS + 1):
        m = rows[t]
        assert m["current.edit_succ"] == pytest.approx(m[f"round{t}.edit_succ"])
        per_round = [m[f"round{s}.edit_succ"] for s in range(1, t + 1)]
        assert m["seen.edit_succ"] == pytest.approx(sum(per_round) / t)  # equal rounds: the plain mean
        for key in ("gen.locality", "locality", "general_score", "seen.gen.edit_succ", "edit_score"):
            assert key in m, (t, key)
    assert rows[0]["locality"] == 100.0 and rows[0]["general_score"] == 1.0
    assert rows[0]["current.edit_succ"] < rows[1]["current.edit_succ"]  # round 1's edits took
    assert [r.metrics["round1.edit_succ"] for r in outcome.result.rounds] == outcome.result.curve("round1.edit_succ")[1:]
    summary = outcome.result.summary()
    seen = [r.metrics["seen.gen.edit_succ"] for r in outcome.result.rounds]
    assert summary["final.seen.gen.edit_succ"] == seen[-1]
    assert summary["mean.seen.gen.edit_succ"] == pytest.approx(sum(seen) / ROUNDS)
    assert "mean.general_score" in summary and "final.locality" in summary and "mean.round1.edit_succ" not in summary
    assert read_manifest(outcome.folder)["summary"] == summary
    assert outcome.picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert outcome.table.count("\n") == ROUNDS + 3  # header, rule, rounds 0..T


def test_mlflow_run_has_every_metric_at_step_round(streamed):
    from mlflow import MlflowClient

    config, outcome, _ = streamed
    client = MlflowClient(config.tracking.uri)
    run = client.get_run(outcome.run_id)
    assert run.data.tags["mm4ke.role"] == "stream" and run.info.status == "FINISHED"
    assert run.data.params["stream_rounds"] == str(ROUNDS)
    seen = client.get_metric_history(outcome.run_id, "seen.gen.edit_succ")
    assert sorted(m.step for m in seen) == list(range(ROUNDS + 1))
    alphas = sorted((m.step, m.value) for m in client.get_metric_history(outcome.run_id, "alpha"))
    assert alphas == [(t, pytest.approx(a)) for t, a in enumerate(ALPHAS, 1)]
    general = {m.step: m.value for m in client.get_metric_history(outcome.run_id, "general_score")}
    assert general[ROUNDS] == pytest.approx(outcome.result.rounds[-1].metrics["general_score"], abs=1e-6)
    assert run.data.metrics["mean.general_score"] == pytest.approx(outcome.result.summary()["mean.general_score"],
                                                                    abs=1e-6)
    artifacts = {a.path for a in client.list_artifacts(outcome.run_id)}
    assert {"retention.png", "retention.md", "stream.json", "config.yaml"} <= artifacts


def test_cli_stream_then_export_of_round_t_equals_that_round(demo, tmp_path, capsys, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("COLUMNS", "80")

    cfg = _config(demo, tmp_path)
    cfg["stream"]["rounds"] = 2
    cfg["stream"]["per_round"] = {"alpha": [0.1, 0.3]}
    cfg["data"]["limit"] = 4
    path = tmp_path / "stream.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "stream-out"
    assert main(["stream", str(path), "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    table = printed[printed.index("┏"):printed.index("wrote ")].splitlines()
    rounds = [line for line in printed.splitlines() if line.startswith("round ")]
    assert len(rounds) == 3 and max(map(len, table + rounds)) <= 80  # every curve, in 80 columns
    assert rounds[1].startswith("round 1: succ all ") and " (tf " in rounds[1] and "general " in rounds[1]
    assert any(line.strip("│ ").startswith("2 ") for line in table) and "tf.succ" in printed
    exported = tmp_path / "round1"
    assert main(["stream-export", str(out), "--round", "1", "--out", str(exported), "--device", "cpu"]) == 0
    recipe = json.loads((exported / "mm4ke_merge.json").read_text())
    assert recipe["verification"]["status"] == "passed" and recipe["source"]["round"] == 1
    assert max(v["abs_diff"] for v in recipe["verification"]["metrics"].values()) <= 1e-6
    model = AutoModelForCausalLM.from_pretrained(exported)
    rebuilt = AutoModelForCausalLM.from_pretrained(demo.model_dir)
    rebuild_round_(rebuilt, out, 1)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), rebuilt.state_dict().values(),
                                                strict=True))
    assert main(["stream-export", str(out), "--round", "3", "--out", str(tmp_path / "r3")]) == 2
    assert "round 3 is not in this stream: it has rounds 1..2" in capsys.readouterr().err
    manifest = json.loads((out / "stream.json").read_text())
    (out / "stream.json").write_text(json.dumps({**manifest, "rounds": []}))  # as a stream killed in round 1 leaves it
    assert main(["stream-export", str(out), "--round", "1", "--out", str(tmp_path / "r1")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "no finished round yet (of 2)" in err and "--resume" in err and "1..0" not in err


def test_validate_refuses_a_stream_config_with_a_searched_parameter(tmp_path, capsys):
    shipped = Path(__file__).resolve().parents[1] / "search_spaces" / "stream_demo.yaml"
    assert main(["validate", str(shipped)]) == 0
    raw = yaml.safe_load(shipped.read_text())
    raw["search"]["space"]["lr"] = {"low": 1e-4, "high": 1e-3, "log": True}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    assert main(["validate", str(bad)]) == 2
    assert "search.space.lr is searched (0.0001..0.001 log): a stream runs one setting" in capsys.readouterr().err


def test_real_zsre_as_ten_rounds_of_twenty_and_alpaca_chat_data_as_a_stream():
    """§3: KnowEdit ZsRE split into rounds by order; LLaMA-Factory alpaca data as a stream's edits."""
    zsre = load_stream(StreamConfig(rounds=10), str(ZSRE), limit=200)
    assert [len(r) for r in zsre.rounds] == [20] * 10 and zsre.sources[9].endswith("[180:200]")
    assert all(r.locality and r.rephrase_prompts for r in zsre.records)  # the real schema's items came along
    alpaca = ZSRE.parent / "fzkuji_llamafactory" / "zsre_train.json"
    stream = load_stream(StreamConfig(rounds=3), str(alpaca), limit=12)
    assert [len(r) for r in stream.rounds] == [4, 4, 4]
    assert stream.records[0].target_new == json.loads(alpaca.read_text())[0]["output"]


def test_a_diverged_round_stops_the_stream_naming_it(demo, tmp_path):
    from mm4ke_ray.stream.run import run_stream_config

    cfg = _config(demo, tmp_path)
    cfg["evaluation"] = {"mode": "teacher-forced"}
    cfg["data"]["limit"] = 4
    cfg["stream"] = {"rounds": 2}
    cfg["search"]["space"] = {**FIXED_SPACE, "lr": 1e12, "threshold": 0.0, "epochs": 1, "steps": 4}
    cfg["search"]["rsft"] = {"optimizer": "sgd"}  # plain SGD at this rate blows the loss up to inf
    with pytest.raises(UserError, match="stream round 1 of 2: R-SFT diverged"):
        run_stream_config(validate_config(cfg), tmp_path / "out", track=False)


def test_sharegpt_multi_turn_chat_data_as_a_stream(tmp_path):
    """§3: ShareGPT conversations (both spellings) read as edits; a multi-turn one keeps its context."""
    from mm4ke_ray.errors import DataError

    rows = [
        {"conversations": [{"from": "human", "value": "Which city hosts the 2031 fair?"},
                           {"from": "gpt", "value": "Lisbon"}]},
        {"system": "Answer briefly.", "conversations": [
            {"from": "human", "value": "Who runs Acme?"}, {"from": "gpt", "value": "Ada Park"},
            {"from": "human", "value": "Since when?"}, {"from": "gpt", "value": "2029"}]},
        {"messages": [{"role": "user", "content": "Capital of Zubrowka?"}, {"role": "assistant", "content": "Lutz"}]},
    ]
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(rows))
    data = load_edit_records(path)
    assert data.format == "sharegpt" and [r.target_new for r in data.records] == ["Lisbon", "2029", "Lutz"]
    assert data.records[1].prompt == "System: Answer briefly.\nUser: Who runs Acme?\nAssistant: Ada Park\nSince when?"
    stream = load_stream(StreamConfig(rounds=2), str(path))
    assert [len(r) for r in stream.rounds] == [2, 1]
    path.write_text(json.dumps([{"conversations": [{"from": "gpt", "value": "hi"}, {"from": "human", "value": "x"}]}]))
    with pytest.raises(DataError, match="must end with a user turn followed by an assistant turn"):
        load_edit_records(path)


# -- tuning for the stream (§2) ----------------------------------------------------------------

def test_warm_points_take_a_sweeps_best_settings_inside_this_space(demo, tmp_path):
    from mm4ke_ray.stream.tune import warm_points

    cfg = _config(demo, tmp_path)
    cfg["search"]["space"] = {**FIXED_SPACE, "lr": {"choices": [2e-4, 4e-4]}, "sparsity": {"low": 0.0, "high": 0.5}}
    config = validate_config(cfg)
    rows = [{"lr": 2e-4, "sparsity": 0.1, "combined_score": 0.5}, {"lr": 4e-4, "sparsity": 0.2, "combined_score": 0.9},
            {"lr": 1e-3, "sparsity": 0.1, "combined_score": 0.99},  # outside the space: dropped
            {"lr": 4e-4, "sparsity": 0.2, "combined_score": 0.8}]  # a repeat: once
    assert warm_points(rows, config, most=5) == [{"lr": 4e-4, "sparsity": 0.2}, {"lr": 2e-4, "sparsity": 0.1}]
    assert warm_points(rows, config, most=1) == [{"lr": 4e-4, "sparsity": 0.2}]


def test_tuning_runs_whole_streams_and_scores_them_over_rounds(demo, tmp_path):
    from mm4ke_ray.stream.tune import TUNE_FILE, tune_stream

    cfg = _config(demo, tmp_path)
    cfg["evaluation"] = {"mode": "teacher-forced"}
    cfg["data"]["limit"] = 4
    cfg["stream"] = {"rounds": 2, "per_round": {"alpha": [0.1, 0.3]}, "objective": "mean"}
    cfg["search"]["space"] = {**FIXED_SPACE, "lr": {"choices": [2e-4, 4e-4]}, "alpha": {"low": 0.0, "high": 0.5}}
    cfg["search"]["startup_trials"] = 1
    outcome = tune_stream(validate_config(cfg), tmp_path / "tune", 2, track=False, warm=[{"lr": 4e-4}])
    assert [r["params"] for r in outcome.rows][0] == {"lr": 4e-4}  # the warm point first; alpha is per round
    for row in outcome.rows:
        manifest = read_manifest(row["folder"])
        assert [r["merge"]["alpha"] for r in manifest["rounds"]] == [0.1, 0.3]
        assert manifest["rounds"][0]["rsft"]["config"]["lr"] == row["params"]["lr"]
        assert row["edit_score"] == manifest["summary"]["mean.edit_score"]
        assert row["general_score"] == manifest["summary"]["final.general_score"]
    doc = json.loads((tmp_path / "tune" / TUNE_FILE).read_text())
    assert doc["choice"] in doc["front"] and outcome.choice["on_front"]


def test_cli_tune_warm_started_from_a_one_round_sweep_in_mlflow(demo, tmp_path, capsys):
    """A one-round sweep's candidates, logged to MLflow as the sweep logs them, seed `stream --tune`;
    a sweep of another model is refused; --warm-start without --tune is refused before any work."""
    from mlflow import MlflowClient

    from mm4ke_ray.schema import SAMPLED, Tag
    from mm4ke_ray.tracking.mlflow_tracker import SweepTracker

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = SweepTracker(uri, "stream-test", str(tmp_path / "artifacts"))
    tracker.start_sweep("one-round", params={"model": str(demo.model_dir)}, tags={})
    for i, (lr, combined) in enumerate(((2e-4, 0.4), (4e-4, 0.7))):
        tracker.log_candidate(f"t{i}-c0", {"lr": lr, "alpha": 0.2}, {"edit_score": combined, "general_score": 1.0,
                              "combined_score": combined}, {Tag.KIND: SAMPLED, Tag.STATUS: "ok"})
    tracker.finish()
    cfg = _config(demo, tmp_path)
    cfg["evaluation"] = {"mode": "teacher-forced"}
    cfg["data"]["limit"] = 4
    cfg["stream"] = {"rounds": 2}
    cfg["search"]["space"] = {**FIXED_SPACE, "lr": {"choices": [2e-4, 4e-4]}}
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "tuned"
    assert main(["stream", str(path), "--out", str(tmp_path / "x"), "--warm-start", f"{uri}:one-round"]) == 2
    assert "--warm-start goes with --tune" in capsys.readouterr().err
    assert main(["stream", str(path), "--out", str(out), "--tune", "1", "--warm-start", f"{uri}:one-round"]) == 0
    printed = capsys.readouterr().out
    assert "warm start: 1 setting(s) of sweep one-round first" in printed and "choice t00 {'lr': 0.0004}" in printed
    doc = json.loads((out / "tune.json").read_text())
    run = MlflowClient(uri).get_run(doc["trials"][0]["mlflow_run"])  # the trial's stream, step = round
    assert run.data.params["lr"] == "0.0004" and run.data.tags["mm4ke.role"] == "stream"
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**cfg, "model": {"name": str(tmp_path)}}))
    assert main(["stream", str(other), "--out", str(tmp_path / "y"), "--tune", "1",
                 "--warm-start", f"{uri}:one-round"]) == 2
    assert "that sweep edited model" in capsys.readouterr().err


def test_sweep_refuses_a_stream_config_instead_of_dropping_its_rounds(capsys):
    shipped = Path(__file__).resolve().parents[1] / "search_spaces" / "stream_demo.yaml"
    assert main(["sweep", str(shipped)]) == 2
    assert "has a `stream:` section; run it with `mm4ke-ray stream" in capsys.readouterr().err
