"""The merge's fast paths (one-pass finite check, in-place add) give exactly the plain results."""

from __future__ import annotations

import pytest
import torch

from mm4ke_ray.errors import UserError
from mm4ke_ray.merge import apply_update_, prepare_delta, restore_
from mm4ke_ray.merge.apply import _all_finite


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("where", [0, 1, 17, 1023, -2, -1])
def test_finite_check_finds_any_bad_entry(bad, where):
    t = torch.randn(4099)  # not a multiple of any vector width: the tail is checked too
    assert _all_finite(t)
    t[where] = bad
    assert not _all_finite(t)
    with pytest.raises(UserError, match="NaN or inf"):
        prepare_delta({"w": t}, 0.0, 0.0)


def test_finite_check_dtypes_and_empty():
    assert _all_finite(torch.empty(0))
    assert _all_finite(torch.randn(8, 8, dtype=torch.bfloat16))
    assert not _all_finite(torch.tensor([1.0, float("nan")], dtype=torch.bfloat16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_in_place_add_equals_the_rounded_sum(dtype):
    lin = torch.nn.Linear(64, 32).to(dtype)
    base = lin.weight.detach().clone()
    update = {"weight": torch.randn(32, 64, dtype=torch.promote_types(dtype, torch.float32)) * 1e-3}
    work = torch.promote_types(dtype, torch.float32)
    expected = (base.to(work) + update["weight"]).to(dtype)
    snapshot = apply_update_(lin, update)
    assert torch.equal(lin.weight, expected)
    restore_(lin, snapshot)
    assert torch.equal(lin.weight, base)


@pytest.mark.parametrize("density", [0.01, 0.2, 0.5, 0.8, 0.999])
def test_cpu_threshold_equals_kthvalue(density):
    from mm4ke_ray.merge.sparsify import _kth_largest, kept_count, magnitude_mask

    g = torch.Generator().manual_seed(int(density * 1000))
    # Rounded values: many ties at the threshold, the case where the tie rule matters.
    scores = (torch.randn(50_003, generator=g) * 20).round().abs()
    k = kept_count(scores.numel(), density)
    want = torch.kthvalue(scores, scores.numel() - k + 1).values
    got = _kth_largest(scores, k)
    assert got.dtype == scores.dtype and torch.equal(got, want)
    assert int(magnitude_mask(scores, density).sum()) == k
