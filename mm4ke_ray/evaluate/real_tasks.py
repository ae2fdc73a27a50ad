"""lm-eval's own general tasks (`sst2`, `logiqa`, `boolq`, `rte`, `wikitext`) over local files.

Each task is built as lm-eval builds the hub task of the same name: the written YAML `include`s
lm-eval's own task YAML (its prompt, choices, target, metrics and `!function`s, resolved from
the installed package) and only swaps the dataset for a JSON Lines file converted from the local
file, with the hub dataset's field names. The converted data and the YAML go to a cache folder
(never the repo), one per task, named after the source file's content, the task's budget and
the lm-eval version, so an edited file is never served from a stale conversion.

Sources (the files in ../shared/data/general; see its SOURCES.md):
- `sst2`: GLUE SST-2 TSV `sentence<TAB>label` (0/1), a header line.
- `logiqa`: LogiQA 1.0 `Test.txt`: blocks of an answer letter, context, question, 4 options `A.`-`D.`.
- `boolq`: BoolQ JSONL `{question, passage, answer: bool}`.
- `rte`: GLUE RTE TSV `index, sentence1, sentence2, label` (entailment / not_entailment).
- `wikitext`: WikiText-2 `test.txt` (one article per document, split at ` = Title = ` headings,
  as EleutherAI/wikitext_document_level's `page`). The pytorch/examples copy is WikiText's
  tokenised version (`<unk>` in place of rare words), not the raw one lm-eval's hub task reads.

Budgets: `limit` keeps the first N documents; `max_words` (wikitext) keeps the first N words of
the file (WikiText's own whitespace tokens, what lm-eval's `word_perplexity` counts), the last
article cut at the budget.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from mm4ke_ray.cache import default_cache_root
from mm4ke_ray.config import SweepConfig
from mm4ke_ray.digest import sha256_file
from mm4ke_ray.errors import DataError, UserError

BUILDER_VERSION = 1  # bump when a conversion changes (it is part of every cache key)


@dataclass(frozen=True)
class LocalTaskSpec:
    """One real task read from a local file: its lm-eval name, the file and its budget."""

    name: str
    path: str
    limit: int | None = None
    max_words: int | None = None


def local_task_specs(config: SweepConfig) -> tuple[LocalTaskSpec, ...]:
    """`evaluation.local_tasks` as specs, in name order."""
    return tuple(LocalTaskSpec(name, t.path, t.limit, t.max_words)
                 for name, t in sorted(config.evaluation.local_tasks.items()))


def task_cache_root() -> Path:
    """The project's cache root ($MM4KE_CACHE, else ~/.cache/mm4ke-ray), as the demo's assets."""
    return default_cache_root()


def _lm_eval_yaml(relative: str) -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent / relative


def _rows_tsv(path: Path, header: tuple[str, ...]) -> list[tuple[int, dict]]:
    """(line number, row) of a TSV with `header`; quotes are text (SST-2 sentences hold them)."""
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        first = next(reader, None)
        if first is None or tuple(c.strip() for c in first) != header:
            raise DataError(str(path), None, None, f"line 1 must be the header {'<TAB>'.join(header)}, got {first!r}")
        rows = []
        for line, cells in enumerate(reader, start=2):
            if not any(c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                raise DataError(str(path), None, None, f"line {line}: {len(cells)} columns, expected {len(header)} "
                                f"({', '.join(header)})")
            rows.append((line, dict(zip(header, cells, strict=True))))
    return rows


def _sst2(path: Path) -> list[dict]:
    docs = []
    for line, row in _rows_tsv(path, ("sentence", "label")):
        if row["label"].strip() not in ("0", "1"):
            raise DataError(str(path), None, None, f"line {line}: label must be 0 or 1, got {row['label']!r}")
        docs.append({"sentence": row["sentence"].strip(), "label": int(row["label"]), "idx": len(docs)})
    return docs


_RTE_LABELS = {"entailment": 0, "not_entailment": 1}  # GLUE's class indices


def _rte(path: Path) -> list[dict]:
    docs = []
    for line, row in _rows_tsv(path, ("index", "sentence1", "sentence2", "label")):
        label = _RTE_LABELS.get(row["label"].strip())
        if label is None:
            raise DataError(str(path), None, None, f"line {line}: label must be entailment or not_entailment, "
                            f"got {row['label']!r}")
        docs.append({"sentence1": row["sentence1"], "sentence2": row["sentence2"], "label": label, "idx": len(docs)})
    return docs


def _boolq(path: Path) -> list[dict]:
    docs = []
    with path.open(encoding="utf-8") as fh:
        for line, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                rec = json.loads(text)
            except ValueError as exc:
                raise DataError(str(path), None, None, f"line {line}: not valid JSON ({exc})") from None
            for key, kind in (("question", str), ("passage", str), ("answer", bool)):
                if not isinstance(rec.get(key) if isinstance(rec, dict) else None, kind):
                    raise DataError(str(path), None, None, f"line {line}: field '{key}' must be a {kind.__name__}")
            docs.append({"question": rec["question"], "passage": rec["passage"], "label": int(rec["answer"]),
                         "idx": len(docs)})
    return docs


def _normalize_logiqa(text: str) -> str:
    return text.replace(".", ". ").strip()  # the file runs sentences together ("park.These")


def _logiqa(path: Path) -> list[dict]:
    """LogiQA 1.0's text format → EleutherAI/logiqa's fields, converted as its loading script does:
    blocks split at blank lines; label, context, question, then each option without its "A."
    (first two characters), text normalised with a space after every period."""
    text = path.read_text(encoding="utf-8")
    docs, pos = [], 0
    for block in text.strip().split("\n\n"):
        pos = text.find(block, pos)
        start = text.count("\n", 0, pos) + 1  # the block's first line, 1-based
        rows = block.strip("\n").split("\n")
        if len(rows) != 7:
            raise DataError(str(path), None, None, f"line {start}: a question block needs 7 lines (answer letter, "
                            f"context, question, options A-D), found {len(rows)}")
        label = rows[0].strip()
        if label not in ("a", "b", "c", "d"):
            raise DataError(str(path), None, None, f"line {start}: answer letter must be a-d, got {rows[0]!r}")
        # Options are taken in file order, each without its first two characters ("A."), as the
        # hub loader does: one block of the test file lists C before B, and it stays so there too.
        docs.append({"label": label, "context": _normalize_logiqa(rows[1]), "question": _normalize_logiqa(rows[2]),
                     "options": [_normalize_logiqa(option[2:]) for option in rows[3:]]})
    return docs


_HEADING = re.compile(r"^ = [^=].* = $")  # an article title; ` = = Section = = ` is not one


def _wikitext(path: Path, max_words: int | None = None) -> list[dict]:
    """Articles as `page` strings (their lines as in the file), at most `max_words` words in all."""
    pages: list[list[str]] = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        if _HEADING.match(line.rstrip("\n")) or not pages:
            pages.append([])
        pages[-1].append(line)
    docs, left = [], max_words
    for lines in pages:
        page = "".join(lines).strip("\n")
        if not page.strip():
            continue
        if left is not None:
            words = page.split()
            if len(words) >= left:  # the budget ends in this article: keep its first `left` words
                docs.append({"page": " " + " ".join(words[:left])})
                break
            left -= len(words)
        docs.append({"page": page})
    if not docs:
        raise DataError(str(path), None, None, "no article text found")
    return docs


# name -> (lm-eval's YAML of the hub task, relative to lm_eval/tasks; the converter)
BUILDERS: dict[str, tuple[str, Callable[..., list[dict]]]] = {
    "boolq": ("super_glue/boolq/default.yaml", _boolq),
    "logiqa": ("logiqa/logiqa.yaml", _logiqa),
    "rte": ("glue/rte/default.yaml", _rte),
    "sst2": ("glue/sst2/default.yaml", _sst2),
    "wikitext": ("wikitext/wikitext.yaml", _wikitext),
}


def check_spec(spec: LocalTaskSpec) -> Path:
    """The spec's file; UserError naming the config field for an unknown task, a missing file
    or a budget that does not apply."""
    if spec.name not in BUILDERS:
        raise UserError(f"evaluation.local_tasks: no local builder for task {spec.name!r}; "
                        f"known: {', '.join(sorted(BUILDERS))}")
    path = Path(spec.path).expanduser()
    if not path.is_file():
        raise UserError(f"evaluation.local_tasks.{spec.name}: file {str(path)!r} does not exist")
    if spec.max_words is not None and spec.name != "wikitext":
        raise UserError(f"evaluation.local_tasks.{spec.name}: max_words applies to wikitext only; use limit")
    return path


def read_documents(spec: LocalTaskSpec) -> list[dict]:
    """The task's documents in the hub dataset's fields, budget applied; DataError names the file
    and line of a bad record, UserError an unknown task or a missing file."""
    path = check_spec(spec)
    convert = BUILDERS[spec.name][1]
    docs = convert(path, spec.max_words) if spec.name == "wikitext" else convert(path)
    return docs[: spec.limit] if spec.limit else docs


def _cache_key(spec: LocalTaskSpec) -> str:
    import lm_eval

    digest = sha256_file(Path(spec.path).expanduser())
    blob = json.dumps([BUILDER_VERSION, spec.name, digest, spec.limit, spec.max_words,
                       getattr(lm_eval, "__version__", "?"), str(_lm_eval_yaml(""))])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _task_yaml(spec: LocalTaskSpec, data_file: Path, cache_dir: Path) -> dict:
    return {
        "include": str(_lm_eval_yaml(BUILDERS[spec.name][0])),
        "task": spec.name,
        "tag": [],  # the hub YAML's tags (glue, super-glue-lm-eval-v1) would name only this file's task
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {"test": str(data_file)}, "cache_dir": str(cache_dir)},
        "training_split": None,
        "validation_split": None,
        "test_split": "test",
        "metadata": {"source_file": str(Path(spec.path).expanduser().resolve()), "builder_version": BUILDER_VERSION},
    }


def build_local_task(spec: LocalTaskSpec, cache_root: str | Path) -> Path:
    """The folder holding `<name>.yaml` and `<name>.jsonl` for `spec`, written on first use.

    Written into a temporary folder and renamed into place, so evaluators building the same task
    at once (one per actor) never see half a task."""
    check_spec(spec)
    folder = Path(cache_root).expanduser() / "general-tasks" / f"{spec.name}-{_cache_key(spec)}"
    if (folder / f"{spec.name}.yaml").is_file():
        return folder
    docs = read_documents(spec)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=folder.parent))
    try:
        data_file = folder / f"{spec.name}.jsonl"
        (tmp / data_file.name).write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs),
                                          encoding="utf-8")
        config = _task_yaml(spec, data_file, folder / ".datasets_cache")
        (tmp / f"{spec.name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
        try:
            os.rename(tmp, folder)
        except OSError:  # another process won the race: its folder is the same task
            if not (folder / f"{spec.name}.yaml").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def build_local_tasks(specs: Mapping[str, LocalTaskSpec] | list[LocalTaskSpec], cache_root: str | Path) -> list[Path]:
    """`build_local_task` for each spec: the include paths that make lm-eval find them by name."""
    items = specs.values() if isinstance(specs, Mapping) else specs
    return [build_local_task(spec, cache_root) for spec in items]
