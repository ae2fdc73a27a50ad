"""A merge candidate scored on the real config's general tasks (SST-2 + WikiText-2 from the shared
files, `EvalSettings.local_tasks`): chance-aware and perplexity retention, the objectives' SEs per
candidate, and per-document items that pair a perplexity task at a lower rung. Ray-free."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import SHARED, ZSRE

from mm4ke_ray.evaluate.candidate import CandidateEvaluator, EvalSettings
from mm4ke_ray.evaluate.fidelity import GENERAL_SE, RUNG_ITEMS, RungItems, paired_stderrs
from mm4ke_ray.evaluate.real_tasks import LocalTaskSpec
from mm4ke_ray.evaluate.scores import EDIT_STDERR, GENERAL_STDERR
from mm4ke_ray.modeling import mlp_parameter_names

GENERAL = SHARED / "data" / "general"


def _delta(model, layer: int, seed: int, scale: float) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    return {n: scale * torch.randn(params[n].shape, generator=g) for n in mlp_parameter_names(model, layer)}


@pytest.fixture(scope="module")
def evaluator(tiny_model_dir, tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setenv("MM4KE_CACHE", str(tmp_path_factory.mktemp("cache")))
    local = (LocalTaskSpec("sst2", str(GENERAL / "test-SentimentAnalysis.tsv"), limit=12),
             LocalTaskSpec("wikitext", str(GENERAL / "wikitext-2" / "test.txt"), max_words=6000))
    settings = EvalSettings(model=str(tiny_model_dir), edits=str(ZSRE), limit=6, batch_size=4,
                            general_tasks=("sst2", "wikitext"), local_tasks=local,
                            fidelity_rungs=2, fidelity_reduction_factor=2.0, fidelity_seed=1)
    return CandidateEvaluator(settings)


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_a_candidate_on_sst2_and_wikitext(evaluator):
    ref = evaluator.reference.general_result
    assert ref.chance == {"sst2": 0.5, "wikitext": None} and ref.higher_is_better["wikitext"] is False
    assert ref.n_docs["sst2"] == 12 and ref.n_docs["wikitext"] >= 3
    out = evaluator.evaluate(_delta(evaluator.model, 1, 0, 0.5), 0.2, 0.0, seed=0)
    base_ppl, ppl = ref.scores["wikitext"], out["general.wikitext"]
    assert math.isfinite(ppl) and ppl != base_ppl
    assert out["retention/wikitext"] == pytest.approx(base_ppl / ppl)
    span = ref.scores["sst2"] - 0.5
    if span > 0:  # above chance, retention counts the ability above it
        assert out["retention/sst2"] == pytest.approx((out["general.sst2"] - 0.5) / span)
    kept = [min(max(out[f"retention/{t}"], 0.0), 1.0) for t in ("sst2", "wikitext")
            if not math.isnan(out[f"retention/{t}"])]
    assert out["general_score"] == pytest.approx(sum(kept) / len(kept))
    assert out["general.wikitext.stderr"] > 0
    # each candidate carries its objectives' SEs (the front's error bars), at full fidelity too
    # (sst2 counts only when its base is above chance; wikitext always does)
    assert out[EDIT_STDERR] >= 0 and out[GENERAL_STDERR] > 0


def test_a_perplexity_task_pairs_at_a_lower_rung(evaluator):
    a = evaluator.evaluate(_delta(evaluator.model, 1, 0, 0.2), 0.2, 0.0, seed=0, rung=0)
    b = evaluator.evaluate(_delta(evaluator.model, 1, 0, 0.2), 0.6, 0.0, seed=0, rung=0)
    ia, ib = RungItems.from_dict(a[RUNG_ITEMS]), RungItems.from_dict(b[RUNG_ITEMS])
    base_sst2 = evaluator.general_eval.evaluate_result(evaluator.rung_plan().general_samples(0)).scores["sst2"]
    assert ("sst2" in ia.general) == (base_sst2 > 0.5)  # a task at chance is left out, as the score does
    docs = len(evaluator.rung_plan().general_docs["wikitext"][0])
    assert len(ia.general["wikitext"]) == docs >= 2
    # the items' mean difference is the log-retention difference of the two candidates
    diff = sum(y - x for x, y in zip(ia.general["wikitext"], ib.general["wikitext"], strict=True)) / docs
    assert diff == pytest.approx(math.log(a["general.wikitext"] / b["general.wikitext"]), rel=1e-9, abs=1e-12)
    _, paired = paired_stderrs(ib, ia)
    assert paired is not None and paired >= 0 and a[GENERAL_SE] > 0


def test_wikitext_with_fewer_articles_than_the_sign_test_needs_is_exact_at_every_rung(
        tiny_model_dir, tmp_path_factory, monkeypatch_module):
    """The real config's WikiText-2 (a few articles): every rung scores all of them, so halving
    runs on the records' evidence instead of skipping both lower rungs, and a promoted candidate
    reads the perplexity back whole and scores only its new records, with the same numbers."""
    from mm4ke_ray.evaluate.fidelity import general_exact
    from mm4ke_ray.evaluate.rung_reuse import REUSE, scored_items

    monkeypatch_module.setenv("MM4KE_CACHE", str(tmp_path_factory.mktemp("cache-few")))
    local = (LocalTaskSpec("wikitext", str(GENERAL / "wikitext-2" / "test.txt"), max_words=3000),)
    common = dict(model=str(tiny_model_dir), edits=str(ZSRE), limit=27, batch_size=8, general_tasks=("wikitext",),
                  local_tasks=local)
    plain = CandidateEvaluator(EvalSettings(**common))
    halving = CandidateEvaluator(EvalSettings(**common, fidelity_rungs=3, fidelity_reduction_factor=3.0,
                                              fidelity_seed=1, fidelity_min_items=5), reference=plain.reference)
    plan = halving.rung_plan()
    n_docs = plain.reference.general_result.n_docs["wikitext"]
    assert n_docs < 5 and plan.skipped == () and [len(r) for r in plan.edit_records] == [5, 9, 27]
    assert [len(d) for d in plan.general_docs["wikitext"]] == [n_docs] * 3
    delta = _delta(halving.model, 1, 7, 0.05)
    low = halving.evaluate(delta, 0.4, 0.1, seed=3, rung=0)
    assert general_exact(RungItems.from_dict(low[RUNG_ITEMS]))
    joined = halving.evaluate(delta, 0.4, 0.1, seed=3, rung=1, prior=low[REUSE])
    direct = halving.evaluate(delta, 0.4, 0.1, seed=3, rung=1)
    assert scored_items(joined) == (4, 0) and scored_items(direct) == (9, n_docs)
    for key in ("edit_score", "general_score", "general.wikitext", "edit_succ", "locality"):
        assert joined[key] == direct[key], key
    top = halving.evaluate(delta, 0.4, 0.1, seed=3, rung=2, prior=joined[REUSE])
    full = plain.evaluate(delta, 0.4, 0.1, seed=3)
    assert scored_items(top) == (18, 0)
    for key in ("edit_score", "general_score", "general.wikitext", "combined_score"):
        assert top[key] == full[key], key
