"""Per-record rows → edit metrics, the same rules for the teacher-forced (`edit_metrics`) and the
generation-based (`generation`) evaluator: one row per record holding its items' scores, each
record's score of a metric, per-kind means, and the aggregate metrics of a list of rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, TypeVar

from mm4ke_ray.data.records import EditRecord

# The metrics scored item by item (fluency, teacher-forced only, is one number per record).
ITEM_METRICS = ("edit_succ", "generalization", "portability", "locality")
_Metrics = TypeVar("_Metrics", bound="RowMetrics")


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def record_score(items: Sequence[dict]) -> float | None:
    """One record's score of a metric: the mean over kinds of each kind's mean item score.

    `items` = [{"kind", "score"}, ...]; items without a kind form one group of their own (edit
    success and generalization have only those, so theirs is the plain mean). None when empty.
    """
    by_kind: dict[str, list[float]] = {}
    for item in items:
        by_kind.setdefault(item["kind"], []).append(item["score"])
    return _mean([sum(v) / len(v) for v in by_kind.values()])


def kind_means(rows: Sequence[dict], metrics: Sequence[str] = ("portability", "locality")) -> dict[str, float]:
    """Per-kind means of per-record rows (`row["items"][metric]` = [{"kind", "score"}, ...]).

    Per record the mean of its items of a kind, then the mean over the records with that kind;
    keys `metric.kind`, kinds in order of first appearance; items without a kind are left out.
    """
    out: dict[str, float] = {}
    for metric in metrics:
        per_kind: dict[str, list[float]] = {}
        for row in rows:
            by_kind: dict[str, list[float]] = {}
            for item in row["items"][metric]:
                if item["kind"]:
                    by_kind.setdefault(item["kind"], []).append(item["score"])
            for kind, scores in by_kind.items():
                per_kind.setdefault(kind, []).append(sum(scores) / len(scores))
        out.update({f"{metric}.{kind}": sum(v) / len(v) for kind, v in per_kind.items()})
    return out


def empty_row(index: int, record: EditRecord, metrics: Sequence[str], **settings) -> dict:
    """Record `index`'s row before scoring: the record, the evaluator's `settings`, no items yet
    and None for each of `metrics`."""
    return {
        "index": index,
        "source": record.source,
        "prompt": record.prompt,
        "target_new": record.target_new,
        **settings,
        "items": {m: [] for m in ITEM_METRICS},
        **{m: None for m in metrics},
    }


def score_rows(rows: Sequence[dict]) -> None:
    """Set each row's item metrics to its `record_score`, once all its items are in."""
    for row in rows:
        for metric in ITEM_METRICS:
            row[metric] = record_score(row["items"][metric])


class RowMetrics:
    """The aggregates of per-record rows, for a dataclass with a field per name in `NAMES` and
    `per_record` / `by_kind` fields."""

    NAMES: ClassVar[tuple[str, ...]]

    def as_dict(self) -> dict[str, float | None]:
        """The aggregate metrics only, keyed by their names."""
        return {name: getattr(self, name) for name in self.NAMES}

    def flat(self) -> dict[str, float | None]:
        """The aggregates and the per-kind means under flat names (e.g. portability.Reasoning)."""
        return {**self.as_dict(), **self.by_kind}

    @classmethod
    def from_rows(cls: type[_Metrics], rows: list[dict]) -> _Metrics:
        """The metrics of per-record rows (`per_record`): each metric's mean over the records that
        have it, and the per-kind means; rows of two subsets joined give the union's metrics."""
        totals = {m: _mean([row[m] for row in rows if row[m] is not None]) for m in cls.NAMES}
        return cls(**totals, per_record=rows, by_kind=kind_means(rows))
