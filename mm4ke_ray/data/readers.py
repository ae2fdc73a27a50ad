"""Load an edit set from any supported source into EditRecords, and write one back out.

`load_edit_records` reads the rows (sources.py), picks the format from the first record's keys
unless `fmt` is given (formats.py), and maps every row, naming the file, record index and field
of the first bad one, or dropping bad ones with `skip_invalid=True`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mm4ke_ray.atomic_write import write_text_atomic
from mm4ke_ray.data.fields import FieldError
from mm4ke_ray.data.formats import FORMATS, EditFormat
from mm4ke_ray.data.records import QA, EditRecord
from mm4ke_ray.data.sources import read_rows
from mm4ke_ray.errors import DataError, UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EditDataset:
    """Records loaded from `source` in `format`; `skipped` holds one message per dropped record."""

    records: list[EditRecord]
    format: str
    source: str
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[EditRecord]:
        return iter(self.records)

    def __getitem__(self, index: int) -> EditRecord:
        return self.records[index]


def load_edit_records(
    source: str | Path,
    *,
    limit: int | None = None,
    skip_invalid: bool = False,
    fmt: str | None = None,
    split: str = "train",
) -> EditDataset:
    """Read an edit set: a JSON/JSONL file, a directory or Parquet file, or a Hugging Face id.

    `fmt` forces a format by name (see `known_formats()`); otherwise it is detected from the keys
    of the first record (or the first recognizable one, when the first is broken). `limit` keeps the first N valid records. A bad record raises DataError
    (file, record index, field) unless `skip_invalid`, which drops it and lists it in `skipped`.
    `split` is used for dataset ids and directories ("org/name:split" overrides it).
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise UserError(f"limit must be a positive integer or None, got {limit!r}")
    chosen = FORMATS.get(fmt) if fmt else None  # an unknown name fails before any reading
    name, rows = read_rows(source, split)
    if not rows:
        raise UserError(
            f"{name}: the edit set is empty (no records); give a file with at least one edit"
        )
    chosen = chosen or _detect(name, rows)

    records: list[EditRecord] = []
    skipped: list[str] = []
    for index, raw in enumerate(rows):
        if limit is not None and len(records) >= limit:
            break
        try:
            if not isinstance(raw, Mapping):
                raise FieldError(None, f"must be a JSON object, got {type(raw).__name__}")
            record = chosen.read(raw)
            _check_lengths(record)
        except FieldError as e:
            if not skip_invalid:
                raise DataError(
                    name,
                    index,
                    e.field,
                    f"{e.problem} [format {chosen.name}; fix the record, "
                    "or drop invalid records with --skip-invalid (config: data.skip_invalid: true)]",
                ) from None
            skipped.append(str(DataError(name, index, e.field, e.problem)))
            continue
        records.append(replace(record, source=f"{name}:{index}"))

    if skipped:
        log.warning("%s: skipped %d invalid record(s), first: %s", name, len(skipped), skipped[0])
    if not records:
        raise UserError(
            f"{name}: no valid edit records: all {len(skipped)} were invalid, e.g. {skipped[0]}"
        )
    return EditDataset(records=records, format=chosen.name, source=name, skipped=skipped)


# Far above any edit prompt (KnowEdit's longest text: 678 characters, a WikiBio paragraph) and
# below what a model's context holds: a 200,000-word "prompt" would have allocated tens of GB
# when tokenized and batched. Refused at load, naming the record, instead.
MAX_TEXT_CHARS = 20_000


def _check_lengths(record: EditRecord) -> None:
    texts = [("prompt", record.prompt), ("target_new", record.target_new), ("ground_truth", record.ground_truth),
             ("subject", record.subject), *((f"rephrase_prompt[{i}]", t) for i, t in enumerate(record.rephrase_prompts))]
    for family, items in (("portability", record.portability), ("locality", record.locality)):
        for i, qa in enumerate(items):
            texts += [(f"{family}[{i}].prompt", qa.prompt), (f"{family}[{i}].answer", qa.answer)]
    for name, value in texts:
        if value is not None and len(value) > MAX_TEXT_CHARS:
            raise FieldError(name, f"is {len(value):,} characters long; an edit text may hold at most "
                                    f"{MAX_TEXT_CHARS:,} (shorten it)")


def _detect(name: str, rows: list[Any]) -> EditFormat:
    """The format of the first record; if that record is too broken to recognize (e.g. it lacks
    `target_new`), the first later one that is recognized, so the error then names record 0's field."""
    mappings = [r for r in rows if isinstance(r, Mapping)]
    if not mappings:
        raise DataError(name, 0, None, f"must be a JSON object, got {type(rows[0]).__name__}")
    found = next((f for f in map(FORMATS.detect, mappings) if f is not None), None)
    if found is None:
        raise UserError(
            f"{name}: cannot tell the edit-data format from the first record's keys "
            f"{sorted(mappings[0])}; name it with --format (config: data.format), one of: {', '.join(FORMATS.names())}\n"
            f"{FORMATS.describe()}"
        )
    return found


def _groups(items: Iterable[QA], single: bool) -> dict[str, list[dict]]:
    """QA items grouped by kind (first-appearance order), KnowEdit style."""
    out: dict[str, list[dict]] = {}
    for qa in items:
        answer: Any = [qa.answer] if not single else qa.answer
        out.setdefault(qa.kind, []).append({"prompt": qa.prompt, "ground_truth": answer})
    return out


def record_to_knowedit(record: EditRecord) -> dict[str, Any]:
    """One record in the KnowEdit ZsRE schema (locality answers as alias lists, like ZsRE)."""
    raw: dict[str, Any] = {}
    if record.subject is not None:
        raw["subject"] = record.subject
    raw["target_new"] = record.target_new
    raw["prompt"] = record.prompt
    if record.ground_truth is not None:
        raw["ground_truth"] = [record.ground_truth]
    if record.rephrase_prompts:  # ZsRE has one string; more than one are kept as a list
        rephrase = record.rephrase_prompts
        raw["rephrase_prompt"] = rephrase[0] if len(rephrase) == 1 else list(rephrase)
    raw["locality"] = _groups(record.locality, single=False)
    raw["portability"] = _groups(record.portability, single=True)
    return raw


def write_edit_records(records: Iterable[EditRecord], path: str | Path) -> Path:
    """Write records as a KnowEdit ZsRE-schema JSON array; `load_edit_records` reads it back equal.

    QA items come back grouped by kind (first-appearance order). The file is replaced atomically.
    """
    rows = [record_to_knowedit(r) for r in records]
    if not rows:
        raise UserError(f"{path}: no edit records to write")
    return write_text_atomic(path, json.dumps(rows, ensure_ascii=False, indent=1) + "\n")
