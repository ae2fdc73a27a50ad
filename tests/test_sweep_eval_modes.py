"""Generation-based edit metrics in the sweep's evaluator (issue 14), Ray-free.

`evaluation.mode` chooses the families a candidate is scored with (teacher-forced names bare,
generation names behind `gen.`), `objectives.edit_mode` the family the edit score is computed
from; the base's generated locality answers are part of the shared `Reference`. The demo's
acceptance: its best candidate (the README table's settings) generates ≥ 80% of its new targets,
the unedited base ≤ 20%.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml
from conftest import KNOWEDIT

from mm4ke_ray.config import validate_config
from mm4ke_ray.errors import ConfigError
from mm4ke_ray.evaluate.candidate import CandidateEvaluator, EvalSettings, eval_settings
from mm4ke_ray.evaluate.scores import edit_family, edit_score
from mm4ke_ray.modeling import mlp_parameter_names
from mm4ke_ray.schema import EDIT_METRICS, GEN_EDIT_METRICS, gen_metric

ZSRE = KNOWEDIT / "benchmark_ZsRE_ZsRE-test-all.json"
DEMO_YAML = Path(__file__).resolve().parents[1] / "mm4ke_ray" / "demo" / "sweep.yaml"


# -- config -----------------------------------------------------------------------------------

def test_mode_defaults_to_teacher_forced_and_edit_mode_follows_it():
    config = validate_config({})
    assert config.evaluation.mode == "teacher-forced" and config.edit_mode == "teacher-forced"
    assert validate_config({"evaluation": {"mode": "both"}}).edit_mode == "teacher-forced"
    assert validate_config({"evaluation": {"mode": "generation"}}).edit_mode == "generation"
    both = validate_config({"evaluation": {"mode": "both"}, "objectives": {"edit_mode": "generation"}})
    assert both.edit_mode == "generation"


@pytest.mark.parametrize(("mode", "edit_mode"), [("teacher-forced", "generation"), ("generation", "teacher-forced")])
def test_edit_mode_the_mode_does_not_compute_is_refused_naming_both_fields(mode, edit_mode):
    with pytest.raises(ConfigError) as err:
        validate_config({"evaluation": {"mode": mode}, "objectives": {"edit_mode": edit_mode}})
    text = str(err.value)
    assert "objectives.edit_mode" in text and "evaluation.mode" in text and repr(edit_mode) in text


def test_unknown_mode_is_refused_with_its_field():
    with pytest.raises(ConfigError, match="evaluation.mode"):
        validate_config({"evaluation": {"mode": "wild"}})


def test_eval_settings_carry_the_modes():
    config = validate_config({"evaluation": {"mode": "both", "generation_match": "equals"},
                              "objectives": {"edit_mode": "generation"}})
    s = eval_settings(config, "cpu")
    assert (s.eval_mode, s.edit_mode, s.generation_match) == ("both", "generation", "equals")
    assert s.teacher_forced and s.generation


def test_edit_family_reads_the_chosen_names():
    metrics = {"edit_succ": 50.0, "locality": 90.0, "gen.edit_succ": 10.0, "gen.locality": 70.0, "fluency": 5.0}
    assert edit_family(metrics, "teacher-forced") == {"edit_succ": 50.0, "locality": 90.0}
    assert edit_family(metrics, "generation") == {"edit_succ": 10.0, "locality": 70.0}


# -- the evaluator ----------------------------------------------------------------------------

def _delta(model, layer: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    return {n: 0.05 * torch.randn(params[n].shape, generator=g) for n in mlp_parameter_names(model, layer)}


@pytest.fixture(scope="module")
def both(tiny_model_dir):
    settings = EvalSettings(model=str(tiny_model_dir), edits=str(ZSRE), limit=6, batch_size=4, eval_mode="both")
    return CandidateEvaluator(settings)


def test_both_families_are_scored_with_per_kind_means(both):
    ref = both.reference
    assert ref.generation is not None and ref.locality is not None
    base = ref.metrics
    for name in (*EDIT_METRICS, *GEN_EDIT_METRICS):
        assert name in base, name
    assert base["gen.locality"] == 100.0  # the base's answers against themselves
    delta = _delta(both.model, 2, seed=1)
    out = both.evaluate(delta, 0.0, 0.0)
    assert all(name in out for name in GEN_EDIT_METRICS)
    # per-kind names of both families, the generation ones prefixed
    kinds = [k for k in out if k.startswith(("portability.", "locality."))]
    assert kinds and all(gen_metric(k) in out for k in kinds)
    # a strong random delta changes the generated locality answers of a tiny model
    assert out["gen.locality"] < 100.0


def test_edit_mode_generation_scores_the_generation_family(both, tiny_model_dir):
    gen = CandidateEvaluator(dataclasses.replace(both.settings, edit_mode="generation"), reference=both.reference)
    delta = _delta(both.model, 2, seed=1)
    tf_out = both.evaluate(delta, 0.8, 0.0)  # a damaged model, not a destroyed one
    gen_out = gen.evaluate(delta, 0.8, 0.0)
    for key in (*EDIT_METRICS, *GEN_EDIT_METRICS):  # same candidate, same metrics
        assert tf_out.get(key) == gen_out.get(key), key
    weights = both.settings.edit_weights or {m: 1.0 for m in EDIT_METRICS}
    # no general tasks: locality is the general objective, left out of the edit score
    tf_fam, gen_fam = edit_family(tf_out, "teacher-forced"), edit_family(gen_out, "generation")
    assert tf_out["edit_score"] == pytest.approx(edit_score(tf_fam, weights, exclude=("locality",)))
    assert gen_out["edit_score"] == pytest.approx(edit_score(gen_fam, weights, exclude=("locality",)))
    assert tf_out["general_score"] == pytest.approx(tf_out["locality"] / 100)
    assert gen_out["general_score"] == pytest.approx(gen_out["gen.locality"] / 100)
    # token agreement with the base's argmax (teacher-forced: 76 here) is kinder than agreement
    # of the whole generated answer (33 here): the chosen family sets the objective
    assert tf_out["general_score"] > gen_out["general_score"] + 0.2


def test_generation_only_skips_teacher_forcing(tiny_model_dir, both):
    settings = dataclasses.replace(both.settings, eval_mode="generation", edit_mode="generation")
    only = CandidateEvaluator(settings)
    assert only.reference.locality is None
    out = only.evaluate(_delta(only.model, 2, seed=1), 0.0, 0.0)
    assert not any(name in out for name in EDIT_METRICS)
    ref = both.evaluate(_delta(both.model, 2, seed=1), 0.0, 0.0)
    assert all(out[name] == ref[name] for name in GEN_EDIT_METRICS)


def test_a_shared_reference_from_another_mode_is_refused(tiny_model_dir, both):
    tf_only = CandidateEvaluator(dataclasses.replace(both.settings, eval_mode="teacher-forced"))
    with pytest.raises(ValueError, match="generated locality answers"):
        CandidateEvaluator(both.settings, reference=tf_only.reference)


# -- the demo: issue 14's acceptance ----------------------------------------------------------

@pytest.mark.slow
def test_demo_best_candidate_generates_its_edits_and_the_base_does_not(tmp_path):
    """The README table's settings (layer 1, lr 3e-4, τ 0.05, K 7, E 3; α 0.3, sparsity 0.5),
    R-SFT + merge-evaluate on the demo with mode both and the demo's own general tasks."""
    from mm4ke_ray.delta import load_delta
    from mm4ke_ray.demo.resolve import resolve_demo
    from mm4ke_ray.rsft.config import RSFTConfig
    from mm4ke_ray.rsft.to_folder import rsft_to_folder

    config = resolve_demo(validate_config(yaml.safe_load(DEMO_YAML.read_text())))
    assert config.evaluation.mode == "both"  # the demo shows both families
    s = eval_settings(config, "cpu")
    evaluator = CandidateEvaluator(s)
    evaluator.reference.general_result.check_noise()  # the demo's tasks pass the sweep's guard
    base = evaluator.reference.metrics
    assert base["gen.edit_succ"] <= 20.0
    run = rsft_to_folder(tmp_path / "delta", model=s.model, edits=s.edits, device="cpu",
                         config=RSFTConfig(layer=1, lr=3e-4, threshold=0.05, steps=7, epochs=3))
    assert run.summary()["status"] == "ok"
    delta, _ = load_delta(tmp_path / "delta")
    best = evaluator.evaluate(delta, 0.3, 0.5)
    assert best["gen.edit_succ"] >= 80.0
    assert best["gen.locality"] >= 80.0 and best["edit_succ"] >= 80.0
    for task in ("demo_facts", "demo_rephrase"):
        assert f"general.{task}.stderr" in best

