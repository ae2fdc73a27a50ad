"""The edit set as a stream of rounds: consecutive chunks, one round per field value, or one
round per file. A round is a list of `EditRecord`s; together the rounds hold every record once,
in stream order."""

from __future__ import annotations

from dataclasses import dataclass

from mm4ke_ray.data import EditRecord, load_edit_records
from mm4ke_ray.errors import UserError
from mm4ke_ray.stream_config import StreamConfig


@dataclass(frozen=True)
class Stream:
    """The rounds of a stream and where they came from (`sources`, one per round)."""

    rounds: tuple[tuple[EditRecord, ...], ...]
    sources: tuple[str, ...]

    @property
    def records(self) -> list[EditRecord]:
        """Every record in stream order (round 1's first)."""
        return [r for rnd in self.rounds for r in rnd]

    def round_of(self) -> list[int]:
        """For each record of `records`, its round (1-based)."""
        return [t for t, rnd in enumerate(self.rounds, 1) for _ in rnd]


def split_by_order(records: list[EditRecord], rounds: int) -> list[list[EditRecord]]:
    """`rounds` consecutive chunks whose sizes differ by at most one (the first ones larger)."""
    if rounds < 1:
        raise UserError(f"stream.rounds must be >= 1, got {rounds}")
    if rounds > len(records):
        raise UserError(f"stream.rounds is {rounds} but the edit set has only {len(records)} records: "
                        "lower stream.rounds or raise data.limit")
    size, extra = divmod(len(records), rounds)
    out, start = [], 0
    for t in range(rounds):
        end = start + size + (1 if t < extra else 0)
        out.append(records[start:end])
        start = end
    return out


def split_by_field(records: list[EditRecord], field: str) -> tuple[list[list[EditRecord]], list[str]]:
    """One round per distinct value of `field`, rounds in order of the value's first appearance,
    records in their order within a round. A record without the field is an error."""
    groups: dict[str, list[EditRecord]] = {}
    for r in records:
        value = getattr(r, field)
        if value is None or value == "":
            raise UserError(f"{r.source or 'a record'}: split by field {field!r}, but the record has no {field}")
        groups.setdefault(str(value), []).append(r)
    return list(groups.values()), [f"{field}={v}" for v in groups]


def load_stream(config: StreamConfig, edits: str, *, data_format: str | None = None, limit: int | None = None,
                skip_invalid: bool = False) -> Stream:
    """Read the edit set (or `config.files`) and split it as `config` says.

    `limit` keeps the first N records of the whole stream (for 'files': of the files in order).
    """
    if config.split == "files":
        rounds, sources = [], []
        for path in config.files:
            rounds.append(list(load_edit_records(path, skip_invalid=skip_invalid, fmt=data_format).records))
            sources.append(path)
        if limit is not None:
            rounds = _cut(rounds, limit)
            sources = sources[:len(rounds)]
    else:
        records = list(load_edit_records(edits, limit=limit, skip_invalid=skip_invalid, fmt=data_format).records)
        if config.split == "order":
            rounds = split_by_order(records, config.rounds)
            sources = [f"{edits}[{sum(map(len, rounds[:t]))}:{sum(map(len, rounds[:t + 1]))}]"
                       for t in range(len(rounds))]
        else:
            rounds, sources = split_by_field(records, config.field)
    empty = [i + 1 for i, rnd in enumerate(rounds) if not rnd]
    if empty:
        raise UserError(f"stream round(s) {empty} have no edit records ({[sources[i - 1] for i in empty]})")
    _check_counts(config, len(rounds))
    return Stream(tuple(tuple(r) for r in rounds), tuple(sources))


def _cut(rounds: list[list[EditRecord]], limit: int) -> list[list[EditRecord]]:
    out, left = [], limit
    for rnd in rounds:
        if left <= 0:
            break
        out.append(rnd[:left])
        left -= len(out[-1])
    return out


def _check_counts(config: StreamConfig, n: int) -> None:
    if config.rounds is not None and config.rounds != n:
        raise UserError(f"stream.rounds is {config.rounds} but split {config.split!r} gives {n} rounds: "
                        f"set stream.rounds to {n} or leave it out")
    for key, values in config.per_round.items():
        if len(values) != n:
            raise UserError(f"stream.per_round.{key} has {len(values)} values for {n} rounds: give one per round")
