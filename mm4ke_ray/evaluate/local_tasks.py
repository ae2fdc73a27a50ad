"""Write offline lm-eval tasks: one YAML + one JSON Lines file per task, no Hub access needed.

lm-eval loads `dataset_path: json` with `data_files` through `datasets.load_dataset`, so a task
is just a YAML next to its data. `TaskManager(include_path=out_dir)` then finds it by name.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path

import yaml

from mm4ke_ray.errors import DataError, UserError

DEFAULT_DOC_TO_TEXT = "Question: {{question}}\nAnswer:"
_TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def _check_docs(name: str, docs: Sequence[dict]) -> list[dict]:
    """Validate docs and convert them to the JSONL rows the YAML refers to."""
    where = f"task '{name}' docs"
    if not docs:
        raise DataError(where, None, None, "no documents given; pass at least one")
    rows = []
    for i, doc in enumerate(docs):
        question, choices, answer = doc.get("question"), doc.get("choices"), doc.get("answer_index")
        if not isinstance(question, str) or not question.strip():
            raise DataError(where, i, "question", "must be a non-empty string")
        if (
            not isinstance(choices, (list, tuple))
            or len(choices) < 2
            or not all(isinstance(c, str) and c.strip() for c in choices)
        ):
            raise DataError(where, i, "choices", "must be a list of at least 2 non-empty strings")
        if (
            isinstance(answer, bool)
            or not isinstance(answer, int)
            or not 0 <= answer < len(choices)
        ):
            raise DataError(
                where,
                i,
                "answer_index",
                f"must be an int in [0, {len(choices) - 1}], got {answer!r}",
            )
        rows.append({"question": question, "choices": list(choices), "answer": answer})
    return rows


def _check_name(name) -> None:
    if not isinstance(name, str) or not _TASK_NAME.match(name):
        raise UserError(
            f"task name {name!r} is invalid: use letters, digits, '_', '-' or '.', starting with a letter or digit"
        )


def _write_docs(name: str, rows: list[dict], out_dir: str | Path) -> tuple[Path, dict]:
    """Write `<out_dir>/<name>.jsonl`; return the folder and the task config's dataset part.

    The `datasets` cache directory is named after the file's content hash (see
    `write_multiple_choice_task`), so a rewritten task is never served from a stale cache.
    """
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    data_file = out / f"{name}.jsonl"
    data_file.write_text(text, encoding="utf-8")
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    return out, {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {
            "data_files": {"test": str(data_file)},
            "cache_dir": str(out / ".datasets_cache" / digest),
        },
    }


def write_multiple_choice_task(
    name: str,
    docs: Sequence[dict],
    out_dir: str | Path,
    *,
    doc_to_text: str = DEFAULT_DOC_TO_TEXT,
    num_fewshot: int = 0,
    metrics: Sequence[str] = ("acc",),
) -> str:
    """Write `<out_dir>/<name>.yaml` + `<name>.jsonl`, an lm-eval multiple-choice task; return `name`.

    Each doc is `{"question": str, "choices": [str, ...], "answer_index": int}`. The prompt is
    `doc_to_text` (a Jinja template over `question`), each choice is scored as the continuation
    after a space, and the metrics are `metrics` (default `acc`: the choice with the highest
    log-likelihood is right; `acc_norm` normalises by the choice's length), the first the main one.
    `num_fewshot > 0` draws that many other docs of the same file as examples (seeded by the
    evaluator). Rewriting a task under the same name is safe: the `datasets` cache directory is
    named after the file's content hash, so a changed file is never served from a stale cache,
    and the cache stays beside the task instead of in the user's home.
    """
    _check_name(name)
    if isinstance(num_fewshot, bool) or not isinstance(num_fewshot, int) or num_fewshot < 0:
        raise UserError(f"num_fewshot must be an int >= 0, got {num_fewshot!r}")
    if not metrics or any(m not in ("acc", "acc_norm") for m in metrics):
        raise UserError(f"task '{name}': metrics must be a non-empty list of 'acc'/'acc_norm', got {metrics!r}")
    rows = _check_docs(name, docs)
    if num_fewshot >= len(rows):
        raise UserError(
            f"task '{name}': num_fewshot={num_fewshot} needs at least {num_fewshot + 1} docs, got {len(rows)}"
        )
    out, config = _write_docs(name, rows, out_dir)
    config.update({
        "output_type": "multiple_choice",
        "test_split": "test",
        "doc_to_text": doc_to_text,
        # Field names, not templates: lm-eval reads them from the doc as they are.
        "doc_to_choice": "choices",
        "doc_to_target": "answer",
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in metrics],
        "metadata": {"version": 1.0},
    })
    if num_fewshot:
        config.update(fewshot_split="test", num_fewshot=num_fewshot)
    (out / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return name


def write_generation_task(
    name: str,
    docs: Sequence[dict],
    out_dir: str | Path,
    *,
    doc_to_text: str = DEFAULT_DOC_TO_TEXT,
    max_gen_toks: int = 16,
) -> str:
    """Write `<out_dir>/<name>.yaml` + `<name>.jsonl`, an lm-eval generated-answer task; return `name`.

    Each doc is `{"question": str, "answer": str}`. The model generates greedily after
    `doc_to_text` until a newline or `max_gen_toks` tokens; the metric is lm-eval's `exact_match`
    (case and punctuation kept, surrounding spaces stripped), whose floor is 0 (no choices to
    guess among), as for CoQA, DROP or SQuAD.
    """
    _check_name(name)
    if isinstance(max_gen_toks, bool) or not isinstance(max_gen_toks, int) or max_gen_toks < 1:
        raise UserError(f"max_gen_toks must be an int >= 1, got {max_gen_toks!r}")
    where = f"task '{name}'"
    if not isinstance(docs, Sequence) or not docs:
        raise DataError(where, None, None, "needs a non-empty list of docs")
    rows = []
    for i, doc in enumerate(docs):
        for field in ("question", "answer"):
            value = doc.get(field) if isinstance(doc, dict) else None
            if not isinstance(value, str) or not value.strip():
                raise DataError(where, i, field, "must be a non-empty string")
        rows.append({"question": doc["question"], "answer": doc["answer"]})
    out, config = _write_docs(name, rows, out_dir)
    config.update({
        "output_type": "generate_until",
        "test_split": "test",
        "doc_to_text": doc_to_text,
        "doc_to_target": "{{answer}}",
        "target_delimiter": " ",
        "generation_kwargs": {"until": ["\n"], "do_sample": False, "max_gen_toks": max_gen_toks},
        "filter_list": [
            {"name": "strip", "filter": [{"function": "remove_whitespace"}, {"function": "take_first"}]}
        ],
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    })
    (out / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return name
