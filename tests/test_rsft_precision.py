"""R-SFT of a bfloat16 model keeps its updates: float32 master weights and optimizer state.

Without them an AdamW update of lr 5e-5 on a weight of ~0.02 (Qwen's init std) is below half a
bfloat16 ulp and rounds away: measured on this setup, 36-44% of the delta's entries stayed
exactly 0 and its cosine to the float32 run's delta was 0.73-0.76.
"""

from __future__ import annotations

import copy

import pytest
import torch

from mm4ke_ray.data.records import EditRecord
from mm4ke_ray.rsft import RSFTConfig, run_rsft


@pytest.fixture(scope="module")
def records(zsre_raw) -> list[EditRecord]:
    return [EditRecord(prompt=r["prompt"], target_new=r["target_new"]) for r in zsre_raw[:4]]


@pytest.fixture(scope="module")
def pair(tiny_model_factory):
    """The same weights twice: in bfloat16, and that bfloat16 model upcast to float32."""
    model = tiny_model_factory("qwen2", hidden=64, layers=4, seed=5)
    assert model.config.initializer_range == 0.02  # Qwen's init std: small weights, coarse ulps
    half = copy.deepcopy(model).to(torch.bfloat16)
    return half, copy.deepcopy(half).float()


def _flat(delta: dict) -> torch.Tensor:
    return torch.cat([delta[n].flatten() for n in sorted(delta)])


@pytest.mark.parametrize("lr", [5e-5, 5e-4])
def test_bf16_delta_matches_float32(pair, tiny_tokenizer, records, lr):
    half, full = pair
    config = RSFTConfig(layer=2, epochs=5, steps=6, lr=lr, threshold=0.0)
    before = {n: p.detach().clone() for n, p in half.named_parameters()}
    got = run_rsft(half, tiny_tokenizer, records, config)
    want = run_rsft(full, tiny_tokenizer, records, config)
    a, b = _flat(got.delta), _flat(want.delta)
    assert a.dtype == torch.float32
    cosine = torch.nn.functional.cosine_similarity(a, b, dim=0).item()
    zeros = (a == 0).float().mean().item()
    assert cosine >= 0.98, cosine
    assert zeros <= 0.05, zeros
    assert got.master_dtype == "float32" and got.model_dtype == "bfloat16"
    assert got.as_json()["precision"] == {"model": "bfloat16", "master": "float32"}
    # The frozen model is untouched and still bfloat16 (it ran in its own dtype).
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())
    assert all(torch.equal(p, before[n]) for n, p in half.named_parameters())


def test_delta_is_master_minus_upcast_base(pair, tiny_tokenizer, records):
    """master − float32(base) is not a multiple of a bfloat16 ulp: it kept sub-ulp updates, and
    adding it back to the float32 base in one rounding gives the trained bf16 weights."""
    half, _ = pair
    config = RSFTConfig(layer=1, epochs=1, steps=2, lr=5e-5, threshold=0.0)
    result = run_rsft(half, tiny_tokenizer, records[:1], config)
    params = dict(half.named_parameters())
    name = result.trained_tensors[0]
    base = params[name].detach().float()
    merged = (base + result.delta[name]).to(torch.bfloat16)
    moved = merged != params[name]
    sub_ulp = (result.delta[name] != 0) & ~moved  # updates that a bf16 optimizer would lose
    assert sub_ulp.any() and moved.any()
