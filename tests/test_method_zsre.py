"""The method on 20 real ZsRE records (KnowEdit test file) with a tiny model built from a config.

Seen when this test was written (tiny Qwen2 h64×4, layer 3, E=5, K=6, lr 1e-3, τ 0.1):
unedited Edit Succ. 0.0 %, R-SFT 68.6 % (Gen. 33.6 %), Locality R-SFT 0.0 % → merged (α=0.5) 3.8 %.
A random-init model knows nothing, so its locality collapses under any edit; the point here is
the direction of each effect, on real records.
"""

from __future__ import annotations

import pytest
from conftest import ZSRE


@pytest.fixture(scope="module")
def outcome(tiny_tokenizer, tiny_model_factory):
    from mm4ke_ray.data import load_edit_records
    from mm4ke_ray.evaluate.edit_metrics import EditEvaluator
    from mm4ke_ray.merge import merged_in_place
    from mm4ke_ray.rsft import RSFTConfig, run_rsft

    records = load_edit_records(ZSRE, limit=20).records
    model = tiny_model_factory("qwen2", hidden=64, layers=4)
    evaluator = EditEvaluator(tiny_tokenizer, records, batch_size=32)
    reference = evaluator.base_predictions(model)
    base = evaluator.evaluate(model, reference).as_dict()
    result = run_rsft(model, tiny_tokenizer, records, RSFTConfig(layer=3, epochs=5, steps=6, lr=1e-3, threshold=0.1))
    with merged_in_place(model, result.delta, 0.0, 0.0):
        rsft = evaluator.evaluate(model, reference).as_dict()
    with merged_in_place(model, result.delta, 0.5, 0.0):
        merged = evaluator.evaluate(model, reference).as_dict()
    after = evaluator.evaluate(model, reference).as_dict()
    return {"base": base, "rsft": rsft, "merged": merged, "after_restore": after, "result": result}


def test_rsft_lifts_edit_success_well_above_the_unedited_model(outcome):
    base, rsft = outcome["base"], outcome["rsft"]
    assert len(outcome["result"].samples) == 20 * 5
    assert base["edit_succ"] < 10
    assert rsft["edit_succ"] >= base["edit_succ"] + 40, (base, rsft)
    assert rsft["generalization"] > base["generalization"]


def test_merging_at_half_alpha_keeps_at_least_the_rsft_locality(outcome):
    assert outcome["merged"]["locality"] >= outcome["rsft"]["locality"]
    assert outcome["merged"]["edit_succ"] > outcome["base"]["edit_succ"]


def test_the_model_is_the_base_again_after_each_candidate(outcome):
    assert outcome["after_restore"] == outcome["base"]
    assert outcome["base"]["locality"] == 100.0  # the base agrees with itself everywhere
