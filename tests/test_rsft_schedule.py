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


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
