"""The MLflow spool and secret redaction, on a real MLflow SQLite store (no Ray, seconds).

The server-away path end to end (a real `mlflow server` stopped and restarted mid-sweep) is in
test_faults.py; here: the spool's file format, ordered replay, the same run resumed after a
half-sent candidate, a refused record set aside instead of blocking, and no secrets.
"""

from __future__ import annotations

import json

from mlflow import MlflowClient


def _tracker(tmp_path, spool=True):
    from mm4ke_ray.tracking.mlflow_tracker import SweepTracker

    tracker = SweepTracker(f"sqlite:///{tmp_path}/mlflow.db", "spooltest", str(tmp_path / "art"),
                           spool_path=tmp_path / "mlflow-spool.jsonl" if spool else None)
    tracker.start_sweep("s", {"model": "m", "seed": 1}, {"mm4ke.protocol": "sequential"})
    return tracker


def test_spooled_records_replay_in_order_into_the_same_runs(tmp_path):
    from mm4ke_ray.tracking.buffer import Spool, spool_header
    from mm4ke_ray.tracking.mlflow_tracker import replay

    tracker = _tracker(tmp_path)
    client = MlflowClient(tracker.uri)
    # A candidate whose run was created before the server went away: its record carries the id.
    half = client.create_run(tracker.experiment_id, run_name="t1-c0",
                             tags={"mlflow.parentRunId": tracker.parent_run_id, "mm4ke.role": "candidate"}).info.run_id
    spool = Spool(tmp_path / "later.jsonl", tracker.uri, tracker.experiment_id, tracker.parent_run_id)
    spool.append({"op": "candidate", "experiment_id": tracker.experiment_id, "name": "t1-c0", "run_id": half,
                  "tags": [["mm4ke.kind", "sampled"], ["mm4ke.trial_id", "t1"], ["mm4ke.status", "ok"]],
                  "params": [["alpha", "0.1"], ["sparsity", "0.2"]],
                  "metrics": [["edit_score", 0.5, 1000, 0], ["general_score", 0.9, 1000, 0]], "status": "FINISHED"})
    for step in (1, 2):
        spool.append({"op": "batch", "run_id": tracker.parent_run_id, "metrics": [["trials_done", float(step), 1000 + step, step]]})
    spool.append({"op": "status", "run_id": tracker.parent_run_id, "status": "FINISHED"})
    assert spool_header(spool.path)["parent_run_id"] == tracker.parent_run_id

    report = replay(spool.path)
    assert (report.sent, report.left, report.rejected) == (4, 0, 0)
    assert not spool.path.exists()
    run = client.get_run(half)  # the same run, now complete; no second run for the candidate
    assert run.info.status == "FINISHED" and run.data.metrics == {"edit_score": 0.5, "general_score": 0.9}
    assert len(client.search_runs([tracker.experiment_id], "attributes.run_name = 't1-c0'")) == 1
    assert [m.value for m in client.get_metric_history(tracker.parent_run_id, "trials_done")] == [1.0, 2.0]
    assert client.get_run(tracker.parent_run_id).info.status == "FINISHED"


def test_a_refused_record_is_set_aside_and_the_rest_is_sent(tmp_path):
    tracker = _tracker(tmp_path)
    client = MlflowClient(tracker.uri)
    # MLflow refuses to change a logged param: a permanent error, not an absent server.
    tracker._emit({"op": "batch", "run_id": tracker.parent_run_id, "params": [["seed", "2"]]})
    assert tracker.offline and tracker.pending == 1
    tracker.log_sweep_metrics({"trials_done": 1}, step=1)  # offline: waits behind the refused record
    assert tracker.flush()
    assert not tracker.offline and tracker.pending == 0
    rejected = [json.loads(line) for line in tracker.spool.rejected_path.read_text().splitlines()]
    assert len(rejected) == 1 and "seed" in json.dumps(rejected[0]) and rejected[0]["error"]
    assert client.get_run(tracker.parent_run_id).data.metrics["trials_done"] == 1.0
    assert client.get_run(tracker.parent_run_id).data.params["seed"] == "1"


def test_artifacts_are_copied_into_the_spool(tmp_path):
    from mm4ke_ray.tracking.buffer import Spool

    tracker = _tracker(tmp_path)
    folder = tmp_path / "delta"
    folder.mkdir()
    (folder / "delta.safetensors").write_bytes(b"\x00" * 16)
    spool = Spool(tmp_path / "a.jsonl", tracker.uri, tracker.experiment_id, tracker.parent_run_id)
    spool.append({"op": "artifacts", "run_id": tracker.parent_run_id, "local": str(folder), "artifact_path": "deltas/t1"})
    (folder / "delta.safetensors").unlink()  # the caller's temporary folder is gone
    assert spool.flush(tracker.client)
    names = [a.path for a in tracker.client.list_artifacts(tracker.parent_run_id, "deltas/t1")]
    assert names == ["deltas/t1/delta.safetensors"]
    assert not spool.files.exists()


def test_a_moved_spool_still_sends_its_artifacts(tmp_path):
    # A sweep folder moved with its spool: the artifact copies are found beside the spool's new
    # place (recorded relative to it), not at the path they were copied to.
    import shutil

    from mm4ke_ray.tracking.buffer import Spool

    tracker = _tracker(tmp_path)
    folder = tmp_path / "delta"
    folder.mkdir()
    (folder / "delta.safetensors").write_bytes(b"\x00" * 16)
    spool = Spool(tmp_path / "sweep" / "a.jsonl", tracker.uri, tracker.experiment_id, tracker.parent_run_id)
    spool.append({"op": "artifacts", "run_id": tracker.parent_run_id, "local": str(folder), "artifact_path": "deltas/t1"})
    spool.append({"op": "batch", "run_id": tracker.parent_run_id, "metrics": [["trials_done", 1.0, 1000, 1]]})
    shutil.move(tmp_path / "sweep", tmp_path / "moved")
    moved = Spool(tmp_path / "moved" / "a.jsonl", tracker.uri, tracker.experiment_id, tracker.parent_run_id)
    assert [r["local"] for r in moved.records() if "local" in r] == [str(next(moved.files.iterdir()))]
    moved._rewrite(moved.records())  # rewritten (a partial flush) it stays relative
    assert not json.loads((tmp_path / "moved" / "a.jsonl").read_text().splitlines()[1])["local"].startswith("/")
    assert moved.flush(tracker.client)
    names = [a.path for a in tracker.client.list_artifacts(tracker.parent_run_id, "deltas/t1")]
    assert names == ["deltas/t1/delta.safetensors"]
    assert not (tmp_path / "sweep").exists()


def test_secrets_never_reach_mlflow(tmp_path, monkeypatch):
    from mm4ke_ray.tracking.mlflow_tracker import redact

    monkeypatch.setenv("HF_TOKEN", "hf_abcdefSECRET123456")
    monkeypatch.setenv("MY_SERVICE_API_KEY", "k-SECRET-42424242")
    assert redact("token=hf_abcdefSECRET123456") == "token=***"
    assert redact("https://alice:pa55word@host/db") == "https://alice:***@host/db"
    tracker = _tracker(tmp_path, spool=False)
    tracker.log_candidate("c", {"model": "x hf_abcdefSECRET123456"}, {"m": 1.0},
                          {"note": "key k-SECRET-42424242", "uri": "postgresql://u:pw-123@db/mlflow"})
    tracker.log_text("edits: https://u:hunter22@example.com/e.json\n", "config.yaml")
    runs = MlflowClient(tracker.uri).search_runs([tracker.experiment_id])
    blob = json.dumps([{**r.data.params, **r.data.tags} for r in runs])
    blob += open(MlflowClient(tracker.uri).download_artifacts(tracker.parent_run_id, "config.yaml", str(tmp_path))).read()
    for secret in ("hf_abcdefSECRET123456", "k-SECRET-42424242", "pw-123", "hunter22"):
        assert secret not in blob
    assert "***" in blob
