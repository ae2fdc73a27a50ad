"""Sparsifiers for a delta tensor: pure functions `fn(delta, density, generator) -> Tensor`.

`density` is the fraction of entries kept (= 1 − sparsity). Each function returns a new tensor
of the input's shape, dtype and device (density ≥ 1 returns the input itself, uncopied) and
never modifies its input. They are registered by name in `mm4ke_ray.merge.methods`.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np
import torch

# Tolerance on density·numel before flooring: 1 − 0.9 is 0.0999…98 in floating point and
# 0.29·100 is 28.999…96, which a plain int() would floor to one entry too few. The product's own
# rounding error stays below 1e-6 for tensors up to ~1e9 entries.
_COUNT_EPS = 1e-6


def kept_count(numel: int, density: float) -> int:
    """k = ⌊density · numel⌋ entries kept, clamped to [0, numel], robust to float noise."""
    if density >= 1:
        return numel
    if density <= 0:
        return 0
    return max(0, min(numel, int(density * numel + _COUNT_EPS)))


def _scores(delta: torch.Tensor, scratch: bool = False) -> torch.Tensor:
    """|Δ| flat, in at least float32 (exact for bf16/fp16 values; kthvalue/compare work on any
    device). With `scratch`, a CPU result goes into this thread's reused buffer: valid until the
    next call, for callers that drop it before returning."""
    work = torch.promote_types(delta.dtype, torch.float32)
    flat = delta.detach().reshape(-1)
    if scratch and flat.device.type == "cpu" and flat.dtype == work:
        buf = getattr(_scratch, "scores", None)
        if buf is None or buf.dtype != work or buf.numel() < flat.numel():
            buf = _scratch.scores = torch.empty(flat.numel(), dtype=work)
        return torch.abs(flat, out=buf[: flat.numel()])
    return flat.to(work).abs()


def _kth_largest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The exact k-th largest score by a full selection: the reference the fast path must equal."""
    if scores.device.type == "cpu":
        # The k-th largest is the (n − k + 1)-th smallest: a selection, not a sort. NumPy's
        # introselect finds it ~2x faster than torch.kthvalue (12 vs 23 ms for 1.6M entries),
        # and the value found is the same, so the masks are too.
        n = scores.numel()
        return torch.as_tensor(np.partition(scores.numpy(), n - k)[n - k])
    # On CUDA, kthvalue runs one thread block per slice (slow for one huge slice); a device-wide
    # radix sort is much faster. Any method finds the same value, so masks match across devices.
    return torch.sort(scores, descending=True).values[k - 1]


# The bracketed selection samples every _SAMPLE_STRIDE-th score (a prime, so that the sample does
# not follow a row or head structure of the weight) and brackets the threshold by ±_BRACKET_SD
# binomial standard deviations of the sample's rank, plus a few ranks. A bracket that misses is
# detected (the counts say so) and the exact selection runs instead: slower, never different.
_SAMPLE_STRIDE = 67
_BRACKET_SD = 4.0
_MIN_BRACKETED = 1 << 16  # below this, one introselect is already cheap


@dataclass(frozen=True)
class Selection:
    """Where the k-th largest score lies: enough to build the mask of exactly k entries.

    `threshold` is the k-th largest score; `above` counts the scores strictly greater; `ties`
    holds the flat indices (ascending) of the scores equal to it. Exactly `k − above` ties are
    kept, those with the lowest indices.
    """

    threshold: float
    above: int
    ties: np.ndarray

    def dropped_ties(self, k: int) -> np.ndarray:
        return self.ties[k - self.above :]


def _select_exact(scores: np.ndarray, k: int) -> Selection:
    threshold = np.partition(scores, scores.size - k)[scores.size - k]
    above = int(np.count_nonzero(scores > threshold))
    return Selection(float(threshold), above, np.flatnonzero(scores == threshold))


_scratch = threading.local()


def _scratch_masks(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Two boolean buffers of n entries, reused across calls in this thread: a fresh 1.5 MB
    array page-faults on first touch, which cost more than the comparison written into it."""
    buf = getattr(_scratch, "masks", None)
    if buf is None or buf.shape[1] < n:
        buf = _scratch.masks = np.empty((2, n), dtype=np.bool_)
    return buf[0, :n], buf[1, :n]


def select_kth_largest(scores: np.ndarray, k: int) -> Selection:
    """The k-th largest of a flat float array (1 ≤ k ≤ size), its count above and its ties.

    Close to one pass over the data: a strided sample brackets the k-th largest between two of
    its values lo ≤ hi; two comparisons count what lies above hi and at or above lo, and the
    exact k-th largest is then selected among the few scores inside [lo, hi] (~2% of them).
    The result is the value an exact introselect finds, so the masks are identical, ties included.
    """
    n = scores.size
    if n < _MIN_BRACKETED:
        return _select_exact(scores, k)
    sample = scores[::_SAMPLE_STRIDE]
    m = sample.size
    # The k-th largest of the whole sits near top rank k·m/n of the sample (0 = its largest).
    rank = k * m / n
    spread = _BRACKET_SD * math.sqrt(max(rank * (1 - rank / m), 1.0)) + 4
    top_hi = min(max(int(rank - spread), 0), m - 1)
    top_lo = min(max(int(math.ceil(rank + spread)), 0), m - 1)
    # Top rank r is the (m − 1 − r)-th smallest.
    part = np.partition(sample, [m - 1 - top_lo, m - 1 - top_hi])
    hi, lo = part[m - 1 - top_hi], part[m - 1 - top_lo]
    above_hi, in_band = _scratch_masks(n)
    np.greater(scores, hi, out=above_hi)
    n_above_hi = int(np.count_nonzero(above_hi))
    np.greater_equal(scores, lo, out=in_band)
    n_from_lo = int(np.count_nonzero(in_band))
    if not n_above_hi < k <= n_from_lo:  # the k-th largest is outside [lo, hi]
        return _select_exact(scores, k)
    np.logical_xor(in_band, above_hi, out=in_band)  # lo ≤ s ≤ hi (above_hi ⊂ from_lo)
    index = np.flatnonzero(in_band)
    values = scores[index]
    j = values.size - (k - n_above_hi)  # the (k − n_above_hi)-th largest in the band
    threshold = np.partition(values, j)[j]
    above = n_above_hi + int(np.count_nonzero(values > threshold))
    return Selection(float(threshold), above, index[values == threshold])


def _selection(scores: torch.Tensor, k: int) -> Selection:
    if scores.device.type == "cpu":
        return select_kth_largest(scores.numpy(), k)
    threshold = _kth_largest(scores, k)
    above = int((scores > threshold).sum())
    ties = torch.nonzero(scores == threshold).squeeze(1).cpu().numpy()
    return Selection(float(threshold), above, ties)


def magnitude_mask(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Boolean mask (shape of `delta`) of the k = kept_count(numel, density) largest |Δ| entries.

    Exactly k entries are True. Ties at the threshold go to the lowest flat indices, so the mask
    is the same on every run and every device.
    """
    n = delta.numel()
    k = kept_count(n, density)
    if k >= n:
        return torch.ones_like(delta, dtype=torch.bool)
    if k == 0:
        return torch.zeros_like(delta, dtype=torch.bool)
    scores = _scores(delta, scratch=True)
    sel = _selection(scores, k)
    mask = scores >= torch.tensor(sel.threshold, dtype=scores.dtype)
    _zero_at(mask, sel.dropped_ties(k))
    return mask.reshape(delta.shape)


def _zero_at(flat: torch.Tensor, index: np.ndarray) -> None:
    if index.size:
        flat[torch.from_numpy(index).to(flat.device)] = 0


def magnitude(
    delta: torch.Tensor,
    density: float,
    generator: torch.Generator | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Top_p of the paper: keep the k = ⌊density·numel⌋ entries of largest |Δ|, zero the rest.

    `generator` is unused (the method is deterministic); it is accepted for the common signature.
    `out` (optional, float32/64 `delta` only): a contiguous tensor of `delta`'s shape and dtype to
    write the result into (when density < 1), so that a caller can reuse one buffer per tensor.
    """
    if density >= 1:
        return delta
    n = delta.numel()
    k = kept_count(n, density)
    if k == 0:
        return torch.zeros_like(delta) if out is None else out.zero_()
    if delta.dtype not in (torch.float32, torch.float64):
        # masked_fill writes +0.0 (delta * mask would give −0.0 for negative entries).
        return delta.masked_fill(~magnitude_mask(delta, density), 0)
    delta = delta.detach().contiguous()  # flat indices of ties refer to this layout
    if k >= n:
        return delta.clone() if out is None else out.copy_(delta)
    scores = _scores(delta, scratch=True)
    sel = _selection(scores, k)
    # hardshrink keeps x where |x| > λ and writes +0.0 elsewhere, in one pass (masked_fill with
    # a mask takes ~15x longer on a CPU). With λ the next float below the threshold it keeps
    # exactly |x| ≥ threshold; the ties beyond k are then zeroed by index.
    below = float(np.nextafter(np.array(sel.threshold, dtype=_NUMPY[delta.dtype]), -np.inf))
    if out is None:
        out = torch.nn.functional.hardshrink(delta, below)
    else:
        torch.hardshrink(delta, below, out=out)
    _zero_at(out.view(-1), sel.dropped_ties(k))
    return out


_NUMPY = {torch.float32: np.float32, torch.float64: np.float64}


def dare(
    delta: torch.Tensor, density: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """DARE: keep each entry independently with probability `density`, rescale survivors by 1/density.

    The expected value of the result equals `delta`. Randomness is drawn on the CPU from
    `generator` (a CPU `torch.Generator`) whatever the delta's device, so that a seed gives the
    same mask on a GPU evaluation worker and on the CPU export. The price: ~1 s per candidate for
    a 7B model's MLP (3 × 68M entries), where `magnitude` on the GPU takes ~15 ms (H200).
    """
    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    keep = torch.rand(delta.shape, generator=generator, device="cpu") < density
    # Multiply by the reciprocal: CUDA turns division by a scalar into exactly this, so CPU and
    # GPU results agree bit for bit.
    return delta.masked_fill(~keep.to(delta.device), 0) * (1.0 / density)
