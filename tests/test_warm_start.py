"""`mm4ke-ray sweep --warm-start TRACKING_URI:SWEEP` (issue 13, part 2).

Refusals (fast, no Ray): a fingerprint that differs names the field, an unknown sweep, a store
that does not answer and a sweep without fingerprint are exit 2 before Ray starts. Telling: the
earlier candidates become study trials over the new space, points outside it skipped and
counted. End to end (a real tiny sweep, then one warm-started from it): the study holds the
earlier points before its own trials, the parent run is tagged, the front starts from the
earlier one, and export refuses a warm-start row with the command that exports it.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import optuna
import pytest
import yaml
from fault_helpers import sweep_dict

from mm4ke_ray.config import validate_config
from mm4ke_ray.errors import UserError
from mm4ke_ray.fingerprint import differences, fingerprint, fingerprint_fields
from mm4ke_ray.schema import WARM_START, Tag


def _config(tmp: Path, model_dir: Path, name: str, **over) -> dict:
    data = sweep_dict(tmp, model_dir, name)
    for dotted, value in over.items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return data


def _logged_sweep(uri: str, config, name: str, tmp: Path, tags: dict | None = None) -> str:
    """A parent run as a sweep's start writes it (params, tags, fingerprint), no candidates."""
    from mm4ke_ray.tracking.mlflow_tracker import SweepTracker
    from mm4ke_ray.tracking.sweep_run import sweep_params, sweep_tags

    tracker = SweepTracker(uri, config.tracking.experiment, str(tmp / "artifacts"))
    all_tags = sweep_tags(config, str(tmp / "ray" / name)) if tags is None else tags
    return tracker.start_sweep(name, sweep_params(config, 1, 1), all_tags)


def _run_cli(tmp: Path, data: dict, *warm: str) -> tuple[int, str]:
    from mm4ke_ray.cli import main

    path = tmp / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    argv = ["sweep", str(path)]
    for spec in warm:
        argv += ["--warm-start", spec]
    return main(argv), ""


def test_the_fingerprint_ignores_the_search_and_names_what_differs(tmp_path, tiny_model_dir):
    a = validate_config(_config(tmp_path, tiny_model_dir, "a"))
    b = validate_config(_config(tmp_path, tiny_model_dir, "b", **{"search.num_trials": 9, "search.seed": 11,
                                                                  "merge.extra_candidates": 3,
                                                                  "evaluation.batch_size": 2,
                                                                  "evaluation.fidelity.enabled": True}))
    # Halving changes the cost, not a full-fidelity result: sweeps with and without it compare.
    assert fingerprint(fingerprint_fields(a)) == fingerprint(fingerprint_fields(b))
    older = {**fingerprint_fields(a), "evaluation.fidelity": {"enabled": False, "rungs": 3}}  # logged before
    assert differences(older, fingerprint_fields(b)) == []
    c = validate_config(_config(tmp_path, tiny_model_dir, "c", **{"data.limit": 3, "merge.method": "dare"}))
    assert [k for k, _, _ in differences(fingerprint_fields(a), fingerprint_fields(c))] == ["data.limit",
                                                                                          "merge.method"]


def test_a_demo_sweep_fingerprint_does_not_hold_the_machines_cache_root(tmp_path, tiny_model_dir, monkeypatch):
    from mm4ke_ray.fingerprint import DEMO_CACHE

    def demo_at(root: Path) -> dict:
        monkeypatch.setenv("MM4KE_CACHE", str(root))
        assets = root / "demo-abc123"
        config = validate_config(_config(tmp_path, tiny_model_dir, "d", **{
            "model.name": str(assets / "model"), "data.edits": str(assets / "edits.json"),
            "evaluation.task_include_path": str(assets / "tasks")}))
        return fingerprint_fields(config)

    laptop, cluster = demo_at(tmp_path / "laptop-cache"), demo_at(tmp_path / "shared" / "cache")
    assert laptop["model.name"] == f"{DEMO_CACHE}demo-abc123/model"
    assert fingerprint(laptop) == fingerprint(cluster) and differences(laptop, cluster) == []
    # A sweep logged before, with this machine's full path: it still compares.
    logged = {**cluster, "model.name": str(tmp_path / "shared" / "cache" / "demo-abc123" / "model")}
    assert differences(cluster, logged) == []
    other = {**cluster, "model.name": f"{DEMO_CACHE}demo-ffffff/model"}  # another build: not the same model
    assert [k for k, _, _ in differences(cluster, other)] == ["model.name"]


def test_long_fields_are_kept_as_digests_so_the_tag_fits(tmp_path, tiny_model_dir):
    tasks = [f"task_{i:03d}_with_a_long_name" for i in range(300)]
    config = validate_config(_config(tmp_path, tiny_model_dir, "a", **{"evaluation.general_tasks": tasks}))
    fields = fingerprint_fields(config)
    assert set(fields["evaluation.general_tasks"]) == {"sha256"}
    assert len(json.dumps(fields)) < 8000
    other = validate_config(_config(tmp_path, tiny_model_dir, "b", **{"evaluation.general_tasks": tasks[:-1]}))
    assert [k for k, _, _ in differences(fields, fingerprint_fields(other))] == ["evaluation.general_tasks"]


@pytest.mark.parametrize("what", ["mismatch", "unknown", "no_fingerprint", "no_store", "unreachable", "format"])
def test_a_warm_start_that_cannot_be_used_is_refused_before_ray(what, tmp_path, tiny_model_dir, capsys):
    import ray

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    here = _config(tmp_path, tiny_model_dir, "here", **{"tracking.uri": uri})
    there = validate_config(_config(tmp_path, tiny_model_dir, "there", **{"tracking.uri": uri,
                                                                          "evaluation.general_limit": 5}))
    _logged_sweep(uri, there, "there", tmp_path)
    _logged_sweep(uri, there, "old", tmp_path, tags={})  # a sweep logged before fingerprints
    spec, expected = {
        "mismatch": (f"{uri}:there", "evaluation.general_limit differs: not set here, 5 in sweep there"),
        "unknown": (f"{uri}:nope", "no sweep run with that name"),
        "no_fingerprint": (f"{uri}:old", "has no fingerprint"),
        "no_store": (f"sqlite:///{tmp_path}/elsewhere/mlflow.db:there", "no MLflow database"),
        "unreachable": ("http://127.0.0.1:9:there", "cannot reach the MLflow server"),
        "format": ("there", "give TRACKING_URI:SWEEP"),
    }[what]
    code, _ = _run_cli(tmp_path, here, spec)
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"--warm-start {spec}" in err or f"--warm-start {spec!r}" in err, err
    assert expected in err, err
    assert "Traceback" not in err
    assert not ray.is_initialized()
    assert not (tmp_path / "ray" / "here").exists()  # no sweep folder, no parent run for 'here'
    from mlflow import MlflowClient

    runs = MlflowClient(uri).search_runs([e.experiment_id for e in MlflowClient(uri).search_experiments()])
    assert "here" not in {r.info.run_name for r in runs}


def test_warm_start_with_resume_is_refused(tmp_path, capsys):
    from mm4ke_ray.cli import main

    assert main(["sweep", "--resume", str(tmp_path), "--warm-start", "sqlite:///x.db:s"]) == 2
    assert "--warm-start apply to a new sweep only" in capsys.readouterr().err


def test_earlier_points_are_told_over_the_new_space_and_outside_ones_skipped():
    from mm4ke_ray.config import SearchConfig
    from mm4ke_ray.evaluate.scores import OBJECTIVES
    from mm4ke_ray.search.searcher import EXTRA_ATTR, WARM_ATTR, CandidateAwareOptunaSearch
    from mm4ke_ray.search.space import make_sampler, split_space
    from mm4ke_ray.search.warm_start import warm_points

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = {"threshold": {"low": 0.01, "high": 0.2, "log": True}, "steps": {"low": 1, "high": 3},
             "epochs": {"choices": [2]}, "lr": {"low": 1e-4, "high": 1e-3, "log": True}, "layer": {"choices": [0, 1]},
             "alpha": {"low": 0.0, "high": 0.8}, "sparsity": {"low": 0.0, "high": 0.8}}
    search = SearchConfig(space=space, seed=0)

    def row(trial, kind, epochs=2, layer=1, alpha=0.2):
        return {"trial_id": trial, "candidate": f"{trial}-{kind}", "kind": kind, "threshold": 0.1, "steps": 2,
                "epochs": epochs, "lr": 3e-4, "layer": layer, "lr_schedule": "constant", "warmup_ratio": 0.0,
                "alpha": alpha, "sparsity": 0.1, "edit_score": 0.9, "general_score": 0.8}

    rows = [row("t1", "sampled"), row("t1", "pure_rsft", alpha=0.0), row("t1", "extra", alpha=0.5),
            row("t2", "sampled", epochs=3),  # epochs is fixed at 2 here: skipped
            row("t3", "sampled", layer=5),  # layer 5 is not a choice here: Optuna refuses it
            {**row("t4", "sampled"), "edit_score": None}]  # no objective: skipped
    points, skipped = warm_points(rows, search, "old")
    assert skipped == 2 and len(points) == 4
    searched, _ = split_space(search)
    searcher = CandidateAwareOptunaSearch(space=searched, metric=[o.name for o in OBJECTIVES],
                                          mode=[o.mode for o in OBJECTIVES], sampler=make_sampler(search))
    told, refused = searcher.tell_warm_start(points, "old")
    assert (told, refused) == (3, 1)
    trials = searcher.study.get_trials()
    assert all(t.user_attrs[WARM_ATTR] == "old" for t in trials)
    # One trial per earlier R-SFT configuration, the rest its extra points.
    assert sum(EXTRA_ATTR not in t.user_attrs for t in trials) == 1
    assert sorted(t.params["alpha"] for t in trials) == [0.0, 0.2, 0.5]


# -- end to end ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sweeps(ray_2_cpus, tmp_path_factory, tiny_model_dir):
    """Sweep 'wsa' (2 trials × 2 candidates), then 'wsb' warm-started from it."""
    from mm4ke_ray.search.driver import run_sweep

    tmp = tmp_path_factory.mktemp("warm")
    first = validate_config(sweep_dict(tmp, tiny_model_dir, "wsa", seed=3))
    second = validate_config({**sweep_dict(tmp, tiny_model_dir, "wsb", seed=4),
                              "tracking": first.tracking.model_dump()})
    a = run_sweep(first)
    spec = f"{first.tracking.uri}:wsa"
    with contextlib.redirect_stderr(io.StringIO()) as said:  # what a person reads (issue 26 §4)
        b = run_sweep(second, warm_start=[spec, spec])  # the same sweep twice counts once
    TERMINAL["wsb"] = said.getvalue()
    return first, second, a, b


TERMINAL: dict[str, str] = {}  # the warm-started sweep's terminal text


@pytest.mark.ray
@pytest.mark.slow
def test_the_progress_lines_best_starts_from_the_copied_front(sweeps):
    _, _, a, _ = sweeps
    said = [float(x) for x in re.findall(r"best (?:combined_score )?(\d\.\d+)", TERMINAL["wsb"])]
    assert said, TERMINAL["wsb"][-3000:]
    # the first trial's line already counts the earlier sweep's best (it ignored it before)
    assert said[0] >= round(max(r["combined_score"] for r in a.rows), 4) - 1e-4, (said, TERMINAL["wsb"][-2000:])


@pytest.mark.ray
@pytest.mark.slow
def test_the_warm_started_study_holds_the_earlier_points_before_its_own(sweeps):
    from mm4ke_ray.search.searcher import EXTRA_ATTR, STUDY_FILE, WARM_ATTR, journal_storage

    _, second, a, b = sweeps
    assert len(a.rows) == 4 and len(b.rows) == 4
    study = optuna.load_study(study_name="wsb", storage=journal_storage(Path(b.experiment_dir) / STUDY_FILE))
    trials = sorted(study.get_trials(), key=lambda t: t.number)
    warm = [t for t in trials if t.user_attrs.get(WARM_ATTR) == "wsa"]
    own = [t for t in trials if WARM_ATTR not in t.user_attrs]
    assert len(warm) == b.warm_points_told == 4 and len(own) == 2 + b.extra_points_told
    assert max(t.number for t in warm) < min(t.number for t in own)
    assert sum(EXTRA_ATTR not in t.user_attrs for t in warm) == 2  # one per earlier R-SFT run
    told = sorted(tuple(round(v, 9) for v in (t.params["alpha"], t.params["sparsity"], *t.values)) for t in warm)
    earlier = sorted(tuple(round(r[k], 9) for k in ("alpha", "sparsity", "edit_score", "general_score"))
                     for r in a.rows)
    assert told == earlier


@pytest.mark.ray
@pytest.mark.slow
def test_the_parent_run_is_tagged_and_the_front_starts_from_the_earlier_one(sweeps, tmp_path, capsys):
    from mlflow import MlflowClient

    from mm4ke_ray.cli import main
    from mm4ke_ray.evaluate.pareto_front import pareto_front

    first, _, a, b = sweeps
    uri = first.tracking.uri
    client = MlflowClient(uri)
    tags_a, tags_b = client.get_run(a.parent_run_id).data.tags, client.get_run(b.parent_run_id).data.tags
    assert tags_a[Tag.FINGERPRINT] == tags_b[Tag.FINGERPRINT]
    assert json.loads(tags_b[Tag.WARM_START]) == [{"uri": uri, "sweep": "wsa", "run_id": a.parent_run_id,
                                                   "candidates": 4, "told": 4, "skipped": 0}]
    assert Tag.WARM_START not in tags_a
    assert tags_b[Tag.CANDIDATES] == "4"  # its own candidates; the copies are counted apart

    # The front: over base + the earlier candidates + its own; each earlier front point is on it
    # or dominated by one of the new sweep's candidates.
    assert len(b.warm_rows) == 4 and {r[WARM_START] for r in b.warm_rows} == {"wsa"}
    everything = [b.base, *b.warm_rows, *b.rows]
    assert [r["candidate"] for r in b.front] == [everything[i]["candidate"] for i in pareto_front(everything)]
    on_b = {(r["alpha"], r["sparsity"], r["edit_score"]) for r in b.front if r.get(WARM_START)}
    old_front = [r for r in [a.base, *a.rows] if r in a.front and r.get("kind") != "base"]

    def dominated(r):
        return any(o["edit_score"] >= r["edit_score"] and o["general_score"] >= r["general_score"]
                   and (o["edit_score"], o["general_score"]) != (r["edit_score"], r["general_score"]) for o in b.rows)

    for r in old_front:
        assert (r["alpha"], r["sparsity"], r["edit_score"]) in on_b or dominated(r), r

    # `mm4ke-ray pareto --all` (MLflow alone) lists the copies, marked, beside the new candidates.
    assert main(["pareto", "--tracking-uri", uri, "--sweep", "wsb", "--all", "--format", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert sorted(r["candidate"] for r in listed if r.get(WARM_START) == "wsa") == sorted(
        r["candidate"] for r in b.warm_rows)
    assert len(listed) == 1 + 4 + 4
    front_csv = client.download_artifacts(b.parent_run_id, "pareto/all.csv", str(tmp_path))
    header = Path(front_csv).read_text().splitlines()[0].split(",")
    assert WARM_START in header

    # A resume reads the copies back apart from the sweep's own rows (its study already holds them),
    # and a rebuild of the front from MLflow alone keeps them.
    from mm4ke_ray.tracking.mlflow_tracker import SweepTracker, republish_pareto
    from mm4ke_ray.tracking.sweep_run import logged_so_far
    from mm4ke_ray.tracking.warm_sources import warm_rows

    rows, finished, _ = logged_so_far(SweepTracker.attach(uri, b.parent_run_id), b.parent_run_id)
    own, copies = warm_rows(rows)
    assert sorted(r["candidate"] for r in own) == sorted(r["candidate"] for r in b.rows)
    assert sorted(r["candidate"] for r in copies) == sorted(r["candidate"] for r in b.warm_rows)
    assert finished == {r["trial_id"] for r in b.rows}
    before = client.get_run(b.parent_run_id).data.tags[Tag.PARETO_SIZE]
    republish_pareto(uri, b.parent_run_id)
    tags = client.get_run(b.parent_run_id).data.tags
    assert tags[Tag.PARETO_SIZE] == before == str(len(b.front)) and tags[Tag.CANDIDATES] == "4"

    # export cannot rebuild a copy from this sweep: it says how to export it from the earlier one.
    from mm4ke_ray.export.export_plan import plan_export

    copy = b.warm_rows[0]
    with pytest.raises(UserError, match="warm-start point from the earlier sweep 'wsa'") as info:
        plan_export(uri, "wsb", pick=copy["run_id"])
    origin = client.get_run(copy["run_id"]).data.tags[Tag.WARM_START_RUN_ID]
    assert f"--sweep {a.parent_run_id} --pick {origin}" in str(info.value)
    assert origin in {r["run_id"] for r in a.rows}
