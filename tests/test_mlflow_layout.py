"""How a sweep's experiment looks to MLflow 3's UI: a model-training experiment, readable summaries."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from mm4ke_ray.schema import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND
from mm4ke_ray.tracking.mlflow_tracker import SweepTracker


def test_the_experiment_is_a_model_training_one_so_the_ui_opens_on_runs(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = SweepTracker(uri, "kindtest", str(tmp_path / "artifacts"))
    exp = MlflowClient(uri).get_experiment(tracker.experiment_id)
    assert exp.tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND

    # An experiment made without the tag (older version, by hand) gets it when a sweep logs to it.
    client = MlflowClient(uri)
    old = client.create_experiment("untagged", artifact_location=(tmp_path / "old").as_uri())
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(old).tags
    SweepTracker(uri, "untagged")
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND


def test_summary_metrics_on_the_parent_run_are_rounded(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = SweepTracker(uri, "roundtest", str(tmp_path / "artifacts"))
    parent = tracker.start_sweep("roundtest", params={}, tags={})
    score = float(np.float32(0.9925))  # 0.9924999475479126: what a float32 mean becomes
    assert score != 0.9925
    tracker.log_sweep_metrics({"best_combined_score": score, "trials_done": 3}, step=3)
    metrics = MlflowClient(uri).get_run(parent).data.metrics
    assert metrics["best_combined_score"] == 0.9925
    assert metrics["trials_done"] == 3


def test_the_printed_ui_link_opens_the_model_training_runs_view(tmp_path):
    from mm4ke_ray.tracking.query import ui_runs_url

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = SweepTracker(uri, "urltest", str(tmp_path / "artifacts"))
    parent = tracker.start_sweep("urltest", params={}, tags={})
    url = ui_runs_url(uri, parent)
    assert url == f"http://127.0.0.1:5000/#/experiments/{tracker.experiment_id}/runs?workflowType=machine_learning"
    assert ui_runs_url(uri, "0" * 32) is None  # an unknown run: no hint, no error


def test_a_registered_export_gets_the_champion_alias_not_a_stage(tmp_path, monkeypatch):
    from mm4ke_ray.tracking.registry import CHAMPION, register_export

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = SweepTracker(uri, "regtest", str(tmp_path / "artifacts"))
    parent = tracker.start_sweep("regtest", params={}, tags={})
    run_id = tracker.log_candidate("t1-c0", {"alpha": 0.3}, {"combined_score": 0.9}, {"mm4ke.kind": "sampled"})
    out = tmp_path / "export"
    out.mkdir()
    (out / "README.md").write_text("card")
    recipe = {"source": {"candidate_run_id": run_id, "sweep_name": "regtest", "sweep_run_id": parent,
                         "candidate": "t1-c0"},
              "base_model": "base", "merge": {"alpha": 0.3, "sparsity": 0.5},
              "edits": {"count": 5, "source": "edits.json"}, "recorded_metrics": {"combined_score": 0.9}}
    first = register_export(uri, out, "regtest-model", recipe)
    second = register_export(uri, out, "regtest-model", recipe)
    client = MlflowClient(uri)
    champion = client.get_model_version_by_alias("regtest-model", CHAMPION)
    assert champion.version == second.version != first.version
    assert client.get_model_version("regtest-model", second.version).current_stage in (None, "None")

    # The version is created from an MLflow 3 LoggedModel of the candidate run, with its metrics.
    assert champion.source.startswith("models:/m-") and champion.run_id == run_id
    model = client.get_logged_model(champion.source.removeprefix("models:/"))
    assert json.loads(model.tags["mlflow.modelVersions"]) == [{"name": "regtest-model", "version": second.version}]
    assert model.source_run_id == run_id and str(model.status) == "READY"
    assert model.params["alpha"] == "0.3" and model.tags["mm4ke.candidate"] == "t1-c0"
    assert {(m.key, m.value, m.run_id) for m in model.metrics} == {("combined_score", 0.9, run_id)}
    runs_models = client.search_logged_models([tracker.experiment_id], filter_string=f"source_run_id = '{run_id}'")
    assert {f"models:/{m.model_id}" for m in runs_models} == {first.source, second.source}
    # ... and the alias gives back the exported directory (MLflow resolves models:/ URIs through
    # the process's tracking URI, which registering left as it was).
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # set_tracking_uri writes it too; restored after the test
    mlflow.set_tracking_uri(uri)
    try:
        fetched = mlflow.artifacts.download_artifacts(f"models:/regtest-model@{CHAMPION}",
                                                      dst_path=str(tmp_path / "dl"))
    finally:
        mlflow.set_tracking_uri(None)
    assert (Path(fetched) / "README.md").read_text() == "card"


def test_an_export_that_is_not_registered_is_a_logged_model_without_uploaded_files(tmp_path):
    from mm4ke_ray.schema import Tag
    from mm4ke_ray.tracking.registry import log_export_model

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = SweepTracker(uri, "lmtest", str(tmp_path / "artifacts"))
    parent = tracker.start_sweep("lmtest", params={}, tags={})
    run_id = tracker.log_candidate("a_00002-c1", {"alpha": 0.2}, {"combined_score": 0.8, "edit_succ": 95.0},
                                   {"mm4ke.kind": "extra"}, run_name="t02 c1 α0.20 s0.10")
    out = tmp_path / "export"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"weights")
    recipe = {"source": {"candidate_run_id": run_id, "sweep_name": "lmtest", "sweep_run_id": parent,
                         "candidate": "a_00002-c1"},
              "base_model": "base", "merge": {"alpha": 0.2, "sparsity": 0.1, "method": "dare"},
              "edits": {"count": 5, "source": "edits.json"},
              "recorded_metrics": {"combined_score": 0.8, "edit_succ": 95.0, "retention.arc_easy": 1.0}}
    model = log_export_model(uri, out, recipe, upload=False)
    client = MlflowClient(uri)
    stored = client.get_logged_model(model.model_id)
    assert stored.source_run_id == run_id and stored.name == "lmtest-a_00002-c1"
    assert stored.tags[Tag.EXPORT_DIR] == str(out.resolve()) and stored.params["method"] == "dare"
    assert {m.key: m.value for m in stored.metrics} == {"combined_score": 0.8, "edit_succ": 95.0,
                                                        "retention.arc_easy": 1.0}
    assert client.list_logged_model_artifacts(model.model_id) == []  # the weights stay in --out
    # The run lists the model among its outputs (the run page's "Logged models"), and a second
    # export of the same candidate is a second model told apart by its name (issue 26 §2).
    again = log_export_model(uri, out, recipe, upload=False)
    outputs = client.get_run(run_id).outputs.model_outputs
    assert sorted(o.model_id for o in outputs) == sorted([model.model_id, again.model_id])
    assert client.get_logged_model(again.model_id).name == "lmtest-a_00002-c1-export2"


def _trial_result(alphas_sparsities) -> dict:
    """A finished trial's result as the Tune trial reports it (two merge candidates of one delta)."""
    params = {"threshold": 0.1, "steps": 2, "lr": 3e-4, "layers": 1, "alpha": 0.3, "sparsity": 0.57}
    kinds = ["sampled", "extra"]
    return {"status": "ok", "params": params, "rsft_updates": 2, "rsft_seconds": 1.0,
            "candidates": [{"alpha": a, "sparsity": s, "kind": kinds[i],
                            "metrics": {"edit_score": 0.5 + i / 10, "general_score": 0.9, "combined_score": 0.7}}
                           for i, (a, s) in enumerate(alphas_sparsities)]}


def test_candidate_runs_have_readable_names_and_keep_their_id_in_a_tag(tmp_path):
    from mm4ke_ray.schema import Tag
    from mm4ke_ray.tracking.query import load_sweep
    from mm4ke_ray.tracking.run_records import (
        candidate_rows,
        candidate_run,
        failure_run_name,
        trial_label,
    )

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = SweepTracker(uri, "nametest", str(tmp_path / "artifacts"))
    parent = tracker.start_sweep("nametest", params={}, tags={})
    trial_id = "a1b2c3d4"  # a trial id the searcher gave; Tune's experiment tag carries its number
    assert trial_label(trial_id, "3_alpha=0.3,layer=1") == "t03" and trial_label(trial_id, "") == trial_id
    rows = candidate_rows(_trial_result([(0.3, 0.567), (0.05, 0.0)]), trial_id, trial_label(trial_id, "3_alpha=0.3"))
    for row in rows:
        row["run_id"] = tracker.log_candidate(row["candidate"], *candidate_run(row, trial_id), run_name=row["run_name"])
    tracker.log_candidate("e5f6a7b8-diverged", {"lr": 1e20}, {}, {Tag.TRIAL_ID: "e5f6a7b8", Tag.STATUS: "diverged"},
                          run_name=failure_run_name(trial_label("e5f6a7b8", "4_lr=1e+20"), "diverged"))
    # A candidate logged by an older version: named by its id, no candidate tag.
    old = MlflowClient(uri).create_run(tracker.experiment_id, run_name="old_00007-c0",
                                       tags={"mlflow.parentRunId": parent, Tag.ROLE: "candidate", Tag.KIND: "sampled"})
    MlflowClient(uri).set_terminated(old.info.run_id)

    client = MlflowClient(uri)
    names = [client.get_run(r["run_id"]).info.run_name for r in rows]
    assert names == ["α.30 s.57 t03c0", "α.05 s.00 t03c1"]
    # what tells siblings apart fits the ~10 characters MLflow's runs table shows (issue 26 §2)
    assert len({n[:9] for n in names}) == len(names)

    sweep = load_sweep(uri, "nametest")
    assert [r["candidate"] for r in sweep.candidates] == ["a1b2c3d4-c0", "a1b2c3d4-c1", "old_00007-c0"]
    assert sweep.find("a1b2c3d4-c1")["run_id"] == rows[1]["run_id"]  # export --pick by the stable id
    assert sweep.find("old_00007-c0")["run_id"] == old.info.run_id  # an older sweep stays readable
    [failed] = sweep.failed
    assert failed["candidate"] == "e5f6a7b8-diverged"
    assert client.get_run(failed["run_id"]).info.run_name == "t04 diverged"


def test_system_metrics_are_logged_on_the_parent_run_when_asked(tmp_path):
    import time

    from mm4ke_ray.config import SweepConfig
    from mm4ke_ray.tracking.sweep_run import open_sweep_run

    def sweep(name: str, on: bool):
        config = SweepConfig.model_validate({"name": name, "tracking": {
            "uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "systest",
            "artifact_location": str(tmp_path / "artifacts"), "system_metrics": on, "system_metrics_interval_s": 0.5}})
        tracker, parent = open_sweep_run(config, str(tmp_path / name), eval_actors=1, max_concurrent=1)
        time.sleep(2.0)  # a short sweep: a few samples
        tracker.finish()
        return MlflowClient(config.tracking.uri).get_run(parent).data.metrics

    on = sweep("with", True)
    assert on["system/cpu_utilization_percentage"] >= 0 and on["system/system_memory_usage_megabytes"] > 0
    off = sweep("without", False)  # the default: nothing sampled
    assert not any(k.startswith("system/") for k in off)
    assert SweepConfig().tracking.system_metrics is False


def test_a_trials_sampler_keeps_its_samples_bounded_and_spread_over_the_whole_trial():
    import time

    from mm4ke_ray.tracking.system_samples import SystemSampler, metric_items, start_sampling

    assert start_sampling(None) is None  # system metrics off: no sampler, no thread, no MLflow import
    sampler = SystemSampler(0.02, max_samples=8)
    time.sleep(0.6)
    samples = sampler.stop()  # compact: what the trial returns with its result
    items = metric_items(samples)
    assert len(items) == sum(v is not None for row in samples["rows"] for v in row[2:])
    samples = sorted({(ts, step) for _, _, ts, step in items})
    assert 4 <= len(samples) < 8  # bounded: every other sample dropped, the interval doubled
    steps = [step for _, step in samples]
    assert steps[0] == 0 and steps == sorted(steps) and len(set(steps)) == len(steps)
    assert [ts for ts, _ in samples] == sorted(ts for ts, _ in samples)
    names = {k for k, *_ in items}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= names


def test_a_trials_system_metrics_reach_its_run_once_with_their_own_times_also_through_the_spool(tmp_path):
    import time

    from mm4ke_ray.schema import Tag
    from mm4ke_ray.tracking.run_records import candidate_rows, candidate_run, trial_run

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = SweepTracker(uri, "systrial", str(tmp_path / "artifacts"), spool_path=tmp_path / "spool.jsonl")
    tracker.start_sweep("systrial", params={}, tags={})
    result = _rsft_result([(0.3, 0.5), (0.1, 0.0)])
    result.update(trial_start_ms=1_000_000, trial_end_ms=1_009_000, system_metrics={
        "names": ["cpu_utilization_percentage", "gpu_0_utilization_percentage"],
        "rows": [[1_000_000 + 3000 * (step + 1), step, 50.0 + step, None if step else 99.0] for step in range(3)]})
    group = trial_run("a1b2c3d4", "t03", result["params"], result)
    # MLflow away: the records wait in the spool, with the samples, and are sent when it is back.
    tracker.offline_since, tracker._last_probe = time.time(), time.monotonic()
    for row in candidate_rows(result, "a1b2c3d4", "t03"):
        tracker.log_candidate(row["candidate"], *candidate_run(row, "a1b2c3d4"), run_name=row["run_name"],
                              trial=group)
        group.pop("system_metrics", None)  # what the callback does: sent with the first candidate only
    assert tracker.pending == 2 and tracker.flush()
    client = MlflowClient(uri)
    [run] = client.search_runs([tracker.experiment_id], f"tags.`{Tag.ROLE}` = 'trial'")
    history = client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
    assert [(m.value, m.timestamp, m.step) for m in history] == [(50.0, 1_003_000, 0), (51.0, 1_006_000, 1),
                                                                 (52.0, 1_009_000, 2)]
    gpu = client.get_metric_history(run.info.run_id, "system/gpu_0_utilization_percentage")
    assert [(m.value, m.step) for m in gpu] == [(99.0, 0)]  # a value a sample lacks is not logged
    assert (run.info.start_time, run.info.end_time) == (1_000_000, 1_009_000)  # the trial's own span
    assert run.info.status == "FINISHED"


@pytest.fixture(scope="module")
def system_metrics_sweeps(tmp_path_factory, tiny_model_dir):
    """Two tiny real sweeps on one local Ray: system metrics on (2 trials) and off (1 trial)."""
    import tempfile

    import ray
    from fault_helpers import sweep_dict

    from mm4ke_ray.config import validate_config
    from mm4ke_ray.search.driver import run_sweep

    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths are length-limited
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=temp)
    try:
        out = {}
        for on, trials in ((True, 2), (False, 1)):
            tmp = tmp_path_factory.mktemp(f"sysm-{on}")
            raw = sweep_dict(tmp, tiny_model_dir, f"sysm-{on}", trials=trials, extra=0, limit=2)
            raw["tracking"].update(system_metrics=on, system_metrics_interval_s=0.5)
            config = validate_config(raw, "test")
            out[on] = (config.tracking.uri, run_sweep(config))
        yield out
    finally:
        ray.shutdown()


def _trial_and_candidate_runs(uri: str, parent_run_id: str) -> tuple[list, list]:
    from mm4ke_ray.schema import Tag

    client = MlflowClient(uri)
    exp = client.get_run(parent_run_id).info.experiment_id
    runs = client.search_runs([exp], f"tags.`{Tag.SWEEP_RUN_ID}` = '{parent_run_id}'", max_results=1000)
    return ([r for r in runs if r.data.tags.get(Tag.ROLE) == "trial"],
            [r for r in runs if r.data.tags.get(Tag.ROLE) == "candidate"])


@pytest.mark.ray
@pytest.mark.slow
def test_each_trial_run_carries_the_system_metrics_sampled_while_its_trial_ran(system_metrics_sweeps):
    from mm4ke_ray.schema import Tag

    uri, outcome = system_metrics_sweeps[True]
    client = MlflowClient(uri)
    trials, candidates = _trial_and_candidate_runs(uri, outcome.parent_run_id)
    assert len(trials) == 2
    for run in trials:
        run_id, start, end = run.info.run_id, run.info.start_time, run.info.end_time
        own = [c for c in candidates if c.data.tags["mlflow.parentRunId"] == run_id]
        assert own and run.info.status == "FINISHED"
        # The run spans the trial itself: it ended before the driver logged the trial's candidates,
        # and lasted at least its R-SFT.
        assert start < end <= min(c.info.start_time for c in own)
        assert end - start >= 1000 * own[0].data.metrics["rsft_seconds"]
        for name in ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"):
            history = client.get_metric_history(run_id, name)
            assert history, (run.info.run_name, name)
            assert all(start <= m.timestamp <= end for m in history), name
            assert sorted(m.step for m in history)[0] == 0
        assert client.get_metric_history(run_id, "system/system_memory_usage_megabytes")[0].value > 0
        assert not any(k.startswith("system/") for c in own for k in c.data.metrics)  # on the trial run only
    # The parent run keeps the driver's machine's metrics, as before.
    assert "system/cpu_utilization_percentage" in client.get_run(outcome.parent_run_id).data.metrics
    assert all(r.data.tags[Tag.TRIAL_ID] for r in trials)


@pytest.mark.ray
@pytest.mark.slow
def test_without_system_metrics_no_run_of_the_sweep_has_any(system_metrics_sweeps):
    uri, outcome = system_metrics_sweeps[False]
    trials, candidates = _trial_and_candidate_runs(uri, outcome.parent_run_id)
    assert len(trials) == 1 and candidates
    parent = MlflowClient(uri).get_run(outcome.parent_run_id)
    assert not any(k.startswith("system/") for r in [parent, *trials, *candidates] for k in r.data.metrics)


def _rsft_result(candidates) -> dict:
    """A finished trial's result with every R-SFT parameter the search space has."""
    params = {"threshold": 0.1, "steps": 2, "epochs": 1, "lr": 3.2e-4, "layer": 1, "lr_schedule": "constant",
              "warmup_ratio": 0.0}
    return {"status": "ok", "params": params, "rsft_updates": 2, "rsft_seconds": 1.0,
            "candidates": [{"alpha": a, "sparsity": s, "kind": "sampled" if i == 0 else "extra",
                            "metrics": {"edit_score": 0.5, "general_score": 0.9, "combined_score": 0.7 + i / 100}}
                           for i, (a, s) in enumerate(candidates)]}


def test_candidate_runs_nest_under_one_run_per_rsft_trial_also_after_a_resume_and_a_spool(tmp_path):
    import time

    from mm4ke_ray.schema import RSFT_PARAMS, Tag
    from mm4ke_ray.tracking.query import load_sweep
    from mm4ke_ray.tracking.run_records import (
        candidate_rows,
        candidate_run,
        failure_run_name,
        failure_tags,
        searched_params,
        trial_run,
    )

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = SweepTracker(uri, "nesttest", str(tmp_path / "artifacts"), spool_path=tmp_path / "spool.jsonl")
    parent = tracker.start_sweep("nesttest", params={}, tags={})
    tracker.log_candidate("base", {"alpha": None}, {"combined_score": 0.6}, {Tag.KIND: "base", Tag.STATUS: "ok"})
    result = _rsft_result([(0.3, 0.567), (0.05, 0.0), (0.5, 0.2)])
    group = trial_run("a1b2c3d4", "t03", result["params"])
    client = MlflowClient(uri)

    def trial_runs() -> list:
        return client.search_runs([tracker.experiment_id], f"tags.`{Tag.ROLE}` = 'trial'")

    # A failed attempt that Tune retries, then the retry's first candidate: the trial run is made
    # with the failure (FAILED) and is FINISHED once a candidate of the trial is.
    tracker.log_candidate("a1b2c3d4-attempt1-failed", searched_params(result["params"]), {},
                          failure_tags("a1b2c3d4", "failed", "boom", attempt=1, retried=True),
                          run_name=failure_run_name("t03", "attempt1 failed"), trial=group)
    [made] = trial_runs()
    assert made.info.status == "FAILED"
    rows = candidate_rows(result, "a1b2c3d4", "t03")
    rows[0]["run_id"] = tracker.log_candidate(rows[0]["candidate"], *candidate_run(rows[0], "a1b2c3d4"),
                                              run_name=rows[0]["run_name"], trial=group)
    [made] = trial_runs()
    assert made.info.run_name == "t03 L1 lr3.2e-04 τ0.10" and made.info.status == "FINISHED"
    assert made.data.tags["mlflow.parentRunId"] == parent and made.data.tags[Tag.TRIAL_ID] == "a1b2c3d4"
    assert made.data.params == {k: str(result["params"][k]) for k in RSFT_PARAMS}
    assert "alpha" not in made.data.params  # merge parameters belong to the candidates

    # MLflow goes away: the next candidate waits in the spool, and its trial run is found (not
    # made again) when the spool is sent.
    tracker.offline_since, tracker._last_probe = time.time(), time.monotonic()
    assert tracker.log_candidate(rows[1]["candidate"], *candidate_run(rows[1], "a1b2c3d4"),
                                 run_name=rows[1]["run_name"], trial=group) is None
    other = _rsft_result([(0.2, 0.1)])
    other["params"]["lr"] = 5e-4
    [late] = candidate_rows(other, "e5f6a7b8", "t04")
    tracker.log_candidate(late["candidate"], *candidate_run(late, "e5f6a7b8"), run_name=late["run_name"],
                          trial=trial_run("e5f6a7b8", "t04", other["params"]))
    assert tracker.pending == 2 and len(trial_runs()) == 1  # t04's run is made only when its record is sent
    assert tracker.flush()

    # A resumed driver (a fresh tracker on the same parent run) logs the trial's last candidate.
    resumed = SweepTracker(uri, "nesttest")
    resumed.start_sweep("nesttest", {}, {}, parent_run_id=parent)
    resumed.log_candidate(rows[2]["candidate"], *candidate_run(rows[2], "a1b2c3d4"), run_name=rows[2]["run_name"],
                          trial=group)

    by_trial = {r.data.tags[Tag.TRIAL_ID]: r for r in trial_runs()}
    assert sorted(by_trial) == ["a1b2c3d4", "e5f6a7b8"]  # one run per trial: none made twice
    assert by_trial["e5f6a7b8"].info.run_name == "t04 L1 lr5.0e-04 τ0.10"
    assert by_trial["e5f6a7b8"].data.tags["mlflow.parentRunId"] == parent
    candidates = client.search_runs([tracker.experiment_id], f"tags.`{Tag.ROLE}` = 'candidate'")
    parent_of = {r.data.tags[Tag.CANDIDATE]: r.data.tags["mlflow.parentRunId"] for r in candidates}
    first, second = by_trial["a1b2c3d4"].info.run_id, by_trial["e5f6a7b8"].info.run_id
    assert parent_of == {"base": parent, "a1b2c3d4-attempt1-failed": first, "a1b2c3d4-c0": first,
                         "a1b2c3d4-c1": first, "a1b2c3d4-c2": first, "e5f6a7b8-c0": second}

    # Readers find every candidate of the sweep at its depth.
    sweep = load_sweep(uri, parent)
    assert sorted(r["candidate"] for r in sweep.candidates) == ["a1b2c3d4-c0", "a1b2c3d4-c1", "a1b2c3d4-c2", "base",
                                                                "e5f6a7b8-c0"]
    assert [f["candidate"] for f in sweep.failed] == ["a1b2c3d4-attempt1-failed"]

    # An orphaned trial (its driver died before Tune saved it) has its run marked as well; a later
    # trial with that id gets a run of its own.
    resumed.mark_trial("e5f6a7b8", "KILLED", {Tag.STATUS: "orphaned"})
    assert client.get_run(second).info.status == "KILLED"
    resumed.log_candidate(late["candidate"] + "x", *candidate_run(late, "e5f6a7b8"), run_name=late["run_name"],
                          trial=trial_run("e5f6a7b8", "t04", other["params"]))
    assert len([r for r in trial_runs() if r.data.tags[Tag.TRIAL_ID] == "e5f6a7b8"]) == 2


def test_a_relative_store_is_the_one_in_the_current_directory_after_a_chdir(tmp_path, monkeypatch):
    """MLflow keeps one store per URI string for the process: the default `sqlite:///runs/mlflow.db`
    used from a second directory must not write into the first directory's file."""
    first, second = tmp_path / "a", tmp_path / "b"
    for folder, name in ((first, "first"), (second, "second")):
        folder.mkdir()
        monkeypatch.chdir(folder)
        tracker = SweepTracker("sqlite:///runs/mlflow.db", name, str(folder / "artifacts"))
        assert tracker.uri == f"sqlite:///{folder}/runs/mlflow.db"
    names = {e.name for e in MlflowClient(f"sqlite:///{second}/runs/mlflow.db").search_experiments()}
    assert "second" in names and "first" not in names
