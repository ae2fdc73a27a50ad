"""One delta's α × sparsity front from a few merges: a small surrogate per delta (issue 24 §3).

Within one R-SFT delta both objectives are smooth in (α, sparsity). Instead of evaluating every
point of an α × sparsity grid, `surrogate_search` evaluates a few (the sampled point, the pure
R-SFT point and space-filling points of the grid), fits a Gaussian process per objective to what
it has (a linear trend plus an RBF residual, its length-scale and variance by maximum likelihood;
plain numpy), and then evaluates the grid points whose optimistic prediction (mean + κ·sd) would
add the most hypervolume to the front found so far. It stops at its budget of evaluations, when
the grid is spent, or when no remaining point is expected to move the front by more than `tol` of
its hypervolume.

Pure: no Ray, no torch. The caller evaluates (the sweep's trial over its actor pool, with halving
inside each batch; the replay by look-up) through `evaluate(group) -> (full, pruned)`; only full
results are told to the surrogate, as only they are told to the sampler.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

Point = tuple[float, float]  # (α, sparsity)
OBJECTIVE_NAMES = ("edit_score", "general_score")  # as evaluate/scores.OBJECTIVES, both maximised
LENGTH_SCALES = (0.2, 0.35, 0.6, 1.0, 2.0)  # per axis, on inputs scaled to [0, 1]; chosen by likelihood
PRIOR_LENGTH, PRIOR_WIDTH = 0.5, 0.5  # the length-scale's prior: median, sd of its log
NUGGET = 1e-6  # relative noise: the objectives of one delta are deterministic given their items
TREND_POINTS = 5  # a linear trend from this many points on (fewer: a constant mean)
BOUNDS = (0.0, 1.0)  # both objectives are scores in [0, 1]: predictions are clipped to it
MODES = ("surrogate", "exhaustive", "random")


def axis(p, n: int) -> list[float]:
    """`n` evenly spaced values of a search parameter (its choices when it has a list)."""
    if p.choices is not None:
        return sorted(float(v) for v in p.choices)
    if p.low == p.high:
        return [float(p.low)]
    return [float(v) for v in np.linspace(p.low, p.high, n)]


def candidate_grid(space, n: int) -> list[Point]:
    """The α × sparsity grid the surrogate chooses from: `n` values per axis over the space."""
    return list(itertools.product(axis(space.alpha, n), axis(space.sparsity, n)))


def choose_mode(pool_size: int, budget: int, initial: int) -> str:
    """Whether a surrogate can help: 'exhaustive' when the budget covers the grid anyway,
    'random' when it is too small to fit one after the initial points (today's random extras),
    'surrogate' otherwise."""
    if budget >= pool_size:
        return "exhaustive"
    if budget <= initial:
        return "random"
    return "surrogate"


def hypervolume_2d(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """Area dominated by `points` above `reference`, both objectives maximised."""
    pts = sorted((float(a), float(b)) for a, b in points if a > reference[0] and b > reference[1])
    area, best_b = 0.0, reference[1]
    for a, b in reversed(pts):  # from the largest first objective down
        if b > best_b:
            area += (a - reference[0]) * (b - best_b)
            best_b = b
    return area


@dataclass
class _GP:
    """A GP of one objective: linear trend + RBF residual, hyper-parameters by likelihood."""

    x: np.ndarray
    beta: np.ndarray
    length: np.ndarray  # per axis
    variance: float
    chol: np.ndarray
    weights: np.ndarray

    @staticmethod
    def _trend(x: np.ndarray, n_fit: int) -> np.ndarray:
        cols = [np.ones(len(x))] + ([x[:, 0], x[:, 1]] if n_fit >= TREND_POINTS else [])
        return np.stack(cols, axis=1)

    @staticmethod
    def _kernel(a: np.ndarray, b: np.ndarray, length: np.ndarray) -> np.ndarray:
        d2 = (((a[:, None, :] - b[None, :, :]) / length) ** 2).sum(-1)
        return np.exp(-0.5 * d2)

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray) -> _GP:
        h = cls._trend(x, len(x))
        beta, *_ = np.linalg.lstsq(h, y, rcond=None)
        r = y - h @ beta
        best = None
        for pair in itertools.product(LENGTH_SCALES, repeat=2):
            length = np.asarray(pair)
            k = cls._kernel(x, x, length) + NUGGET * np.eye(len(x))
            try:
                chol = np.linalg.cholesky(k)
            except np.linalg.LinAlgError:
                continue
            z = np.linalg.solve(chol, r)
            variance = max(float(z @ z) / len(x), 1e-12)  # its maximum-likelihood value
            # A weak log-normal prior on the length-scale: a few points cannot tell a wiggle from
            # a trend, and the shortest scale would interpolate them with spikes.
            prior = 0.5 * float(((np.log(length / PRIOR_LENGTH) / PRIOR_WIDTH) ** 2).sum())
            nll = 0.5 * len(x) * math.log(variance) + float(np.log(np.diag(chol)).sum()) + prior
            if best is None or nll < best[0]:
                best = (nll, length, variance, chol, np.linalg.solve(chol.T, z))
        _, length, variance, chol, weights = best
        return cls(x, beta, length, variance, chol, weights)

    def predict(self, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ks = self._kernel(xs, self.x, self.length)
        mean = self._trend(xs, len(self.x)) @ self.beta + ks @ self.weights
        v = np.linalg.solve(self.chol, ks.T)
        var = self.variance * np.clip(1.0 - (v * v).sum(0), 0.0, None)
        return mean, np.sqrt(var)


@dataclass
class FrontSurrogate:
    """Ask/tell over one delta's grid of (α, sparsity) points, both objectives maximised."""

    pool: list[Point]
    kappa: float | None = None  # None: expected hypervolume improvement; a number: judged at mean + kappa · sd
    draws: int = 64  # Monte Carlo draws of the expected improvement
    tol: float = 0.005  # stop when no point is expected to add more than this share of the hypervolume
    reference: tuple[float, float] | None = None  # hypervolume reference; None: below what was seen
    told: dict[Point, tuple[float, float]] = field(default_factory=dict)
    spent: set[Point] = field(default_factory=set)  # told, pruned or asked: never proposed again
    stopped: str | None = None

    def __post_init__(self):
        self.pool = list(dict.fromkeys((float(a), float(s)) for a, s in self.pool))
        arr = np.asarray(self.pool, dtype=float)
        self._low = arr.min(0)
        self._span = np.where(arr.max(0) > arr.min(0), arr.max(0) - arr.min(0), 1.0)

    def _scale(self, points) -> np.ndarray:
        return (np.asarray(points, dtype=float).reshape(-1, 2) - self._low) / self._span

    def tell(self, point: Point, values: Sequence[float] | None) -> None:
        """A full evaluation's objectives, or None for a point evaluated but not in full (pruned)."""
        p = (float(point[0]), float(point[1]))
        self.spent.add(p)
        if values is not None and all(math.isfinite(v) for v in values):
            self.told[p] = (float(values[0]), float(values[1]))

    def remaining(self) -> list[Point]:
        return [p for p in self.pool if p not in self.spent]

    def space_filling(self, k: int) -> list[Point]:
        """`k` grid points each farthest from everything spent so far (maximin; ties: grid order),
        from the grid's interior while it has points left: the far corners are the front's ends
        at best (the pure R-SFT point, always evaluated, is one), and on hand-made and random
        smooth planes an interior design kept more hypervolume with 8 merges (0.985 vs 0.982 on
        average over 16 planes, worst 0.94 vs 0.92). On the first 3 deltas of the real SmolLM2
        table the two designs tie (mean 0.98 / 0.95 of the grid's hypervolume, product objectives
        / reliability vs locality, 24 starts each), but left to stop by itself the corner design
        stopped too early there (9 merges, 0.955 of the grid vs 19 merges, 0.998)."""
        out: list[Point] = []
        for _ in range(k):
            left = [p for p in self.remaining() if p not in out]
            if not left:
                break
            scaled = self._scale(left)
            inside = [p for p, x in zip(left, scaled, strict=True) if ((x > 0.01) & (x < 0.99)).all()] or left
            taken = list(self.spent) + out
            if not taken:
                out.append(inside[0])
                continue
            dist = ((self._scale(inside)[:, None, :] - self._scale(taken)[None, :, :]) ** 2).sum(-1).min(1)
            out.append(inside[int(np.argmax(dist))])
        self.spent.update(out)
        return out

    def _reference(self, ys: np.ndarray) -> np.ndarray:
        if self.reference is not None:
            return np.asarray(self.reference, dtype=float)
        span = np.maximum(ys.max(0) - ys.min(0), 1e-3)
        return ys.min(0) - 0.1 * span

    def _gains(self, front, ref, hv_now, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
        """Per candidate, the hypervolume it is expected to add (Monte Carlo over its predictive
        distribution with fixed draws, so a run repeats) or, with `kappa` set, the hypervolume its
        optimistic prediction would add."""
        if self.kappa is not None:
            return np.array([hypervolume_2d([*front, tuple(o)], ref) - hv_now
                             for o in np.clip(mean + self.kappa * sd, *BOUNDS)])
        z = np.random.default_rng(0).standard_normal((self.draws, 2))
        out = np.empty(len(mean))
        for i in range(len(mean)):
            ys = np.clip(mean[i] + z * sd[i], *BOUNDS)
            out[i] = np.mean([hypervolume_2d([*front, tuple(y)], ref) for y in ys]) - hv_now
        return out

    def ask(self, k: int) -> list[Point]:
        """Up to `k` grid points expected to move the front most; [] (and `stopped` set) when none
        is expected to move it by more than `tol`, or nothing is left."""
        left = self.remaining()
        if not left:
            self.stopped = "grid spent"
            return []
        if len(self.told) < 2:
            return self.space_filling(k)
        xs = self._scale(list(self.told))
        ys = np.asarray(list(self.told.values()), dtype=float)
        ref = self._reference(ys)
        front = [tuple(y) for y in ys]
        base_hv = hypervolume_2d(front, ref)
        chosen: list[Point] = []
        for _ in range(k):
            cand = [p for p in left if p not in chosen]
            if not cand:
                break
            models = [_GP.fit(xs, ys[:, j]) for j in range(2)]
            preds = [m.predict(self._scale(cand)) for m in models]
            mean = np.clip(np.stack([p[0] for p in preds], 1), *BOUNDS)
            sd = np.stack([p[1] for p in preds], 1)
            hv_now = hypervolume_2d(front, ref)
            gains = self._gains(front, ref, hv_now, mean, sd)
            i = int(np.argmax(gains))
            if gains[i] <= self.tol * max(base_hv, 1e-12):
                if not chosen:
                    self.stopped = "front settled"
                break
            chosen.append(cand[i])
            # Kriging believer: the chosen point joins as if it had its predicted mean, so the next
            # pick of this batch looks elsewhere.
            xs = np.vstack([xs, self._scale([cand[i]])])
            ys = np.vstack([ys, mean[i]])
            front.append(tuple(mean[i]))
        self.spent.update(chosen)
        return chosen


def surrogate_search(first: list[dict], pool: Sequence[Point], budget: int,
                     evaluate: Callable[[list[dict]], tuple[list[dict], list[dict]]], batch_size: int = 1,
                     initial: int = 4, kind: str = "extra", **surrogate_kw) -> tuple[list[dict], list[dict], dict]:
    """Evaluate one delta's merges where the front can still move: (full, pruned, info).

    `first`: candidates that are always evaluated, in the first batch (the sampled point first, the
    pure R-SFT point); each a dict with at least `alpha` and `sparsity`. The first batch adds
    space-filling grid points up to `initial` evaluations; then batches of up to `batch_size`
    points the surrogate chooses, until `budget` evaluations (pruned ones count) or it stops.
    `evaluate(group)` returns (candidates evaluated in full, with `metrics` holding the
    objectives; candidates pruned on the way). `info`: evaluations spent, batches, why it stopped.
    """
    sur = FrontSurrogate(pool, **surrogate_kw)
    for c in first:
        sur.spent.add((float(c["alpha"]), float(c["sparsity"])))
    fill = sur.space_filling(max(0, min(initial, budget) - len(first)))
    group = [*first, *({"kind": kind, "alpha": a, "sparsity": s} for a, s in fill)]
    full, pruned, spent, batches = [], [], 0, 0
    while group:
        got_full, got_pruned = evaluate(group)
        batches += 1
        spent += len(group)
        full += got_full
        pruned += got_pruned
        for c in got_full:
            sur.tell((c["alpha"], c["sparsity"]), [c["metrics"][n] for n in OBJECTIVE_NAMES])
        for c in got_pruned:
            sur.tell((c["alpha"], c["sparsity"]), None)
        room = budget - spent
        if room <= 0:
            sur.stopped = sur.stopped or "budget"
            break
        group = [{"kind": kind, "alpha": a, "sparsity": s} for a, s in sur.ask(min(batch_size, room))]
    info = {"surrogate.evaluations": spent, "surrogate.batches": batches, "surrogate.stopped": sur.stopped or "",
            "surrogate.grid": len(sur.pool)}
    return full, pruned, info
