"""The rungs of successive halving: how many items each scores, which are skipped, their subsets.

Rung r of R scores eta^-(R-1-r) of the edit records and of each lm-eval task's documents; the
last rung is the full evaluation. A lower rung drops a candidate of its trial only when the sign
test on the items where two candidates differ reaches the error rate (`evidence.py`), which
needs at least `evidence.min_sign_items(error_rate)` items (5 at 0.05). A rung with fewer items
could never drop anything within its trial, so its size is raised to that minimum (`min_items`),
and a lower rung is skipped (not evaluated at all) when even so it cannot give that evidence
(the edit set is smaller than the minimum) or when it would score the same items as the rung
above it. A task with fewer documents than the minimum (WikiText-2 cut to a few articles) has
all of them scored at every rung: its score there is exact, not an estimate (`fidelity`
compares exact general scores as they are), so it never keeps a rung from dropping on the edit
records' evidence. Pure Python.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


def check_plan_args(rungs: int, reduction_factor: float) -> None:
    if rungs < 1:
        raise ValueError(f"rungs must be >= 1, got {rungs}")
    if reduction_factor <= 1:
        raise ValueError(f"reduction_factor must be > 1, got {reduction_factor}")


def rung_fractions(rungs: int, reduction_factor: float) -> list[float]:
    """Fraction of the items each rung evaluates: eta^-(R-1-r) for r = 0..R-1; the last is 1."""
    check_plan_args(rungs, reduction_factor)
    return [reduction_factor ** -(rungs - 1 - r) for r in range(rungs)]


def rung_sizes(n_items: int, rungs: int, reduction_factor: float, min_items: int = 1) -> list[int]:
    """Items per rung out of `n_items`: ceil(n * fraction), at least `min_items` (and 1), at most
    n; the last rung all n.

    ceil, not round: a rung never evaluates fewer items than its fraction promises, and a small
    set (n=4, eta=3) still gives rung 0 at least one item.
    """
    if n_items < 0:
        raise ValueError(f"n_items must be >= 0, got {n_items}")
    if n_items == 0:
        return [0] * rungs
    floor = max(1, min_items)
    sizes = [min(n_items, max(floor, math.ceil(n_items * f - 1e-9))) for f in rung_fractions(rungs, reduction_factor)]
    sizes[-1] = n_items
    return sizes


def skipped_rungs(records: Sequence[int], docs: Sequence[Sequence[int]], min_items: int) -> tuple[int, ...]:
    """Lower rungs not worth evaluating, from each list's size per rung (`rung_sizes`): fewer
    than `min_items` records, so the sign test can never drop a candidate there; or the same items
    as the next rung in every list. (A task's documents are never too few: `rung_sizes` raises a
    sampled rung to `min_items`, and a task with fewer has all of them, exact, at every rung.)"""
    out = []
    for r in range(len(records) - 1):
        too_few = records[r] < min_items
        same = records[r] == records[r + 1] and all(d[r] == d[r + 1] for d in docs)
        if too_few or same:
            out.append(r)
    return tuple(out)


def halving_cost(n: int, rungs: int, reduction_factor: float, fractions: Sequence[float] | None = None,
                 reuse: bool = True) -> tuple[float, float]:
    """Evaluation cost of a trial's n candidates under halving, in full evaluations: (fewest,
    most). `fractions`: of the items each evaluated rung scores (default `rung_fractions`; the
    last 1). With `reuse` a promoted candidate scores only the items its next rung adds (what
    the sweep does), so nothing pruned costs n, as without halving; without it every rung is
    scored whole (1 + 1/eta + ... each). Fewest: each rung passes on only its minimum,
    ceil(n_r / eta), and at least the kept one."""
    fractions = list(fractions) if fractions is not None else rung_fractions(rungs, reduction_factor)
    alive, fewest, before = n, 0.0, 0.0
    for f in fractions:
        fewest += alive * (f - before if reuse else f)
        before = f
        alive = max(1, math.ceil(alive / reduction_factor))
    return fewest, n * (1.0 if reuse else sum(fractions))


def nested_subsets(n_items: int, rungs: int, reduction_factor: float, seed: int, key: str = "",
                   min_items: int = 1) -> list[list[int]]:
    """Per rung, the sorted indices (into 0..n_items-1) it evaluates; nested and seeded.

    One permutation of range(n_items) drawn from `random.Random(f"{seed}:{key}")` (a str seed
    is hashed with SHA-512: the same on every Python version and process, unlike `hash()`); rung
    r takes its first rung_sizes[r] entries. `key` names the item list ("edits", a task name) so
    two lists of equal length do not get the same permutation.
    """
    order = list(range(n_items))
    random.Random(f"{seed}:{key}").shuffle(order)
    return [sorted(order[:size]) for size in rung_sizes(n_items, rungs, reduction_factor, min_items)]


@dataclass(frozen=True)
class RungPlan:
    """The fixed items of every rung: edit-record indices and, per lm-eval task, document indices.

    Document indices count into the documents the full evaluation would see (after
    evaluation.general_limit), in lm-eval's order; `general_samples(r)` gives them in the form of
    lm-eval's `simple_evaluate(samples=...)`, which cannot be combined with `limit`. `skipped`:
    lower rungs that are not evaluated (`skipped_rungs`); `min_items`: the size lower rungs were
    raised to where their fraction gave fewer.
    """

    rungs: int
    reduction_factor: float
    seed: int
    edit_records: list[list[int]]
    general_docs: dict[str, list[list[int]]]
    min_items: int = 1
    skipped: tuple[int, ...] = field(default=())

    def general_samples(self, rung: int) -> dict[str, list[int]]:
        self._check_rung(rung)
        return {task: docs[rung] for task, docs in self.general_docs.items()}

    def records(self, rung: int) -> list[int]:
        self._check_rung(rung)
        return self.edit_records[rung]

    def is_full(self, rung: int) -> bool:
        """Only the last rung's results may enter the Pareto front, the best pick and export."""
        self._check_rung(rung)
        return rung == self.rungs - 1

    def whole_tasks(self, rung: int) -> set[str]:
        """The tasks whose every document rung `rung` scores (its score there is the full one)."""
        self._check_rung(rung)
        return {t for t, docs in self.general_docs.items() if len(docs[rung]) == len(docs[-1])}

    def exact_tasks(self) -> set[str]:
        """Tasks every rung scores in full (fewer documents than the minimum): exact at every rung.
        Rungs are nested, so those whole at rung 0."""
        return self.whole_tasks(0)

    def evaluated(self) -> list[int]:
        """The rungs a candidate may be scored at, in order (the last always)."""
        return [r for r in range(self.rungs) if r not in self.skipped]

    def summary(self) -> dict:
        """Sizes and skipped rungs, JSON-able: what a rung record must match (`rung_store.py`)."""
        return {"records": [len(r) for r in self.edit_records],
                "docs": {t: [len(d) for d in docs] for t, docs in self.general_docs.items()},
                "min_items": self.min_items, "skipped": list(self.skipped)}

    def describe(self) -> list[str]:
        """One line per lower rung: its records and documents, raised or skipped and why."""
        n = len(self.edit_records[-1])
        asked = rung_sizes(n, self.rungs, self.reduction_factor)
        out = []
        for r in range(self.rungs - 1):
            size = len(self.edit_records[r])
            docs = sum(len(d[r]) for d in self.general_docs.values())
            line = f"rung {r}: {size} of {n} records" + (f", {docs} documents" if self.general_docs else "")
            exact = sorted(self.whole_tasks(r))
            if exact:
                line += f" (every document of {', '.join(exact)}: exact there)"
            if size > asked[r]:
                line += (f" (raised from {asked[r]}: the sign test needs {self.min_items} differing items at "
                         "this error rate)")
            if r in self.skipped:
                line += f"; skipped: {self.skip_reason(r)}"
            out.append(line)
        return out

    def cap_warning(self) -> str | None:
        """More rungs than the items support are capped, not refused: the sweep runs the rungs
        that can drop a candidate and says so once, at its start (a skipped rung costs nothing)."""
        if not self.skipped:
            return None
        kept = len(self.evaluated())
        items = f"the {len(self.edit_records[-1])} edit records" + (" and the tasks' documents" if self.general_docs else "")
        return (f"evaluation.fidelity.rungs: {self.rungs} rungs at reduction_factor {self.reduction_factor:g} are more "
                f"than {items} support: rung(s) "
                f"{', '.join(map(str, self.skipped))} skipped ({self.skip_reason(self.skipped[0])}); halving runs "
                f"{kept} rung(s) (set evaluation.fidelity.rungs: {kept}, or give more records)")

    def skip_reason(self, rung: int) -> str:
        if len(self.edit_records[rung]) < self.min_items:
            return f"fewer than {self.min_items} records, so the sign test could never show a candidate worse there"
        return f"it would score the same items as rung {rung + 1}"

    def _check_rung(self, rung: int) -> None:
        if not 0 <= rung < self.rungs:
            raise ValueError(f"rung {rung} out of range: this plan has rungs 0..{self.rungs - 1}")


def plan_rungs(n_records: int, docs_per_task: Mapping[str, int], rungs: int, reduction_factor: float, seed: int,
               min_items: int = 1) -> RungPlan:
    """The rung subsets of a sweep: the edit records and each task's documents, seeded; lower
    rungs raised to `min_items` items per list and skipped where they cannot give evidence."""
    records = nested_subsets(n_records, rungs, reduction_factor, seed, key="edits", min_items=min_items)
    docs = {task: nested_subsets(n, rungs, reduction_factor, seed, key=f"general:{task}", min_items=min_items)
            for task, n in sorted(docs_per_task.items())}
    skipped = skipped_rungs([len(r) for r in records], [[len(d) for d in ds] for ds in docs.values()], min_items)
    return RungPlan(rungs=rungs, reduction_factor=reduction_factor, seed=seed, edit_records=records,
                    general_docs=docs, min_items=min_items, skipped=skipped)
