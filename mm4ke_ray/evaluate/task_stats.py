"""Per-task noise of an lm-eval result: standard error, chance floor, scale, per-document values.

Two kinds of metric carry per-document values:
- a mean of per-document values (accuracy, exact match): the values themselves, SE = sample std
  / sqrt(n), as lm-eval's `mean_stderr`;
- a perplexity (`weighted_perplexity`: exp(Σ NLL / Σ words), lm-eval's `word_perplexity` /
  `byte_perplexity`): each document's NLL and its weight (words or bytes). Its SE is the delta
  method's on the ratio r = Σ NLL / Σ w (a ratio estimator over documents): SE(r) =
  sqrt(Σ (NLL_d − r·w_d)² / (D(D−1))) / mean(w), SE(ppl) = ppl · SE(r).
A perplexity has no chance floor (None): lower is better and no guess scores a known value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

_CHANCE_METRICS = ("acc", "acc_norm", "acc_mutual_info")  # pick-one-choice accuracies
PERPLEXITY_AGGREGATIONS = ("weighted_perplexity",)
# Tasks whose metrics lm-eval reports on a 0-100 scale without per-document values (SQuAD 2.0's
# exact / f1): the scale bounds their SE (`scores.noise_floor_stderr`). Every other metric: 0-1.
PERCENT_SCALE_TASKS = frozenset({"squadv2"})


def sample_stderr(values: list[float]) -> float | None:
    """Standard error of a mean (sample std / sqrt n), as lm-eval's `mean_stderr` computes it."""
    n = len(values)
    if n < 2:
        return None
    mu = math.fsum(values) / n
    return math.sqrt(math.fsum((v - mu) ** 2 for v in values) / (n - 1) / n)


def log_ratio_stderr(nll: list[float], weights: list[float]) -> float | None:
    """SE of r = Σ nll / Σ weights (the log of a weighted perplexity) over documents; None for
    fewer than 2 documents or no weight."""
    n, total = len(nll), math.fsum(weights)
    if n < 2 or total <= 0:
        return None
    r = math.fsum(nll) / total
    spread = math.fsum((x - r * w) ** 2 for x, w in zip(nll, weights, strict=True))
    return math.sqrt(spread / (n * (n - 1))) / (total / n)


def perplexity_stderr(nll: list[float], weights: list[float]) -> float | None:
    """SE of exp(Σ nll / Σ weights) by the delta method (`log_ratio_stderr` times the perplexity)."""
    se = log_ratio_stderr(nll, weights)
    return None if se is None else math.exp(math.fsum(nll) / math.fsum(weights)) * se


def paired_log_items(nll: list[float], weights: list[float]) -> list[float]:
    """Per document, −NLL_d / mean(w): their mean is −log(perplexity), so the difference of two
    candidates' means on the same documents is log(ppl_a / ppl_b) = log(retention_b / retention_a),
    ≈ retention_b − retention_a near 1: items on the general objective's scale for pairing."""
    mean_w = math.fsum(weights) / len(weights)
    return [-x / mean_w for x in nll]


@dataclass(frozen=True)
class LeafStats:
    """One leaf task's noise under one metric and filter."""

    stderr: float | None
    floor: float | None  # chance score; 0 for generated answers; None for a perplexity
    n_docs: int
    values: list[float] | None  # per document: the metric's value, or a perplexity's NLL
    weights: list[float] | None = None  # per document, a perplexity's words/bytes (else None)
    scale: float = 1.0
    chance_items: list[float] | None = None  # per document, 1 / its choices (the floor is their mean)


def leaf_stats(task, name: str, samples: list[dict], metric: str | None) -> LeafStats:
    """`LeafStats` of an lm-eval task from its logged samples (one filter, in document order)."""
    from lm_eval.api.metrics import mean, weighted_perplexity

    aggregation = task.aggregation().get(metric)
    scale = 100.0 if name in PERCENT_SCALE_TASKS else 1.0
    if aggregation is weighted_perplexity:
        try:
            pairs = [(float(s[metric][0]), float(s[metric][1])) for s in samples]
        except (KeyError, TypeError, ValueError, IndexError):
            return LeafStats(None, None, len(samples), None, scale=scale)
        nll, weights = [-ll for ll, _ in pairs], [w for _, w in pairs]
        return LeafStats(perplexity_stderr(nll, weights), None, len(samples), nll, weights, scale)
    values = None
    if aggregation is mean:
        try:
            values = [float(s[metric]) for s in samples]
        except (KeyError, TypeError, ValueError):  # a per-document value that is not a number
            values = None
    floor, chance = 0.0, None
    if task.OUTPUT_TYPE == "multiple_choice" and metric in _CHANCE_METRICS and samples:
        chance = [1 / len(task.doc_to_choice(s["doc"])) for s in samples]
        floor = chance_floor(chance)
    if not (task.higher_is_better() or {}).get(metric, True):
        floor = chance = None  # a lower-is-better metric has no chance floor to clear
    se = sample_stderr(values) if values is not None else None
    return LeafStats(se, floor, len(samples), values, scale=scale, chance_items=chance)


def chance_floor(chance_items: list[float]) -> float:
    """A multiple-choice task's chance score: the mean over its documents of 1 / their choices."""
    return sum(chance_items) / len(chance_items)
