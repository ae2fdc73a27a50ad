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


# ------------------------------------------------ bracketed Top_p selection == exact selection


def _reference_mask(delta: torch.Tensor, density: float) -> torch.Tensor:
    """The exact rule as it was first written: full selection, then the lowest-index ties."""
    from mm4ke_ray.merge.sparsify import kept_count

    scores = delta.detach().reshape(-1).float().abs()
    n, k = scores.numel(), kept_count(delta.numel(), density)
    mask = torch.zeros(n, dtype=torch.bool)
    if k == 0:
        return mask.reshape(delta.shape)
    threshold = torch.kthvalue(scores, n - k + 1).values
    mask = scores > threshold
    missing = k - int(mask.sum())
    mask[torch.nonzero(scores == threshold).squeeze(1)[:missing]] = True
    return mask.reshape(delta.shape)


def _cases():
    g = torch.Generator().manual_seed(11)
    yield "randn", torch.randn(2048, 768, generator=g) * 1e-2
    yield "randn-odd", torch.randn(100_003, generator=g)
    yield "ties", (torch.randn(512, 300, generator=g) * 4).round()  # ~20 distinct values
    yield "bf16", (torch.randn(1024, 256, generator=g) * 1e-3).to(torch.bfloat16)
    yield "zeros", torch.where(torch.rand(400, 400, generator=g) < 0.5, 0.0, torch.randn(400, 400, generator=g))
    yield "constant", torch.full((300, 300), -0.5)
    # A sample-fooling layout: every 67th entry (what the sample reads) is huge.
    x = torch.randn(200_000, generator=g)
    x[::67] = 100.0
    yield "strided", x


@pytest.mark.parametrize("name,delta", list(_cases()), ids=[c[0] for c in _cases()])
@pytest.mark.parametrize("density", [0.8, 0.5, 0.2, 0.01, 1e-4, 0.9999])
def test_fast_top_p_equals_exact_selection(name, delta, density):
    from mm4ke_ray.merge.sparsify import kept_count, magnitude, magnitude_mask

    want = _reference_mask(delta, density)
    assert int(want.sum()) == kept_count(delta.numel(), density)
    assert torch.equal(magnitude_mask(delta, density), want)
    got = magnitude(delta, density)
    expected = delta.masked_fill(~want, 0)
    assert got.dtype == delta.dtype
    assert torch.equal(got, expected)
    assert torch.equal(torch.signbit(got), torch.signbit(expected))  # zeros are +0.0, kept −0.0 stays
    # The update path (float32 work copy, written into a reused buffer) gives the same values.
    update = prepare_delta({"w": delta}, 0.0, 1.0 - density)["w"]
    assert torch.equal(update, expected.float())


def test_selection_matches_exact_with_ties_reported():
    import numpy as np

    from mm4ke_ray.merge.sparsify import _select_exact, select_kth_largest

    g = torch.Generator().manual_seed(5)
    scores = (torch.randn(300_000, generator=g) * 30).round().abs().numpy()
    for k in (1, 17, 60_000, 150_000, 299_999, 300_000):
        fast, exact = select_kth_largest(scores, k), _select_exact(scores, k)
        assert fast.threshold == exact.threshold and fast.above == exact.above
        assert np.array_equal(fast.ties, exact.ties)


def test_magnitude_out_buffer_is_written_and_returned():
    from mm4ke_ray.merge.sparsify import magnitude

    x = torch.randn(300, 301)
    buf = torch.full_like(x, 7.0)
    got = magnitude(x, 0.3, out=buf)
    assert got is buf and torch.equal(buf, magnitude(x, 0.3))
    assert magnitude(x, 0.0001, out=buf) is buf and int(buf.count_nonzero()) == 9  # k = ⌊9.03⌋
    assert torch.equal(magnitude(x, 1e-6, out=buf), torch.zeros_like(x))  # k = 0


def test_buffers_are_reused_only_when_nobody_holds_them():
    from mm4ke_ray.merge import apply_delta_
    from mm4ke_ray.merge.buffers import POOL

    lin = torch.nn.Linear(300, 400)
    base = lin.weight.detach().clone()
    delta = {"weight": torch.randn(400, 300) * 1e-2}
    one = 400 * 300 * 4
    POOL.clear()
    snap = apply_delta_(lin, delta, 0.5, 0.2)
    restore_(lin, snap)
    del snap  # update and snapshot buffers are free again
    assert POOL.nbytes == 2 * one
    snap = apply_delta_(lin, delta, 0.5, 0.2)
    kept = snap.originals["weight"]
    restore_(lin, snap)
    del snap  # the caller kept the original's copy: it must not be handed out again
    assert POOL.nbytes == one
    for _ in range(3):
        snap = apply_delta_(lin, delta, 0.3, 0.5)
        assert not torch.equal(lin.weight, base)
        restore_(lin, snap)
        del snap
    assert torch.equal(kept, base) and torch.equal(lin.weight, base)
    originals = None
    snap = apply_delta_(lin, delta, 0.5, 0.2)
    originals = snap.originals
    restore_(lin, snap)
    del snap
    for _ in range(2):
        restore_(lin, apply_delta_(lin, delta, 0.1, 0.1))
    assert torch.equal(originals["weight"], base)
