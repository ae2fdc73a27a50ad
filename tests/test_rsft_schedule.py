"""R-SFT's learning-rate schedule: constant (Algorithm 1, the default) or warm-up + linear/cosine
decay over the most updates E·N·K, as LLaMA-Factory runs transformers' schedulers."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError
from transformers import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

from mm4ke_ray.data.records import EditRecord
from mm4ke_ray.rsft import RSFTConfig, run_rsft
from mm4ke_ray.rsft.trainer import lr_factor


@pytest.fixture(scope="module")
def records(zsre_raw) -> list[EditRecord]:
    return [EditRecord(prompt=r["prompt"], target_new=r["target_new"]) for r in zsre_raw[:3]]


@pytest.fixture(scope="module")
def qwen(tiny_model_factory):
    return tiny_model_factory("qwen2", hidden=32, layers=3, seed=4)


SCHEDULERS = {
    "constant": get_constant_schedule_with_warmup,
    "linear": get_linear_schedule_with_warmup,
    "cosine": get_cosine_schedule_with_warmup,
}


@pytest.mark.parametrize("kind", ["constant", "linear", "cosine"])
@pytest.mark.parametrize("warmup_ratio", [0.0, 0.1, 0.35])
def test_factor_is_transformers_schedule(kind, warmup_ratio):
    horizon = 5 * 7 * 6  # E·N·K
    config = RSFTConfig(lr_schedule=kind, warmup_ratio=warmup_ratio)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    warmup = math.ceil(warmup_ratio * horizon)  # as TrainingArguments.get_warmup_steps
    args = (opt, warmup) if kind == "constant" else (opt, warmup, horizon)
    sched = SCHEDULERS[kind](*args)
    want = []
    for _ in range(horizon):
        want.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    got = [lr_factor(config, horizon)(u) for u in range(horizon)]
    assert got == pytest.approx(want, abs=1e-12)


def test_default_is_the_papers_constant_lr():
    config = RSFTConfig()
    assert config.lr_schedule == "constant" and config.warmup_ratio == 0.0
    assert all(lr_factor(config, 90)(u) == 1.0 for u in range(90))


def test_warmup_from_zero_makes_the_first_update_a_no_op(qwen, tiny_tokenizer, records):
    """One record, one update, warm-up over it: η = 0 on that update (transformers' warm-up
    starts at 0), so the delta is exactly zero; the constant schedule moves every tensor."""
    base = dict(layer=1, epochs=1, steps=1, lr=1e-2, threshold=0.0, optimizer="sgd")
    warm = run_rsft(qwen, tiny_tokenizer, records[:1], RSFTConfig(**base, warmup_ratio=0.5))
    plain = run_rsft(qwen, tiny_tokenizer, records[:1], RSFTConfig(**base))
    assert warm.updates == plain.updates == 1
    assert all(torch.count_nonzero(d) == 0 for d in warm.delta.values())
    assert all(torch.count_nonzero(d) > 0 for d in plain.delta.values())


def test_decay_shrinks_late_updates_and_is_recorded(qwen, tiny_tokenizer, records):
    """With SGD the update size is η·|∇|: linear decay gives a smaller total move than constant,
    the horizon is E·N·K even when τ stops edits early, and rsft.json says what ran."""
    base = dict(layer=1, epochs=2, steps=4, lr=1e-2, threshold=0.0, optimizer="sgd")
    const = run_rsft(qwen, tiny_tokenizer, records, RSFTConfig(**base))
    linear = run_rsft(qwen, tiny_tokenizer, records, RSFTConfig(**base, lr_schedule="linear"))
    norm = lambda r: sum(d.norm() ** 2 for d in r.delta.values()) ** 0.5  # noqa: E731
    assert norm(linear) < 0.8 * norm(const)
    doc = linear.as_json()
    assert doc["lr_schedule"] == {"kind": "linear", "warmup_ratio": 0.0, "horizon_updates": 24}
    assert doc["config"]["lr_schedule"] == "linear"
    assert const.as_json()["lr_schedule"]["kind"] == "constant"
    stopped = run_rsft(qwen, tiny_tokenizer, records, RSFTConfig(**{**base, "threshold": 1e9}))
    assert stopped.updates == 0 and stopped.schedule_updates == 24


@pytest.mark.parametrize("field,value", [("warmup_ratio", 1.0), ("warmup_ratio", -0.1),
                                         ("lr_schedule", "step")])
def test_bad_schedule_names_the_field(field, value):
    with pytest.raises(ValidationError, match=field):
        RSFTConfig(**{field: value})


# -- the schedule in a sweep: searched like τ, K, E, lr and layer, recorded per candidate run ----


def _search(space: dict | None = None, rsft: dict | None = None):
    from mm4ke_ray.config import validate_config

    return validate_config({"search": {"space": space or {}, "rsft": rsft or {}}}).search


def test_the_sweep_default_is_the_papers_constant_lr_and_it_is_fixed():
    from mm4ke_ray.search.space import split_space

    searched, fixed = split_space(_search())
    assert fixed["lr_schedule"] == "constant" and fixed["warmup_ratio"] == 0.0
    assert "lr_schedule" not in searched and "warmup_ratio" not in searched


def test_a_choice_list_and_a_range_make_the_schedule_a_search_dimension():
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from mm4ke_ray.search.space import split_space

    search = _search({"lr_schedule": {"choices": ["constant", "cosine"]}, "warmup_ratio": {"low": 0.0, "high": 0.1}})
    searched, fixed = split_space(search)
    assert searched["lr_schedule"] == CategoricalDistribution(["constant", "cosine"])
    assert searched["warmup_ratio"] == FloatDistribution(0.0, 0.1)
    assert "lr_schedule" not in fixed and "warmup_ratio" not in fixed


@pytest.mark.parametrize("form", [{"space": {"lr_schedule": "cosine", "warmup_ratio": 0.1}},
                                  {"rsft": {"lr_schedule": "cosine", "warmup_ratio": 0.1}}],
                         ids=["bare value in space", "older search.rsft form"])
def test_the_fixed_forms_fix_it_in_the_space(form):
    from mm4ke_ray.search.space import split_space

    search = _search(**form)
    fixed = split_space(search)[1]
    assert (fixed["lr_schedule"], fixed["warmup_ratio"]) == ("cosine", 0.1)
    assert search.rsft.lr_schedule is None  # moved into the space: one place to read it from


def test_a_folded_config_validates_again_as_resume_and_export_reload_it():
    from mm4ke_ray.config import validate_config

    config = validate_config({"search": {"rsft": {"lr_schedule": "linear"}}})
    again = validate_config(config.model_dump())  # the saved config.yaml / resume manifest
    assert again.search.space.lr_schedule.choices == ["linear"]
    assert config.with_overrides(**{"search.seed": 3}).search.space.lr_schedule.choices == ["linear"]


def test_setting_it_in_both_places_is_refused_naming_both():
    from mm4ke_ray.config import ConfigError, validate_config

    with pytest.raises(ConfigError, match=r"search\.space\.lr_schedule and search\.rsft\.lr_schedule"):
        validate_config({"search": {"space": {"lr_schedule": "cosine"}, "rsft": {"lr_schedule": "linear"}}})


@pytest.mark.parametrize("space,field", [({"lr_schedule": {"choices": ["constant", "step"]}}, "search.space.lr_schedule"),
                                         ({"warmup_ratio": {"low": 0.0, "high": 1.0}}, "search.space.warmup_ratio"),
                                         ({"warmup_ratio": -0.1}, "search.space.warmup_ratio")])
def test_a_bad_searched_schedule_names_its_field(space, field):
    from mm4ke_ray.config import ConfigError, validate_config

    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        validate_config({"search": {"space": space}})


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "gp", "random"])
def test_the_sampler_draws_every_schedule_of_the_choice_list(sampler):
    import optuna

    from mm4ke_ray.search.space import make_sampler, split_space

    search = _search({"lr_schedule": {"choices": ["constant", "linear", "cosine"]},
                      "warmup_ratio": {"low": 0.0, "high": 0.2}}).model_copy(update={"sampler": sampler})
    searched, _ = split_space(search)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=make_sampler(search))
    drawn = [study.ask(searched).params for _ in range(30)]
    assert {d["lr_schedule"] for d in drawn} == {"constant", "linear", "cosine"}
    assert all(0.0 <= d["warmup_ratio"] <= 0.2 for d in drawn) and len({d["warmup_ratio"] for d in drawn}) > 1


def test_the_trial_trains_with_its_drawn_schedule(tiny_model_dir, tmp_path):
    """search/trial.py's R-SFT (no Ray started): the trial's params reach RSFTConfig and rsft.json."""
    import json

    from conftest import ZSRE

    from mm4ke_ray.evaluate.candidate import EvalSettings
    from mm4ke_ray.search.rsft_runner import trial_rsft

    search = _search({"lr_schedule": {"choices": ["constant", "cosine"]}, "warmup_ratio": {"low": 0.0, "high": 0.5}})
    params = {"threshold": 0.0, "steps": 2, "epochs": 1, "lr": 1e-3, "layer": 1, "alpha": 0.0, "sparsity": 0.0,
              "lr_schedule": "cosine", "warmup_ratio": 0.25}
    settings = EvalSettings(model=str(tiny_model_dir), edits=str(ZSRE), limit=2)
    summary = trial_rsft(settings, search, params, str(tmp_path), "cpu")
    assert summary["status"] == "ok"
    doc = json.loads((tmp_path / "rsft.json").read_text())
    assert doc["lr_schedule"] == {"kind": "cosine", "warmup_ratio": 0.25, "horizon_updates": 4}


def test_each_candidate_run_records_its_schedule_in_mlflow(tmp_path):
    """The drawn schedule is an MLflow param of every candidate run (and a column of its row);
    the parent run records what was searched."""
    from mm4ke_ray.config import validate_config
    from mm4ke_ray.tracking.mlflow_tracker import SweepTracker
    from mm4ke_ray.tracking.query import load_sweep
    from mm4ke_ray.tracking.run_records import candidate_rows, candidate_run
    from mm4ke_ray.tracking.sweep_run import recorded_choices

    config = validate_config({"search": {"space": {"lr_schedule": {"choices": ["constant", "cosine"]},
                                                   "warmup_ratio": {"low": 0.0, "high": 0.1}}}})
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = SweepTracker(uri, "schedule", str(tmp_path / "artifacts"))
    tracker.start_sweep("sched", recorded_choices(config), {})
    params = {"threshold": 0.1, "steps": 2, "epochs": 1, "lr": 1e-3, "layer": 1, "alpha": 0.2, "sparsity": 0.3}
    for trial, (kind, warmup) in enumerate((("cosine", 0.05), ("constant", 0.0))):
        result = {"params": {**params, "lr_schedule": kind, "warmup_ratio": warmup},
                  "candidates": [{"alpha": 0.2, "sparsity": 0.3, "kind": "sampled", "metrics": {"edit_score": 0.5}}]}
        for row in candidate_rows(result, f"t{trial}"):
            tracker.log_candidate(row["candidate"], *candidate_run(row, f"t{trial}"))
    tracker.finish()
    sweep = load_sweep(uri, "sched")
    got = sorted((r["lr_schedule"], r["warmup_ratio"]) for r in sweep.candidates if r.get("kind") == "sampled")
    assert got == [("constant", 0.0), ("cosine", 0.05)]
    assert sweep.params["rsft_lr_schedule"] == "constant|cosine" and sweep.params["rsft_warmup_ratio"] == "0..0.1"


def test_the_papers_schedule_keeps_the_extra_candidates_seed_and_another_changes_it():
    import json
    import zlib

    from mm4ke_ray.search.space import candidate_seed

    params = {"threshold": 0.1, "steps": 2, "epochs": 1, "lr": 1e-3, "layer": 1, "alpha": 0.2, "sparsity": 0.3}
    before = 7 + zlib.crc32(json.dumps(params, sort_keys=True).encode()) % 10_000  # before the schedule was searched
    assert candidate_seed(7, {**params, "lr_schedule": "constant", "warmup_ratio": 0.0}) == before
    assert candidate_seed(7, {**params, "lr_schedule": "cosine", "warmup_ratio": 0.0}) != before
    assert candidate_seed(7, {**params, "lr_schedule": "constant", "warmup_ratio": 0.1}) != before


def test_params_without_the_schedule_take_the_spaces_fixed_one():
    """A trial restored from a sweep started before the schedule was searched, or a caller's
    partial params: the space's fixed values fill in."""
    from mm4ke_ray.evaluate.candidate import EvalSettings
    from mm4ke_ray.search.rsft_runner import rsft_config

    params = {"threshold": 0.1, "steps": 2, "epochs": 1, "lr": 1e-3, "layer": 1}
    config = rsft_config(params, _search(rsft={"lr_schedule": "linear", "warmup_ratio": 0.2}),
                          EvalSettings(model="m", edits="e"))
    assert (config.lr_schedule, config.warmup_ratio) == ("linear", 0.2)
