"""A trial's successive halving on a real actor pool (issue 13): resume mid-rung and promotion
against the sweep's front.

Resume mid-rung: a trial started again after it died between rungs reads back the rungs it
finished (search/rung_store.py) and evaluates only the rest, with the same result.

Real Ray: a merge-eval actor pool on a local Ray and the trial's own candidate loop
(`trial._evaluate_candidates`); the actors count their evaluations. The trial's death is its
record cut back to rung 0, as a trial killed after writing rung 0 leaves it; Tune restarts a
trial under the same id (tests/test_resume.py), which is what finds the record again.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray
import torch
from conftest import ZSRE
from fault_helpers import general_task

from mm4ke_ray.config import SearchConfig
from mm4ke_ray.evaluate.candidate import EvalSettings
from mm4ke_ray.modeling import load_model
from mm4ke_ray.search.actors import start_pool, stop_pool
from mm4ke_ray.search.rung_store import RungStore, delta_digest
from mm4ke_ray.search.trial_candidates import _evaluate_candidates, _rung_store
from mm4ke_ray.search.trial_context import TrialContext

pytestmark = [pytest.mark.ray]

EXTRA = 5


@pytest.fixture(scope="module")
def pool(ray_2_cpus, tiny_model_dir, tmp_path_factory):
    tasks = tmp_path_factory.mktemp("tasks")
    settings = EvalSettings(model=str(tiny_model_dir), edits=str(ZSRE), limit=9, batch_size=4,
                            general_tasks=(general_task(tasks, docs=18),), task_include_path=str(tasks),
                            edit_weights={"edit_succ": 1, "generalization": 1, "portability": 1, "locality": 1},
                            fidelity_rungs=3, fidelity_reduction_factor=3.0, fidelity_seed=7)
    p = start_pool(settings, size=1, cpus=1, gpus=0, resource=None)
    yield settings, p
    stop_pool(p)


@pytest.fixture(scope="module")
def deltas(tiny_model_dir):
    """Two real R-SFT deltas (an edit strong enough that merges differ and some are dominated)."""
    from mm4ke_ray.data import load_edit_records
    from mm4ke_ray.modeling import load_tokenizer
    from mm4ke_ray.rsft import RSFTConfig, run_rsft

    records = load_edit_records(str(ZSRE), limit=9).records
    tok = load_tokenizer(str(tiny_model_dir))
    out = []
    for lr in (0.01, 0.003):
        model = load_model(str(tiny_model_dir))
        config = RSFTConfig(layer=1, lr=lr, steps=3, epochs=3, threshold=0.05, seed=7)
        out.append(run_rsft(model, tok, records, config).delta)
    return out


def _run(settings, p, folder: Path, delta, trial_id="trial_a", front_key=None, error_rate=0.5):
    ctx = TrialContext(settings=settings, search=SearchConfig(seed=7, space={"alpha": {"low": 0.0, "high": 0.95}}),
                       extra_candidates=EXTRA, runner="task", rsft_cpus=1, rsft_gpus=0, storage_path=str(folder),
                       actors=tuple(p.actors), fidelity_error_rate=error_rate, rungs_path=str(folder / "rungs"), front_key=front_key)
    cands = [{"kind": "sampled", "alpha": 0.1, "sparsity": 0.0}, *({"kind": "extra", "alpha": a, "sparsity": s}
             for a, s in ((0.0, 0.0), (0.3, 0.5), (0.5, 0.2), (0.7, 0.0), (0.95, 0.8)))]
    for c in cands:
        c["in_space"] = True
    store = _rung_store(ctx, trial_id, delta, cands)
    before = ray.get(p.actors[0].stats.remote())["count"]
    full, pruned, compute = _evaluate_candidates(ctx, cands, ray.put(delta), trial_id, store)
    return full, pruned, compute, ray.get(p.actors[0].stats.remote())["count"] - before


def _outcome(full, pruned) -> dict:
    keep = ("edit_score", "general_score", "fidelity.rung", "rung0.edit_score", "rung0.general_score",
            "rung1.edit_score", "compute.records", "compute.docs")
    return {c["index"]: {k: c["metrics"].get(k) for k in keep} for c in full + pruned}


@pytest.fixture
def far_front():
    """A published sweep front no merge reaches: it prunes every extra candidate once rung 1 gives
    them standard errors (9 records and 18 documents are too few for one merge of a delta to show
    another worse beyond doubt), so a restart has pruned candidates to reproduce."""
    from mm4ke_ray.search.front_board import drop_front, new_front_key, publish_front

    key = new_front_key()
    publish_front(key, [{"edit_score": 1.0, "general_score": 1.0}])
    yield key
    drop_front(key)


def test_a_restarted_trial_reads_back_its_finished_rungs_and_evaluates_only_the_rest(pool, deltas, tmp_path,
                                                                                      far_front):
    settings, p = pool
    delta = deltas[0]
    full, pruned, compute, evaluations = _run(settings, p, tmp_path, delta, front_key=far_front)
    first = _outcome(full, pruned)
    assert pruned and evaluations == sum(c["metrics"]["fidelity.rung"] + 1 for c in full + pruned)
    assert all(c["metrics"]["fidelity.reused_rungs"] == 0 for c in full + pruned)
    record = tmp_path / "rungs" / "trial_a.json"
    doc = json.loads(record.read_text())
    assert sorted(doc["rungs"]) == ["0", "1", "2"] and len(doc["rungs"]["0"]) == EXTRA + 1
    assert doc["key"]["delta"] == delta_digest(delta)

    # Died after rung 0: only rung 0 is on record. The restart scores rungs 1 and 2 only.
    doc["rungs"] = {"0": doc["rungs"]["0"]}
    record.write_text(json.dumps(doc))
    full2, pruned2, compute2, evaluations2 = _run(settings, p, tmp_path, delta, front_key=far_front)
    assert evaluations2 == evaluations - (EXTRA + 1)
    assert _outcome(full2, pruned2) == first  # the same promotions and the same full values
    assert all(c["metrics"]["fidelity.reused_rungs"] == 1 for c in full2 + pruned2)
    assert (compute2["eval_compute_records"], compute2["eval_compute_docs"]) == \
        (compute["eval_compute_records"], compute["eval_compute_docs"])  # what the results cost, as before

    # Finished every rung: a restart evaluates nothing.
    assert _run(settings, p, tmp_path, delta, front_key=far_front)[3] == 0


def test_a_record_of_other_work_is_not_used(pool, deltas, tmp_path):
    settings, p = pool
    delta = deltas[0]
    _, _, _, evaluations = _run(settings, p, tmp_path, delta)
    other = deltas[1]  # another delta (R-SFT gave another result): its own work
    full, pruned, _, again = _run(settings, p, tmp_path, other)
    assert again >= EXTRA + 1 and all(c["metrics"]["fidelity.reused_rungs"] == 0 for c in full + pruned)
    assert _run(settings, p, tmp_path, other)[3] == 0  # and its record replaced the first one
    record = tmp_path / "rungs" / "trial_a.json"
    record.write_text("{not json")  # a torn or foreign file: ignored, then rewritten
    assert _run(settings, p, tmp_path, other)[3] == again
    assert json.loads(record.read_text())["key"]["delta"] == delta_digest(other)
    assert evaluations >= EXTRA + 1


def test_the_record_key_names_the_delta_candidates_and_plan(tmp_path):
    a = {"w": torch.ones(2, 3, dtype=torch.bfloat16)}
    b = {"w": torch.ones(2, 3, dtype=torch.float32)}
    assert delta_digest(a) == delta_digest({"w": a["w"].clone()}) != delta_digest(b)
    store = RungStore(str(tmp_path / "rungs"), "t", {"delta": "x"})
    store.put(0, {0: {"edit_score": 0.5}, 1: {"edit_score": float("nan")}})
    assert RungStore(str(tmp_path / "rungs"), "t", {"delta": "x"}).get(0)[0] == {"edit_score": 0.5}
    assert RungStore(str(tmp_path / "rungs"), "t", {"delta": "y"}).get(0) == {}
    assert RungStore(str(tmp_path / "rungs"), "u", {"delta": "x"}).get(0) == {}


def test_the_sweep_front_drops_what_it_already_beats_and_the_sampled_one_still_goes_on(pool, deltas, tmp_path):
    from mm4ke_ray.search.front_board import drop_front, new_front_key, publish_front, read_front

    settings, p = pool
    key = new_front_key()
    assert read_front(key) == []  # nothing published yet: no front to compare with
    rows = [{"edit_score": 0.2, "general_score": 1.0}, {"edit_score": 0.1, "general_score": 0.5},
            {"edit_score": 0.9, "general_score": 0.3}, {"edit_score": float("nan"), "general_score": 1.0}]
    assert publish_front(key, rows) == 2 and read_front(key) == [[0.9, 0.3], [0.2, 1.0]]
    full, pruned, _, _ = _run(settings, p, tmp_path / "a", deltas[0], front_key=key, error_rate=0.16)
    assert all(c["metrics"]["fidelity.front_points"] == 2 for c in full + pruned)
    # A front no merge can reach (an edit score of 1 at full retention) beats every candidate by
    # its own (Jeffreys-floored) standard errors as soon as it has them: rung 0 is one record (no
    # spread to judge: nothing is dropped on it), rung 1 three. Only the sampled one, which Optuna needs, goes on to the full rung.
    publish_front(key, [{"edit_score": 1.0, "general_score": 1.0}])
    full, pruned, _, evaluations = _run(settings, p, tmp_path / "b", deltas[0], front_key=key, error_rate=0.16)
    assert [c["index"] for c in full] == [0] and len(pruned) == EXTRA
    assert [c["metrics"]["fidelity.rung"] for c in pruned] == [1] * EXTRA
    assert evaluations == 2 * (EXTRA + 1) + 1
    drop_front(key)
    assert read_front(key) == []
