"""Where raw edit records come from: a local JSON / JSON Lines file, a local directory or
Parquet/CSV file (through `datasets`), or a Hugging Face dataset id.

A source string that is an existing path is local. Otherwise it is taken as a Hugging Face
dataset when it looks like one:
  "org/name"                        the dataset's `split` (default "train")
  "org/name:test"                   an explicit split (wins over the `split` argument)
  "org/name/dir/file.json[:split]"  one file of the dataset repo, passed as `data_files`
  "hf:..."                          the same, forcing the Hub even if a local path matches
Anything else that does not exist (e.g. "data/edits.json", "./x") is a missing local file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from mm4ke_ray.errors import DataError, UserError

# Loaded through `datasets` builders; .json/.jsonl are read here to report line numbers.
_ARROW_SUFFIXES = {".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
_LOCAL_DATA_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".arrow")
# A hub dataset id, optionally with a file inside the repo and a split (preflight reads it too).
HUB_ID = re.compile(
    r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:/(?P<file>[^:]+))?(?::(?P<split>[^:/]+))?$"
)


def read_rows(source: str | Path, split: str = "train") -> tuple[str, list[Any]]:
    """(display name, raw rows) for a local path or a Hugging Face dataset id."""
    text = str(source)
    if not text.strip():
        raise UserError(
            "edit-data source is empty; give a JSON/JSONL file, a directory or a dataset id"
        )
    forced = text.startswith("hf:")
    if not forced:
        path = Path(text).expanduser()
        if path.is_dir():  # datasets infers the builder and splits from the files inside
            return text, load_with_datasets(str(path), None, split, text)
        if path.is_file():
            builder = _ARROW_SUFFIXES.get(path.suffix.lower())
            if builder:
                return text, load_with_datasets(builder, str(path), "train", text)
            return text, read_json_rows(path)
    hub = HUB_ID.match(text[3:] if forced else text)
    if hub and (forced or not _looks_local(text, hub)):
        return text, load_with_datasets(hub["repo"], hub["file"], hub["split"] or split, text)
    raise UserError(
        f"edit data {text!r} not found: no such file or directory ({Path(text).expanduser().absolute()}). "
        "Give a JSON/JSONL file, a directory, or a Hugging Face dataset id such as 'org/name' "
        "or 'hf:org/name/path/file.json'."
    )


def _looks_local(text: str, hub: re.Match) -> bool:
    """'data/edits.json' matches the org/name shape but is meant as a file."""
    if text.startswith((".", "/", "~")):
        return True
    return hub["file"] is None and hub["repo"].lower().endswith(_LOCAL_DATA_SUFFIXES)


def load_with_datasets(path: str, data_files: str | None, split: str, display: str) -> list[dict]:
    """Rows of `datasets.load_dataset(path, data_files=..., split=...)` as plain dicts."""
    try:
        import datasets
    except ImportError as e:  # a declared dependency, but say what to do if it is missing
        raise UserError(
            f"{display}: reading it needs the `datasets` package (pip install datasets)"
        ) from e
    try:
        dataset = datasets.load_dataset(path, data_files=data_files, split=split)
    except Exception as e:
        # datasets raises many unrelated types here (ConnectionError, FileNotFoundError, ValueError, ...)
        raise UserError(
            f"{display}: datasets.load_dataset({path!r}, data_files={data_files!r}, split={split!r}) "
            f"failed: {type(e).__name__}: {e}. If this is meant as a local file, check the path; "
            "Hub datasets need network access (HF_DATASETS_OFFLINE unset) or a warm cache."
        ) from e
    return dataset.to_list()


def read_json_rows(path: Path) -> list[Any]:
    """Records of a JSON array file, a single JSON object, or JSON Lines (whatever the suffix)."""
    try:
        content = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(
            str(path), None, None, f"is not UTF-8 text (byte {e.start}); save it as UTF-8 JSON"
        ) from None
    stripped = content.lstrip()
    if not stripped:
        return []
    if stripped[0] == "[" and path.suffix.lower() != ".jsonl":
        try:
            data = json.loads(content)
        except json.JSONDecodeError as e:
            raise DataError(
                str(path),
                None,
                None,
                f"line {e.lineno}, column {e.colno}: invalid JSON ({e.msg}); "
                "the file starts with '[' so it is read as one JSON array",
            ) from None
        return data if isinstance(data, list) else [data]
    if stripped[0] == "{" and path.suffix.lower() != ".jsonl":
        try:  # one (possibly pretty-printed) object; JSON Lines fails here at its 2nd line, cheaply
            data = json.loads(content)
            return [data]
        except json.JSONDecodeError:
            pass
    return _json_lines(path, content)


def _json_lines(path: Path, content: str) -> list[Any]:
    rows = []
    # split on "\n" only: str.splitlines() also splits on U+2028, which JSON strings may hold raw
    for lineno, line in enumerate(content.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise DataError(
                str(path),
                None,
                None,
                f"line {lineno}: invalid JSON ({e.msg}; column {e.colno}); the file is read "
                "as JSON Lines (one record per line). A cut-off last line usually means an "
                "interrupted download or write: fix or delete that line",
            ) from None
    return rows
