"""A simulated trial for successive halving (issue 23 §4): merges of one delta scored item by item,
so the product's own `run_rungs`/`promote` can be replayed thousands of times in seconds.

The setting of the issue's Monte Carlo: 1,301 edit records (KnowEdit ZsRE's test split), 5 lm-eval
tasks x 200 documents, 3 rungs, reduction factor 3. A merge has an edit strength `s` (how much of
the delta it applies) and a damage `g`: record i's sub-metric k (edit success, generalization,
portability) is solved when s exceeds the record's own threshold u_ik, and document j leaves the
base's answer when g exceeds its own threshold w_j (then it is right by chance, 1 in 4). Merges of
one delta thus agree on most items, which is what made a paired SE of 0 look like certainty; a
little independent noise per merge (a sparsifier's random drop) keeps them from nesting exactly.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass

from mm4ke_ray.evaluate.fidelity import RungItems, RungResult, mean_stderr, plan_rungs, run_rungs

RECORDS, TASKS, DOCS, RUNGS, ETA = 1301, 5, 200, 3, 3.0
SUBMETRICS = 3
NOISE = 0.002  # chance that a merge flips one sub-metric or document on its own
# Documents' damage thresholds: a merge of damage g changes (g - 0.3) / 5.7 of them, so merges of
# one delta differ on few documents. Under the old rule (paired SE, z 1) this world drops 17% of
# the true front and the most conservative merge half the time, as in the issue.
DAMAGE = (0.3, 6.0)


@dataclass
class World:
    """One trial's items: thresholds per record sub-metric and per document, the base's answers."""

    u: list[list[float]]  # [record][submetric] edit thresholds
    w: dict[str, list[float]]  # per task, each document's damage threshold
    base: dict[str, list[float]]  # per task, the base model's per-document value (0/1)

    @classmethod
    def draw(cls, rng: random.Random) -> World:
        u = [[rng.random() for _ in range(SUBMETRICS)] for _ in range(RECORDS)]
        w, base = {}, {}
        for t in range(TASKS):
            acc = rng.uniform(0.35, 0.8)
            w[f"task{t}"] = [rng.uniform(*DAMAGE) for _ in range(DOCS)]
            base[f"task{t}"] = [float(rng.random() < acc) for _ in range(DOCS)]
        return cls(u, w, base)

    def merge(self, s: float, g: float, rng: random.Random) -> tuple[list[float], dict[str, list[float]]]:
        """A merge's per-record edit scores and per-document values."""
        def flip(x: float) -> float:
            return 1.0 - x if rng.random() < NOISE else x

        edit = [statistics.fmean(flip(float(s > ui)) for ui in row) for row in self.u]
        docs = {t: [flip(b if g <= wj else float(rng.random() < 0.25)) for wj, b in zip(self.w[t], self.base[t],
                                                                                         strict=True)]
                for t in self.w}
        return edit, docs


def scores(edit: list[float], docs: dict[str, list[float]], base: dict[str, list[float]]) -> tuple[float, float]:
    """(edit score, general score): the mean edit score; the mean over tasks of retention, capped at 1."""
    retention = [statistics.fmean(docs[t]) / max(statistics.fmean(base[t]), 1e-9) for t in docs]
    return statistics.fmean(edit), min(1.0, statistics.fmean(retention))


def true_front(points: dict[str, tuple[float, float]]) -> set[str]:
    """Keys whose full scores no other full score dominates (>= in both, > in one)."""
    def dominates(b, a):
        return all(x >= y for x, y in zip(b, a, strict=True)) and b != a

    return {k for k, p in points.items() if not any(dominates(q, p) for j, q in points.items() if j != k)}


def replay(world: World, merges: list[tuple[float, float]], seed: int, error_rate: float,
           rng: random.Random) -> tuple[set[str], set[str], int, int]:
    """One trial through the product's `run_rungs`: (true-front keys, keys that reached the full
    rung, items scored with halving, items scored without). As the product does, a promoted
    candidate scores only the items its rung adds to the rung below (`rung_reuse.py`)."""
    cands = {str(i): world.merge(s, g, rng) for i, (s, g) in enumerate(merges)}
    full = {k: scores(*c, world.base) for k, c in cands.items()}
    plan = plan_rungs(RECORDS, {t: DOCS for t in world.w}, RUNGS, ETA, seed)
    base_point = scores([0.0] * RECORDS, world.base, world.base)
    cost = 0

    def evaluate_at(rung: int, keys: list[str]) -> dict[str, RungResult]:
        nonlocal cost
        records, samples = plan.records(rung), plan.general_samples(rung)
        below = (len(plan.records(rung - 1)) + sum(len(v) for v in plan.general_samples(rung - 1).values())
                 if rung else 0)
        cost += len(keys) * (len(records) + sum(len(v) for v in samples.values()) - below)
        base = {t: [world.base[t][j] for j in samples[t]] for t in samples}
        out = {}
        for k in keys:
            edit_all, docs_all = cands[k]
            edit = [edit_all[i] for i in records]
            docs = {t: [docs_all[t][j] for j in samples[t]] for t in samples}
            e, g = scores(edit, docs, base)
            scale = {t: max(statistics.fmean(base[t]), 1e-9) for t in base}
            general = {t: tuple(v / scale[t] for v in docs[t]) for t in docs}
            ses = [mean_stderr(v, DOCS) for v in general.values()]
            general_se = None if None in ses else sum(x * x for x in ses) ** 0.5 / len(ses)
            out[k] = RungResult(k, e, g, mean_stderr(edit, RECORDS), general_se,
                                RungItems(tuple(edit), RECORDS, general, {t: DOCS for t in general}))
        return out

    history = run_rungs(list(cands), evaluate_at, RUNGS, ETA, error_rate, front=[base_point])
    every = len(cands) * (RECORDS + TASKS * DOCS)
    return true_front(full), set(history[-1]) if len(history) == RUNGS else set(), cost, every
