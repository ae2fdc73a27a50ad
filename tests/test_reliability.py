"""Reliability and security III: files the user owns stay as they were, state read back is
validated, and bad values are refused where they are typed. Unit and command-level checks on
real MLflow SQLite stores and real files (no Ray, seconds); the bad-input corpus
(tests/bad_inputs/) holds the command-line cases, tests/test_interrupt.py the Ctrl-C sweep.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow import MlflowClient

from mm4ke_ray.cli import main
from mm4ke_ray.config import SweepConfig, load_config, validate_config
from mm4ke_ray.errors import UserError


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): _digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _mlflow_store(tmp_path: Path) -> str:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    client.create_experiment("x", artifact_location=str(tmp_path / "art"))
    return uri


def _other_app_db(path: Path) -> Path:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    con.execute("INSERT INTO notes (text) VALUES ('mine')")
    con.commit()
    con.close()
    return path


# -- 1. files the user owns are never changed or deleted -------------------------------------------

@pytest.mark.parametrize("text", [
    '{"id": 1, "text": "mine"}\n{"id": 2}\n',  # any JSON Lines file
    '{"op_code": 0, "worker_id": "w", "study_name": "s", "directions": [2, 2]}\n',  # an Optuna journal
    '{"op": "header"}\n{"op": "batch", "run_id": "r"}\n',  # a header without the tracking URI
    '{"op": "header", "uri": "sqlite:///x.db", "format": "other-tool"}\n',
    '{"op": "header", "uri": "sqlite:///x.db", "version": 99}\n',
])
def test_replaying_a_file_that_is_not_a_spool_changes_nothing(tmp_path, text, capsys):
    path = tmp_path / "optuna-study.journal"
    path.write_text(text)
    (tmp_path / "optuna-study-files").mkdir()
    (tmp_path / "optuna-study-files" / "keep.bin").write_bytes(b"precious")
    before = _tree(tmp_path)
    assert main(["sweep", "--replay-spool", str(path)]) == 2
    assert "not an MLflow spool" in capsys.readouterr().err
    assert _tree(tmp_path) == before


def test_a_sent_spool_removes_only_its_own_copies(tmp_path):
    from mm4ke_ray.tracking.buffer import SPOOL_FORMAT, Spool, spool_header, spool_problem

    uri = _mlflow_store(tmp_path)
    client = MlflowClient(uri)
    run_id = client.create_run(client.get_experiment_by_name("x").experiment_id).info.run_id
    folder = tmp_path / "delta"
    folder.mkdir()
    (folder / "delta.safetensors").write_bytes(b"\x00" * 8)
    spool = Spool(tmp_path / "mlflow-spool.jsonl", uri)
    spool.append({"op": "artifacts", "run_id": run_id, "local": str(folder), "artifact_path": "d"})
    assert spool_problem(spool.path) is None and spool_header(spool.path)["format"] == SPOOL_FORMAT
    (spool.files / "user-notes.txt").write_text("not the spool's")  # someone else's file in the folder
    assert spool.flush(client)
    assert not spool.path.exists()
    assert [p.name for p in spool.files.iterdir()] == ["user-notes.txt"]  # the sent copy went, nothing else
    assert (folder / "delta.safetensors").is_file()  # the caller's source was never the spool's


@pytest.mark.parametrize("argv", [
    ["pareto", "--tracking-uri", "{uri}", "--sweep", "s"],
    ["export", "--tracking-uri", "{uri}", "--sweep", "s", "--out", "{tmp}/out"],
])
@pytest.mark.parametrize("kind", ["empty", "other_app", "truncated_mlflow"])
def test_read_only_commands_never_write_into_a_store(tmp_path, argv, kind, capsys):
    db = tmp_path / "store.db"
    if kind == "empty":
        db.touch()
    elif kind == "other_app":
        _other_app_db(db)
    else:
        full = Path(_mlflow_store(tmp_path).removeprefix("sqlite:///"))
        db.write_bytes(full.read_bytes()[: full.stat().st_size // 3])
    before = _digest(db)
    args = [a.replace("{uri}", f"sqlite:///{db}").replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "store.db" in err and "Traceback" not in err
    assert _digest(db) == before
    assert not (tmp_path / "out").exists()


def test_a_sweep_creates_a_store_only_where_nothing_is(tmp_path):
    from mm4ke_ray.tracking.store_check import store_problem

    assert store_problem(f"sqlite:///{tmp_path}/new.db", create=True) is None
    assert "no MLflow database" in store_problem(f"sqlite:///{tmp_path}/new.db", create=False)
    assert store_problem(_mlflow_store(tmp_path), create=False) is None  # an MLflow store is opened
    other = _other_app_db(tmp_path / "app.db")
    problem = store_problem(f"sqlite:///{other}", create=True)
    assert "not an MLflow store" in problem and "left as it is" in problem
    assert store_problem("http://127.0.0.1:5000", create=False) is None  # servers: their own checks


@pytest.mark.parametrize("kind", ["other_app", "truncated_mlflow"])
def test_a_sweep_refuses_another_apps_database_before_anything(tmp_path, tiny_model_dir, capsys, kind):
    import yaml
    from fault_helpers import sweep_dict

    other = tmp_path / "app.db"
    if kind == "other_app":
        _other_app_db(other)
    else:  # a sweep's store cut short (copied mid-write, disk full): it failed after Ray and the parent run
        (tmp_path / "orig").mkdir()
        full = Path(_mlflow_store(tmp_path / "orig").removeprefix("sqlite:///"))
        other.write_bytes(full.read_bytes()[: full.stat().st_size // 3])
    before = _digest(other)
    config = sweep_dict(tmp_path, tiny_model_dir, "s", tracking_uri=f"sqlite:///{other}")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(config))
    assert main(["sweep", str(tmp_path / "s.yaml")]) == 2
    assert "tracking.uri" in capsys.readouterr().err
    assert _digest(other) == before and not (tmp_path / "ray").exists()


def test_evaluate_out_is_replaced_only_with_force(tmp_path, capsys):
    out = tmp_path / "metrics.json"
    out.write_text('{"mine": true}')
    assert main(["evaluate", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "d.json"),
                 "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err and out.read_text() == '{"mine": true}'
    # With --force the check passes and the next problem (the missing data) is reported instead.
    assert main(["evaluate", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "d.json"),
                 "--out", str(out), "--force"]) == 2
    assert "exists" not in capsys.readouterr().err


# -- 3. state a resume reads -----------------------------------------------------------------------

@pytest.mark.parametrize("rungs", [None, [], [1, 2], {"x": {}}, {"0": None}, {"0": {"a": {}}}, {"0": {"0": [1]}}])
def test_a_rung_record_of_the_wrong_shape_is_ignored_and_overwritten(tmp_path, rungs):
    from mm4ke_ray.search.rung_store import FORMAT, RungStore

    key = {"delta": "d", "plan": [1]}
    (tmp_path / "t1.json").write_text(json.dumps({"format": FORMAT, "key": key, "rungs": rungs}))
    store = RungStore(str(tmp_path), "t1", key)
    assert store.results == {} and store.get(0) == {}
    store.put(0, {1: {"edit_score": 0.5}})
    assert RungStore(str(tmp_path), "t1", key).get(0) == {1: {"edit_score": 0.5}}


@pytest.mark.parametrize("doc", ["null", "[1, 2]", '"text"'])
def test_a_rung_record_that_is_not_an_object_is_ignored(tmp_path, doc):
    from mm4ke_ray.search.rung_store import RungStore

    (tmp_path / "t1.json").write_text(doc)
    assert RungStore(str(tmp_path), "t1", {"k": 1}).results == {}


@pytest.mark.parametrize("raw", [b"not json", b"null", b'{"a": 1}', b"[1, 2]", b"[[0.5]]", b'[[0.5, "x"]]',
                                 b"[[true, 0.5]]", b"[[0.1, 0.2, 0.3]]"])
def test_a_front_board_of_the_wrong_shape_is_read_as_absent(monkeypatch, raw):
    from ray.experimental import internal_kv

    from mm4ke_ray.search.front_board import read_front

    monkeypatch.setattr(internal_kv, "_internal_kv_get", lambda key, namespace=None: raw)
    assert read_front("k") == []  # the trial goes on as with no front, never a crash on every retry
    monkeypatch.setattr(internal_kv, "_internal_kv_get", lambda key, namespace=None: b"[[0.9, 0.3]]")
    assert read_front("k") == [[0.9, 0.3]]


def _sweep_folder(root: Path, storage_path: str, uri: str) -> Path:
    from mm4ke_ray.search.resume import MANIFEST, Manifest

    folder = root / "runs" / "ray" / "s"
    folder.mkdir(parents=True)
    config = SweepConfig().model_dump()
    config["storage_path"], config["tracking"]["uri"] = storage_path, uri
    manifest = Manifest(config=config, source="c.yaml", parent_run_id="p", experiment_dir=str(folder), created=1.0)
    (folder / MANIFEST).write_text(json.dumps(manifest.__dict__))
    (folder / "tuner.pkl").write_bytes(pickle.dumps({"state": list(range(10))}))
    return folder


def test_a_relative_store_of_an_older_manifest_resolves_against_where_the_sweep_started(tmp_path, monkeypatch):
    from mm4ke_ray.search.resume import read_manifest

    folder = _sweep_folder(tmp_path / "project", "runs/ray", "sqlite:///runs/mlflow.db")
    monkeypatch.chdir(tmp_path)  # resumed from another directory
    manifest = read_manifest(str(folder))
    assert manifest.config["tracking"]["uri"] == f"sqlite:///{tmp_path}/project/runs/mlflow.db"


def test_new_sweeps_record_an_absolute_store(tmp_path, monkeypatch):
    from mm4ke_ray.tracking.store_check import absolute_uri

    monkeypatch.chdir(tmp_path)
    assert absolute_uri("sqlite:///runs/mlflow.db") == f"sqlite:///{tmp_path}/runs/mlflow.db"
    assert absolute_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert absolute_uri("http://h:5000") == "http://h:5000"


def test_a_cut_tuner_pkl_is_refused_before_a_resume_touches_anything(tmp_path):
    from mm4ke_ray.search.resume import read_manifest

    folder = _sweep_folder(tmp_path, str(tmp_path / "runs" / "ray"), f"sqlite:///{tmp_path}/m.db")
    whole = (folder / "tuner.pkl").read_bytes()
    (folder / "tuner.pkl").write_bytes(whole[: len(whole) // 2])
    before = _tree(tmp_path)
    with pytest.raises(UserError, match="tuner.pkl .* is damaged"):
        read_manifest(str(folder))
    assert _tree(tmp_path) == before


def test_a_resume_never_creates_an_empty_store(tmp_path):
    from mm4ke_ray.preflight import _check_tracking

    assert "no MLflow database" in _check_tracking(f"sqlite:///{tmp_path}/gone.db", existing_store=True)
    assert not (tmp_path / "gone.db").exists()


# -- 5. bad values refused where they are typed ----------------------------------------------------

@pytest.mark.parametrize("name", [".", "..", "a/b", "../x", "a\\b", "x\ny"])
def test_sweep_names_cannot_leave_the_storage_folder(name):
    with pytest.raises(UserError, match="name: must be a plain folder name"):
        validate_config({"name": name})


@pytest.mark.parametrize("data, field", [
    ({"objectives": {"edit_weights": {"edit_succ": math.inf}}}, "objectives.edit_weights.edit_succ"),
    ({"objectives": {"combined_edit_weight": math.nan}}, "objectives.combined_edit_weight"),
    ({"resources": {"eval_cpus": math.inf}}, "resources.eval_cpus"),
    ({"evaluation": {"fidelity": {"margin_z": math.inf}}}, "evaluation.fidelity.margin_z"),
    ({"evaluation": {"general_limit": math.inf}}, "evaluation.general_limit"),
    ({"search": {"space": {"lr": {"low": 1e-4, "high": math.inf}}}}, "search.space.lr"),
    ({"search": {"seed": -1}}, "search.seed"),
    ({"search": {"seed": 2**32}}, "search.seed"),
    ({"search": {"num_trials": 10**11}}, "search.num_trials"),
    ({"evaluation": {"fidelity": {"rungs": 10**9}}}, "evaluation.fidelity.rungs"),
    ({"search": {"space": {"epochs": 10**18}}}, "search.space.epochs"),
    ({"max_failures": 10**12}, "max_failures"),
])
def test_numbers_are_finite_and_bounded(data, field):
    with pytest.raises(UserError, match=field.replace(".", r"\.")):
        validate_config(data)


def test_duplicate_keys_and_non_utf8_are_refused_with_the_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("search:\n  seed: 1\nsearch:\n  seed: 2\n")
    with pytest.raises(UserError, match="line 3.*'search' is given twice"):
        load_config(path)
    path.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        load_config(path)


def test_plan_counts_eval_rounds_by_arithmetic():
    from mm4ke_ray.planning.estimate import _eval_rounds

    def looped(trials, c, k, a):
        return sum(math.ceil(min(c, trials - f) * k / a) for f in range(0, trials, c))

    for trials, c, k, a in [(1, 1, 1, 1), (7, 3, 5, 2), (8, 4, 3, 3), (10, 16, 2, 5), (100, 7, 4, 3)]:
        work = SimpleNamespace(trials=trials, concurrent_trials=c, candidates_per_delta=k, eval_actors=a)
        assert _eval_rounds(work) == looped(trials, c, k, a)
    huge = SimpleNamespace(trials=10**11, concurrent_trials=3, candidates_per_delta=5, eval_actors=2)
    assert _eval_rounds(huge) == (10**11 // 3) * 8 + 3  # answered at once, not in 3·10^10 steps


def test_warm_start_keeps_the_servers_port():
    from mm4ke_ray.tracking.warm_sources import parse_spec

    assert parse_spec("http://127.0.0.1:5000:my-sweep") == ("http://127.0.0.1:5000", "my-sweep")
    with pytest.raises(UserError, match="port"):
        parse_spec("http://127.0.0.1:5000")


def _logged_sweep(tmp_path: Path, candidates: dict[str, str]) -> str:
    """A sweep parent run with candidates {name: mm4ke.status}; the tracking URI."""
    from mm4ke_ray.schema import Tag
    from mm4ke_ray.tracking.mlflow_tracker import SweepTracker

    tracker = SweepTracker(f"sqlite:///{tmp_path}/mlflow.db", "e", str(tmp_path / "art"))
    tracker.start_sweep("s", {"seed": 1}, {})
    for name, status in candidates.items():
        tracker.log_candidate(name, {"alpha": 0.1}, {"edit_score": 0.5, "general_score": 0.9},
                              {Tag.KIND: "sampled", Tag.STATUS: status})
    tracker.finish()
    return tracker.uri


def test_picking_a_pruned_candidate_says_pruned(tmp_path):
    from mm4ke_ray.tracking.query import load_sweep

    sweep = load_sweep(_logged_sweep(tmp_path, {"t1-c0": "ok", "t1-c1": "pruned"}), "s")
    assert sweep.find("t1-c0")["candidate"] == "t1-c0"
    with pytest.raises(UserError, match="'t1-c1' of sweep 's' was pruned"):
        sweep.find("t1-c1")


def test_pareto_on_a_sweep_without_candidates_says_so(tmp_path, capsys):
    uri = _logged_sweep(tmp_path, {})
    assert main(["pareto", "--tracking-uri", uri, "--sweep", "s"]) == 0
    assert "has no edited candidate yet" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["merge", "--base", "b", "--delta", "d", "--alpha", "0.1", "--sparsity", "0.1", "--out", "o", "--seed", "-1"],
    ["rsft", "--model", "m", "--data", "d", "--layer", "0", "--out", "o", "--seed", str(2**32)],
    ["evaluate", "--model", "m", "--data", "d", "--out", "o.json", "--fluency-seed", "-5"],
])
def test_command_line_seeds_outside_32_bits_exit_2_naming_the_flag(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "seed: must be in [0, 2^32)" in capsys.readouterr().err


def test_an_edit_text_longer_than_any_context_is_refused_at_load_naming_the_record(tmp_path):
    from conftest import ZSRE

    from mm4ke_ray.data import load_edit_records
    from mm4ke_ray.errors import DataError

    records = json.loads(ZSRE.read_text())[:3]
    records[1]["prompt"] = "word " * 200_000  # a 200,000-word prompt: tens of GB once batched
    path = tmp_path / "edits.json"
    path.write_text(json.dumps(records))
    with pytest.raises(DataError, match=r"record 1: field 'prompt': is 999,999 characters long.*--skip-invalid"):
        load_edit_records(str(path))
    assert len(load_edit_records(str(path), skip_invalid=True).records) == 2


def test_a_spool_is_never_replayed_into_another_apps_database(tmp_path, capsys):
    from mm4ke_ray.tracking.buffer import Spool

    other = _other_app_db(tmp_path / "app.db")
    before = _digest(other)
    spool = Spool(tmp_path / "mlflow-spool.jsonl", f"sqlite:///{other}")
    spool.append({"op": "status", "run_id": "r", "status": "FINISHED"})
    kept = spool.path.read_text()
    assert main(["sweep", "--replay-spool", str(spool.path)]) == 2
    assert "not an MLflow store" in capsys.readouterr().err
    assert _digest(other) == before and spool.path.read_text() == kept


def test_a_whole_journal_with_a_cut_last_line_is_accepted_a_damaged_one_refused(tmp_path):
    from mm4ke_ray.search.resume import STUDY_FILE, read_manifest

    folder = _sweep_folder(tmp_path, str(tmp_path / "runs" / "ray"), f"sqlite:///{tmp_path}/m.db")
    (folder / STUDY_FILE).write_text('{"op_code": 0}\n{"op_code": 5, "x": [1, 2\n')  # killed mid-write
    assert read_manifest(str(folder)).parent_run_id == "p"
    (folder / STUDY_FILE).write_text('{"op_code": 0}\n[1, 2]\n{"op_code": 5}\n')
    with pytest.raises(UserError, match="line 2 is not an Optuna journal operation"):
        read_manifest(str(folder))


def test_a_store_whose_writer_was_killed_mid_transaction_opens_at_its_last_commit(tmp_path):
    """A SIGKILLed sweep driver can leave a hot rollback journal; the resume must not call the
    store corrupted (a read-only connection cannot replay the journal, so the check rolls it back)."""
    import subprocess
    import sys

    from mm4ke_ray.tracking.store_check import store_problem

    uri = _mlflow_store(tmp_path)
    db = tmp_path / "mlflow.db"
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, sys, time\n"
        f"con = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
        "con.execute('PRAGMA cache_size=1'); con.execute('BEGIN'); con.execute('CREATE TABLE scratch (x)')\n"
        "for i in range(5000): con.execute('INSERT INTO scratch VALUES (?)', ('x' * 400,))\n"
        "print('writing', flush=True); time.sleep(120)\n")], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "writing"
    writer.kill()
    writer.wait()
    assert (tmp_path / "mlflow.db-journal").stat().st_size > 0  # the hot journal the kill left

    assert store_problem(uri, create=False) is None
    assert MlflowClient(uri).get_experiment_by_name("x") is not None
    con = sqlite3.connect(db)
    tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    con.close()
    assert "scratch" not in tables and "runs" in tables  # the unfinished transaction is gone, the store kept


@pytest.mark.parametrize("rungs, warned", [(6, "halving runs 3 rung(s)"), (3, None)])
def test_more_halving_rungs_than_the_records_support_are_capped_with_a_warning(tmp_path, tiny_model_dir, capsys,
                                                                               rungs, warned):
    """20 records at factor 3: rungs 0-2 would score the sign test's 5 records as rung 3 does, so
    they are skipped; `validate` (and the sweep, at its start) says so instead of halving quietly less."""
    import yaml
    from fault_helpers import sweep_dict

    config = sweep_dict(tmp_path, tiny_model_dir, "s", limit=20, extra=2)
    config["evaluation"]["fidelity"] = {"enabled": True, "rungs": rungs, "reduction_factor": 3}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(config))
    assert main(["validate", str(tmp_path / "s.yaml")]) == 0
    err = capsys.readouterr().err
    if warned is None:
        assert "evaluation.fidelity.rungs" not in err
        return
    assert "warning: evaluation.fidelity.rungs: 6 rungs" in err and "20 edit records" in err
    assert "rung(s) 0, 1, 2 skipped (it would score the same items as rung 1)" in err and warned in err


@pytest.mark.parametrize("argv", [
    ["export", "--tracking-uri", "sqlite:///{tmp}/mlflow.db", "--sweep", "s", "--out", "{ro}/model"],
    ["merge", "--base", "{tmp}/base", "--delta", "{tmp}/delta", "--alpha", "0.5", "--sparsity", "0.1",
     "--out", "{ro}/merged"],
])
def test_a_read_only_out_is_refused_before_the_merge(tmp_path, argv, monkeypatch, capsys):
    import os

    import mm4ke_ray.commands.merge as merge_command
    import mm4ke_ray.export.writer as writer

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.access(ro, os.W_OK):  # root ignores mode bits: answer as a read-only mount does (EROFS)
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: not (Path(p) == ro and mode & os.W_OK)
                            and real(p, mode, **kw))

    def merged(*_a, **_k):
        raise AssertionError("the merge ran before --out was checked")

    monkeypatch.setattr(writer, "plan_export", merged)
    monkeypatch.setattr(merge_command, "_write", merged)
    args = [a.replace("{tmp}", str(tmp_path)).replace("{ro}", str(ro)) for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"'{ro}' is not writable" in err and "--out" in err and "choose a writable place" in err
    assert list(ro.iterdir()) == [] and not (tmp_path / "mlflow.db").exists()


def test_export_pick_of_a_pruned_candidate_says_pruned_by_name_or_run_id(tmp_path, capsys):
    from mm4ke_ray.tracking.query import load_sweep

    uri = _logged_sweep(tmp_path, {"t1-c0": "ok", "t1-c1": "pruned"})
    pruned_id = next(p for p in load_sweep(uri, "s").pruned if p != "t1-c1")
    for pick in ("t1-c1", pruned_id):
        out = tmp_path / f"out-{pick}"
        assert main(["export", "--tracking-uri", uri, "--sweep", "s", "--pick", pick, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"{pick!r} of sweep 's' was pruned" in err and "Traceback" not in err
        assert not out.exists()


def test_resume_with_a_cut_tuner_pkl_leaves_the_finished_parent_finished(tmp_path, capsys):
    """It once reopened the parent run (RUNNING) and then failed on the pickle: now refused first."""
    from mm4ke_ray.search.resume import MANIFEST

    uri = _logged_sweep(tmp_path, {"t1-c0": "ok"})
    client = MlflowClient(uri)
    parent = client.search_runs([client.get_experiment_by_name("e").experiment_id], "tags.`mm4ke.role` = 'sweep'")[0]
    assert parent.info.status == "FINISHED"
    folder = _sweep_folder(tmp_path, str(tmp_path / "runs" / "ray"), uri)
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["parent_run_id"], manifest["config"]["tracking"]["experiment"] = parent.info.run_id, "e"
    (folder / MANIFEST).write_text(json.dumps(manifest))
    (folder / "tuner.pkl").write_bytes((folder / "tuner.pkl").read_bytes()[:20])
    before = _tree(tmp_path)
    assert main(["sweep", "--resume", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "tuner.pkl" in err and "damaged" in err and "Traceback" not in err
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    assert _tree(tmp_path) == before  # the store and the folder byte for byte


def test_the_sweep_says_at_its_start_which_halving_rungs_its_plan_skips(monkeypatch):
    """With general tasks only the merge-eval actors know the documents, so the sweep (not
    `validate`) says it, from the actors' own plan, before the parent run opens."""
    from mm4ke_ray.evaluate.rung_plan import plan_rungs
    from mm4ke_ray.search import driver

    said = []
    monkeypatch.setattr(driver.console, "print", lambda text, **_k: said.append(text))
    monkeypatch.setattr(driver.ray, "get", lambda ref: ref)  # the actor's answer, without Ray
    for docs, warned in [({"t": 20}, True), ({"t": 2000}, False)]:
        plan = plan_rungs(20, docs, 6, 3, seed=0, min_items=5)
        actor = SimpleNamespace(rung_plan=SimpleNamespace(remote=lambda plan=plan: plan))
        run = SimpleNamespace(settings=SimpleNamespace(fidelity_rungs=6),
                              pool=SimpleNamespace(actors=[actor], reference=SimpleNamespace(general_result=None)))
        said.clear()
        driver._check_base(run)
        assert bool(said) == warned and all("evaluation.fidelity.rungs: 6 rungs" in s for s in said)
