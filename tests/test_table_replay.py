"""The replay of the product's search over a tabulated benchmark (issue 24 §2,
benchmarks/table_replay.py), on a small synthetic table: seconds, no model, no Ray.

The replay must be the product's search: its searcher class, its samplers, its merge candidates
(random extras or the per-delta surrogate), every evaluated candidate told to Optuna."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import table_replay as tr  # noqa: E402

SMALL = {"layers": (2, 4), "lrs": (1e-4, 1e-3), "thresholds": (0.03, 0.2), "epochs_list": (1,),
         "alphas": (0.0, 0.45, 0.9), "sparsities": (0.0, 0.4, 0.8)}


@pytest.fixture(scope="module")
def table():
    return tr.synthetic_table(**SMALL)


def _write(folder: Path, table: dict, drop_last: int = 0) -> None:
    rows = []
    for c in table["configs"].values():
        rows.append({"kind": "rsft", "config": c["params"], "status": c["status"]})
        rows += [{"config": c["params"], **p} for p in c["points"].values()]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / tr.META_FILE).write_text(json.dumps(table["meta"]))
    keep = rows[: len(rows) - drop_last]
    (folder / tr.TABLE_FILE).write_text("".join(json.dumps(r) + "\n" for r in keep))


def test_a_table_round_trips_and_a_partial_configuration_is_left_out(table, tmp_path):
    _write(tmp_path, table)
    loaded = tr.load_table(tmp_path)
    assert len(loaded["configs"]) == 8 and loaded["merge_grid"] == {"alpha": [0.0, 0.45, 0.9],
                                                                    "sparsity": [0.0, 0.4, 0.8]}
    assert len(tr.table_rows(loaded)) == 8 * 9
    _write(tmp_path, table, drop_last=2)  # a build cut off inside its last configuration
    assert len(tr.load_table(tmp_path)["configs"]) == 7
    assert len(tr.load_table(tmp_path, complete_only=False)["configs"]) == 8


def test_space_is_the_tables_hull(table):
    space = tr.space_of(table)
    assert space["layer"] == {"choices": [2, 4]} and space["lr"] == {"low": 1e-4, "high": 1e-3, "log": True}
    assert space["epochs"] == {"choices": [1]} and space["alpha"] == {"low": 0.0, "high": 0.9}


@pytest.mark.parametrize("sampler", ["random", "tpe", "gp", "nsga2", *tr.EXTRA_SAMPLERS])
def test_every_sampler_replays_and_every_candidate_is_told(table, sampler):
    run = tr.replay(table, sampler, seed=0, num_trials=4, extra_candidates=2)
    ok = [t for t in run["trials"] if t["status"] == "ok"]
    assert len(run["trials"]) == 4 and ok
    assert len(run["rows"]) == run["merge_evaluations"] == 3 * len(ok)
    assert run["extra_points_told"] == len(run["rows"]) - len(ok)  # Tune tells each sampled point itself
    for r in run["rows"]:
        assert r["cell"]["alpha"] in SMALL["alphas"] and 0 <= r["edit_score"] <= 1


def test_a_seeded_replay_repeats(table):
    a = tr.replay(table, "tpe", seed=3, num_trials=6, extra_candidates=2)
    b = tr.replay(table, "tpe", seed=3, num_trials=6, extra_candidates=2)
    assert a["rows"] == b["rows"]


def test_surrogate_and_exhaustive_candidates(table):
    six = tr.synthetic_table(layers=(2, 4), lrs=(1e-4, 1e-3), thresholds=(0.03,), epochs_list=(1,))
    sur = tr.replay(six, "tpe", seed=0, num_trials=4, extra_candidates=7, candidates="surrogate")
    assert sur["merge_evaluations"] <= 8 * 4 and len(sur["rows"]) == sur["merge_evaluations"]
    assert sur["extra_points_told"] == len(sur["rows"]) - 4
    full = tr.replay(six, "tpe", seed=0, num_trials=4, extra_candidates=35, candidates="exhaustive")
    assert full["merge_evaluations"] == 36 * 4 and len(full["rows"]) == 37 * 4


def test_the_bench_reports_ratios_to_random_and_to_the_front(table):
    import bench_table_search as bench

    from mm4ke_ray.evaluate.pareto_front import hypervolume

    ref = (table["base"]["edit_score"], 0.0)
    front = hypervolume(tr.table_rows(table), ref)
    curves = bench.sampler_curves(table, ("random", "tpe"), range(2), (2, 4), ref, front)
    summary = bench.summarize_samplers(curves, (2, 4), front)
    assert summary["random"]["4"]["vs_random"] == 1.0
    for s in summary.values():
        assert 0 < s["4"]["vs_front"] <= 1 + 1e-9 and s["4"]["vs_front"] >= s["2"]["vs_front"] - 1e-9


def test_another_objective_pair_from_the_kept_metrics(tmp_path):
    config = {"layer": 2, "lr": 1e-4, "threshold": 0.1, "epochs": 1, "steps": 4}
    meta = {"merge_grid": {"alpha": [0.0], "sparsity": [0.0]},
            "base": {"edit_score": 0.45, "general_score": 1.0, "edit_succ": 30.0, "generalization": 30.0,
                     "portability": 30.0, "locality": 100.0}}
    row = {"config": config, "alpha": 0.0, "sparsity": 0.0, "edit_score": 0.6, "general_score": 0.99,
           "edit_succ": 90.0, "generalization": 60.0, "portability": 30.0, "locality": 40.0}
    (tmp_path / tr.META_FILE).write_text(json.dumps(meta))
    (tmp_path / tr.TABLE_FILE).write_text(json.dumps(row) + "\n" + '{"config": {"lay')  # a line cut off
    product = tr.load_table(tmp_path)
    assert tr.table_rows(product)[0]["edit_score"] == 0.6
    other = tr.load_table(tmp_path, objectives="reliability_locality")
    got = tr.table_rows(other)[0]
    assert (got["edit_score"], got["general_score"], got["product.edit_score"]) == (0.6, 0.4, 0.6)
    assert other["base"]["edit_score"] == pytest.approx(0.3) and other["base"]["general_score"] == 1.0


def test_the_build_resumes_from_its_lines_and_its_order_spans_the_grid(tmp_path):
    import build_real_table as build

    configs = build.grid_configs(build.GRID)
    assert len(configs) == 24 and len({build._key(c) for c in configs}) == 24  # every configuration, once
    assert configs == build.grid_configs(build.GRID)  # the same seeded order on every run
    assert {c["layer"] for c in configs[:6]} == set(build.GRID["layer"])  # a prefix spans the layers
    table = tmp_path / "table.jsonl"
    build._append(table, {"kind": "rsft", "config": configs[0], "status": "ok"})
    build._append(table, {"config": configs[0], "alpha": 0.0, "sparsity": 0.16, "edit_score": 0.5})
    with table.open("a") as f:
        f.write('{"config": {"layer": 4, "lr"')  # killed mid-line: evaluated again
    done = build._done(table)
    key = build._key(configs[0])
    assert done == {(key, "rsft", None, None), (key, "merge", 0.0, 0.16)}
    build._end_line(table)  # a restart ends the cut line: the next row is read back whole
    build._append(table, {"config": configs[0], "alpha": 0.0, "sparsity": 0.32, "edit_score": 0.5})
    assert (key, "merge", 0.0, 0.32) in build._done(table)
