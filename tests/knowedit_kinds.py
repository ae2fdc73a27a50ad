"""Real KnowEdit WikiData files and, straight from their JSON (not through the readers), which
portability/locality kinds each record holds: the reference the per-kind mean tests check."""

from __future__ import annotations

import json

from conftest import KNOWEDIT

from mm4ke_ray.data import load_edit_records

RECENT = KNOWEDIT / "benchmark_wiki_recent_recent_train.json"
COUNTERFACT = KNOWEDIT / "wiki_counterfact_test_cf-generate-10.json"  # JSON Lines


def raw_kinds(raw: list[dict], group: str) -> dict[str, int]:
    """Per kind, how many raw records hold at least one item of it with an answer (from the JSON)."""

    def has_alias(value) -> bool:
        if isinstance(value, str):
            return bool(value.strip())
        return isinstance(value, list) and any(has_alias(v) for v in value)

    counts: dict[str, int] = {}
    for r in raw:
        for kind, items in (r.get(group) or {}).items():
            items = [items] if isinstance(items, dict) else items or []
            if any(has_alias(it.get("ground_truth")) for it in items):
                counts[kind] = counts.get(kind, 0) + 1
    return counts


def kind_fixture_records(path, n):
    """First `n` records of a KnowEdit file: raw JSON (independent of the readers) and EditRecords."""
    text = path.read_text()
    raw = json.loads(text) if text.lstrip().startswith("[") else [
        json.loads(line) for line in text.splitlines() if line.strip()
    ]
    return raw[:n], load_edit_records(str(path), limit=n).records
