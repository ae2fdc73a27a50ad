"""Pareto artifacts on the sweep's MLflow parent run, `mm4ke-ray pareto`, and `mm4ke-ray export`.

A small sweep is logged exactly as the sweep driver logs one, without a Ray cluster: real R-SFT
deltas (`run_rsft_to_dir`, the trial's own code) of a tiny Qwen2 on 5 real ZsRE records, real
candidate evaluations (`CandidateEvaluator`; locality is the general objective), written
through the sweep's `SweepTracker` and `SweepCallback` (Tune `Trial` stubs and `Checkpoint`s
are Ray's own classes; no cluster is started). The same evaluated sweep is logged to a SQLite
store and to an `mlflow server` started on 127.0.0.1 by the test.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from conftest import ZSRE

OBJ = ("edit_score", "general_score")
EDIT_METRICS = ("edit_succ", "generalization", "portability", "locality")
TRIALS = {  # two R-SFT runs on different layers, each with the sampled point + pure R-SFT + 2 extra
    "aaaa1_00000": {
        "threshold": 0.05,
        "steps": 3,
        "epochs": 2,
        "lr": 1e-3,
        "layer": 3,
        "alpha": 0.3,
        "sparsity": 0.2,
    },
    "aaaa1_00001": {
        "threshold": 0.1,
        "steps": 2,
        "epochs": 2,
        "lr": 3e-3,
        "layer": 1,
        "alpha": 0.5,
        "sparsity": 0.6,
    },
}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_model_dir):
    """The sweep's config, its two R-SFT deltas and every candidate's real metrics (computed once)."""
    from mm4ke_ray.config import validate_config
    from mm4ke_ray.evaluate.candidate import CandidateEvaluator, eval_settings
    from mm4ke_ray.search.rsft_runner import trial_rsft as run_rsft_to_dir
    from mm4ke_ray.search.space import merge_candidates

    tmp = tmp_path_factory.mktemp("evaluated")
    config = validate_config(
        {
            "name": "paretotest",
            "model": {"name": str(tiny_model_dir)},
            "data": {"edits": str(ZSRE), "limit": 5},
            "evaluation": {"batch_size": 8},
            "search": {"num_trials": len(TRIALS), "seed": 0},
            "merge": {"extra_candidates": 3},
        },
        "test",
    )
    settings = eval_settings(config, "cpu")
    evaluator = CandidateEvaluator(settings)
    trials = {}
    for trial_id, params in TRIALS.items():
        delta_dir = tmp / trial_id
        summary = run_rsft_to_dir(settings, config.search, params, str(delta_dir), "cpu")
        assert summary["status"] == "ok"
        from mm4ke_ray.delta import load_delta

        delta, _ = load_delta(delta_dir)
        cands = merge_candidates(
            config.search,
            params["alpha"],
            params["sparsity"],
            config.merge.extra_candidates,
            seed=7,
        )
        for cand in cands:
            cand["metrics"] = evaluator.evaluate(
                delta, cand["alpha"], cand["sparsity"], seed=config.search.seed
            )
        result = {
            "status": "ok",
            **{k: v for k, v in cands[0]["metrics"].items() if isinstance(v, int | float)},
            "rsft_updates": summary["rsft_updates"],
            "rsft_seconds": summary["rsft_seconds"],
            "params": params,
            "candidates": cands,
        }
        trials[trial_id] = (params, delta_dir, result)
    return {"config": config, "reference": evaluator.reference.metrics, "trials": trials}


def log_sweep(evaluated: dict, uri: str, artifact_location: str | None) -> dict:
    """Log the evaluated sweep to `uri` the way `run_sweep` does; refresh the front after each trial."""
    import yaml
    from ray.tune import Checkpoint
    from ray.tune.experiment import Trial
    from rich.console import Console

    from mm4ke_ray.search.callback import SweepCallback
    from mm4ke_ray.tracking.mlflow_tracker import SweepTracker
    from mm4ke_ray.tracking.pareto_artifacts import publish_pareto

    config = evaluated["config"]
    tracker = SweepTracker(uri, "paretotest", artifact_location)
    parent = tracker.start_sweep(
        config.name,
        params={
            "protocol": config.evaluation.protocol,
            "prompt_format": config.data.prompt_format,
            "model": config.model.name,
            "edits": config.data.edits,
            "num_trials": config.search.num_trials,
            "sampler": config.search.sampler,
            "merge_method": config.merge.method,
            "extra_candidates": config.merge.extra_candidates,
            "seed": config.search.seed,
        },
        tags={"mm4ke.git_revision": "test", "mm4ke.protocol": config.evaluation.protocol},
    )
    tracker.client.log_text(
        parent, yaml.safe_dump(config.model_dump(), sort_keys=False), "config.yaml"
    )
    base = {"candidate": "base", "kind": "base", **evaluated["reference"]}
    tracker.log_candidate(
        "base",
        {"alpha": None},
        evaluated["reference"],
        {"mm4ke.kind": "base", "mm4ke.status": "ok"},
    )
    callback = SweepCallback(
        tracker,
        len(TRIALS),
        on_rows=lambda rows: publish_pareto(tracker, rows, base),
        console=Console(file=io.StringIO()),
    )
    for trial_id, (params, delta_dir, result) in evaluated["trials"].items():
        trial = Trial("sweep_trial", config=params, trial_id=trial_id, stub=True)
        callback.on_checkpoint(0, [], trial, Checkpoint.from_directory(str(delta_dir)))
        callback.on_trial_result(0, [], trial, result)
    tracker.finish()
    publish_pareto(tracker, callback.rows, base)
    return {"uri": uri, "parent": parent, "rows": callback.rows}


# -- backends -----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """An `mlflow server` on 127.0.0.1 (SQLite backend, proxied artifacts in tmp); stopped afterwards."""
    tmp = tmp_path_factory.mktemp("server")
    port = _free_port()
    log = open(tmp / "server.log", "w")  # noqa: SIM115 - closed in teardown
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp}/server.db",
            "--artifacts-destination",
            str(tmp / "artifacts"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(
                    f"mlflow server did not start:\n{(tmp / 'server.log').read_text()[-3000:]}"
                )
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module", params=["sqlite", pytest.param("server", marks=pytest.mark.slow)])
def sweep(request, evaluated, tmp_path_factory):
    if request.param == "sqlite":
        tmp = tmp_path_factory.mktemp("sqlite")
        return log_sweep(evaluated, f"sqlite:///{tmp}/mlflow.db", str(tmp / "artifacts"))
    # Against a server, artifacts go through it (mlflow-artifacts:/), as on a real cluster.
    return log_sweep(evaluated, request.getfixturevalue("mlflow_server"), None)


def _cli(*argv: str) -> int:
    from mm4ke_ray.cli import main

    return main(list(argv))


def _read_csv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def _pareto_artifacts(sweep: dict, dst: Path) -> Path:
    from mlflow import MlflowClient

    return Path(MlflowClient(sweep["uri"]).download_artifacts(sweep["parent"], "pareto", str(dst)))


def _dominates(b: dict, a: dict) -> bool:
    vb, va = [float(b[k]) for k in OBJ], [float(a[k]) for k in OBJ]
    return all(x >= y for x, y in zip(vb, va, strict=True)) and any(
        x > y for x, y in zip(vb, va, strict=True)
    )


# -- the tests ----------------------------------------------------------------------------------


def test_parent_run_holds_the_front_and_it_is_exactly_the_non_dominated_set(sweep, tmp_path):
    from mlflow import MlflowClient

    folder = _pareto_artifacts(sweep, tmp_path)
    assert {p.name for p in folder.iterdir()} == {"all.csv", "front.csv", "front.png", "front.html"}
    all_rows = _read_csv((folder / "all.csv").read_text())
    front = _read_csv((folder / "front.csv").read_text())
    assert len(all_rows) == len(sweep["rows"]) + 1 and all_rows[0]["candidate"] == "base"
    expected = {r["candidate"] for r in all_rows if not any(_dominates(o, r) for o in all_rows)}
    assert {r["candidate"] for r in front} == expected and len(front) == len(expected)
    assert {r["candidate"] for r in all_rows if r["on_front"] == "True"} == expected
    combined = [float(r["combined_score"]) for r in front]
    assert combined == sorted(combined, reverse=True)
    assert (
        len(front) >= 2
    )  # locality (general ability without lm-eval tasks) trades off against the edits
    assert {
        "alpha",
        "sparsity",
        "density",
        "lr",
        "layer",
        "threshold",
        "steps",
        "epochs",
        "edit_succ",
        "generalization",
        "portability",
        "locality",
        "combined_score",
        "run_id",
    } <= set(front[0])
    png = (folder / "front.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    html = (folder / "front.html").read_text()
    assert "<svg" in html and all(r["candidate"] in html for r in front)

    client = MlflowClient(sweep["uri"])
    parent = client.get_run(sweep["parent"])
    edited = [r for r in all_rows if r["kind"] != "base"]
    best = max(edited, key=lambda r: float(r["combined_score"]))
    assert parent.data.tags["mm4ke.best_candidate"] == best["candidate"]
    assert parent.data.tags["mm4ke.best_run_id"] == best["run_id"]
    assert float(parent.data.tags["mm4ke.best_combined_score"]) == float(best["combined_score"])
    children = client.search_runs(  # the candidates, under their trial runs or (base) the parent
        [parent.info.experiment_id], f"tags.`mm4ke.sweep_run_id` = '{sweep['parent']}' AND tags.`mm4ke.role` = 'candidate'"
    )
    tagged = {r.data.tags["mm4ke.candidate"] for r in children if r.data.tags.get("pareto") == "true"}
    untagged = {r.data.tags["mm4ke.candidate"] for r in children if r.data.tags.get("pareto") == "false"}
    assert tagged == expected and tagged | untagged == {r["candidate"] for r in all_rows}


def test_pareto_command_prints_the_front_csv_rows(sweep, tmp_path, capsys):
    front = _read_csv((_pareto_artifacts(sweep, tmp_path) / "front.csv").read_text())
    assert (
        _cli("pareto", "--tracking-uri", sweep["uri"], "--sweep", "paretotest", "--format", "csv")
        == 0
    )
    assert _read_csv(capsys.readouterr().out) == front
    assert (
        _cli(
            "pareto",
            "--tracking-uri",
            sweep["uri"],
            "--sweep",
            sweep["parent"],
            "--format",
            "json",
            "--experiment",
            "paretotest",
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in printed] == [r["run_id"] for r in front]
    assert _cli("pareto", "--tracking-uri", sweep["uri"], "--sweep", "paretotest") == 0
    table = capsys.readouterr().out
    assert all(r["candidate"] in table for r in front)
    assert _cli("pareto", "--tracking-uri", sweep["uri"], "--sweep", "no-such-sweep") == 2
    assert "paretotest" in capsys.readouterr().err  # the error lists the sweeps that exist


def _metrics_of(uri: str, run_id: str) -> dict:
    from mlflow import MlflowClient

    return MlflowClient(uri).get_run(run_id).data.metrics


def _check_export(out: Path, sweep: dict, run_id: str, model_dir: Path) -> None:
    """The directory loads, differs from the base only in the edited layer's MLP, verifies, and scores as recorded."""
    import hashlib

    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from mm4ke_ray.data import load_edit_records
    from mm4ke_ray.evaluate.edit_metrics import EditEvaluator
    from mm4ke_ray.modeling import load_model, load_tokenizer

    recipe = json.loads((out / "mm4ke_merge.json").read_text())
    assert (
        recipe["source"]["candidate_run_id"] == run_id
        and recipe["verification"]["status"] == "passed"
    )
    AutoModelForCausalLM.from_pretrained(out)
    # The card shows the first edits with the written model's own generated answer (issue 26 §3).
    examples = recipe["edits"]["examples"]
    prompts = [r.prompt for r in load_edit_records(recipe["edits"]["source"]).records[:len(examples)]]
    assert len(examples) == min(3, recipe["edits"]["count"]) and [x["prompt"] for x in examples] == prompts
    assert all(isinstance(x["generated"], str) for x in examples)
    assert f"| {examples[0]['prompt']} | {examples[0]['target']} |" in (out / "README.md").read_text()
    layer = int(recipe["rsft"]["layer"])
    base, exported = (
        load_file(model_dir / "model.safetensors"),
        load_file(out / "model.safetensors"),
    )
    assert set(base) == set(exported)
    changed = {n for n in base if not torch.equal(base[n], exported[n])}
    assert changed and all(n.startswith(f"model.layers.{layer}.mlp.") for n in changed), changed

    listed = dict(
        reversed(line.split("  ", 1))
        for line in (out / "checksums.sha256").read_text().splitlines()
    )
    files = {p.name for p in out.iterdir() if p.name != "checksums.sha256"}
    assert (
        set(listed) == files
        and {"README.md", "mm4ke_merge.json", "config.json", "tokenizer.json"} <= files
    )
    assert all(
        hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
        for name, digest in listed.items()
    )

    # Re-evaluate independently of the export code: base locality reference + the reloaded model.
    records = load_edit_records(str(ZSRE), limit=5).records
    ev = EditEvaluator(load_tokenizer(str(out)), records, prompt_format="plain", batch_size=8)
    reference = ev.base_predictions(load_model(str(model_dir)))
    measured = ev.evaluate(load_model(str(out)), reference).as_dict()
    recorded = _metrics_of(sweep["uri"], run_id)
    for name in EDIT_METRICS:
        assert measured[name] == pytest.approx(recorded[name], abs=1e-9), name

    card = (out / "README.md").read_text()
    assert "**5 edits**" in card and str(model_dir) in card and "pure R-SFT" in card
    assert "| α (base weight" in card and recipe["source"]["sweep_run_id"] in card


def test_export_best_writes_a_verified_directory(sweep, tmp_path, tiny_model_dir, capsys):
    from mlflow import MlflowClient

    client = MlflowClient(sweep["uri"])
    parent = client.get_run(sweep["parent"])
    runs = client.search_runs(
        [parent.info.experiment_id], f"tags.`mm4ke.sweep_run_id` = '{sweep['parent']}' AND tags.`mm4ke.role` = 'candidate'"
    )
    edited = [r for r in runs if r.data.tags.get("mm4ke.kind") != "base"]
    best = max(edited, key=lambda r: r.data.metrics["combined_score"])

    out = tmp_path / "best"
    assert (
        _cli(
            "export",
            "--tracking-uri",
            sweep["uri"],
            "--sweep",
            "paretotest",
            "--pick",
            "best",
            "--out",
            str(out),
        )
        == 0
    )
    _check_export(out, sweep, best.info.run_id, tiny_model_dir)

    # A non-empty --out is refused without --force (and nothing is touched) ...
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    pure = next(
        r
        for r in edited
        if r.data.tags["mm4ke.kind"] == "pure_rsft" and r.info.run_id != best.info.run_id
    )
    args = [
        "export",
        "--tracking-uri",
        sweep["uri"],
        "--sweep",
        sweep["parent"],
        "--pick",
        pure.info.run_id,
        "--out",
        str(out),
    ]
    assert _cli(*args) == 2
    assert "--force" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    # ... and with --force replaced by another candidate, here also registered in the Model Registry.
    assert _cli(*args, "--force", "--register", "paretotest-model") == 0
    _check_export(out, sweep, pure.info.run_id, tiny_model_dir)
    versions = client.search_model_versions("name = 'paretotest-model'")
    assert versions and versions[0].run_id == pure.info.run_id
    # The version is made from a LoggedModel of the candidate run, which holds the directory.
    from mlflow.artifacts import download_artifacts

    stored = client.get_model_version_download_uri("paretotest-model", versions[0].version)
    fetched = Path(download_artifacts(stored, dst_path=str(tmp_path / "registered"), tracking_uri=sweep["uri"]))
    assert (fetched / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
    assert versions[0].tags["mm4ke.candidate"] == pure.data.tags["mm4ke.candidate"]
    assert versions[0].source.startswith("models:/m-")
    models = {m.source_run_id: m for m in client.search_logged_models([parent.info.experiment_id])}
    assert models[pure.info.run_id].model_id == versions[0].source.removeprefix("models:/")
    assert models[best.info.run_id].tags["mm4ke.export_dir"] == str((tmp_path / "best").resolve())

    # A non-export directory is never wiped, even with --force.
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert (
        _cli(
            "export",
            "--tracking-uri",
            sweep["uri"],
            "--sweep",
            "paretotest",
            "--out",
            str(other),
            "--force",
        )
        == 2
    )
    assert (other / "notes.txt").read_text() == "mine"


def test_export_fails_loudly_when_the_recorded_metrics_are_not_reproduced(sweep, tmp_path, capsys):
    from mlflow import MlflowClient

    if not sweep["uri"].startswith("sqlite"):
        pytest.skip("changes a recorded metric; done on a copy of the SQLite store only")
    db = Path(sweep["uri"].removeprefix("sqlite:///"))
    copy = tmp_path / "copy.db"
    shutil.copy(db, copy)
    uri = f"sqlite:///{copy}"
    client = MlflowClient(uri)
    run_id = client.get_run(sweep["parent"]).data.tags["mm4ke.best_run_id"]
    recorded = client.get_run(run_id).data.metrics["edit_succ"]
    client.log_metric(run_id, "edit_succ", recorded + 1.0)
    out = tmp_path / "bad"
    assert (
        _cli(
            "export",
            "--tracking-uri",
            uri,
            "--sweep",
            "paretotest",
            "--pick",
            run_id,
            "--out",
            str(out),
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "VERIFICATION FAILED" in err and "edit_succ" in err
    assert (out / "VERIFICATION_FAILED.json").is_file()
    assert not (out / "README.md").exists() and not (out / "checksums.sha256").exists()


def test_pareto_tags_are_reset_when_a_candidate_leaves_the_front(tmp_path):
    from mlflow import MlflowClient

    from mm4ke_ray.tracking.mlflow_tracker import SweepTracker
    from mm4ke_ray.tracking.pareto_artifacts import ParetoPublisher

    tracker = SweepTracker(f"sqlite:///{tmp_path}/t.db", "tags", str(tmp_path / "art"))
    tracker.start_sweep("tagsweep", {"model": "m"}, {})
    base = {"edit_score": 0.0, "general_score": 1.0, "combined_score": 0.5}
    tracker.log_candidate("base", {}, base, {"mm4ke.kind": "base"})

    def row(name, edit, general):
        metrics = {
            "edit_score": edit,
            "general_score": general,
            "combined_score": (edit + general) / 2,
        }
        run_id = tracker.log_candidate(
            name, {"alpha": 0.1, "sparsity": 0.0}, metrics, {"mm4ke.kind": "sampled"}
        )
        return {
            "candidate": name,
            "kind": "sampled",
            "alpha": 0.1,
            "sparsity": 0.0,
            "run_id": run_id,
            **metrics,
        }

    first = [row("a", 0.6, 0.6), row("b", 0.4, 0.9)]
    publisher = ParetoPublisher(tracker, base, every=2)
    publisher(first[:1])  # the first of every two updates publishes nothing
    client = MlflowClient(tracker.uri)
    assert client.list_artifacts(tracker.parent_run_id) == []
    publisher(first)
    assert {r["candidate"]: client.get_run(r["run_id"]).data.tags["pareto"] for r in first} == {
        "a": "true",
        "b": "true",
    }
    rows = [*first, row("c", 0.7, 0.95)]  # dominates both a and b
    publisher.final(rows)
    assert {r["candidate"]: client.get_run(r["run_id"]).data.tags["pareto"] for r in rows} == {
        "a": "false",
        "b": "false",
        "c": "true",
    }
    parent = client.get_run(tracker.parent_run_id).data.tags
    assert (
        parent["mm4ke.best_candidate"] == "c" and parent["mm4ke.pareto_size"] == "2"
    )  # c and the base
    base_run = client.search_runs([tracker.experiment_id], "attributes.run_name = 'base'")[0]
    assert base_run.data.tags["pareto"] == "true"
