"""Print the goal table of every result in benchmarks/results/ as Markdown (for the README).

    python benchmarks/summarize.py [RESULTS_DIR]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ORDER = ["merge", "rsft", "eval", "sweep", "search_quality", "memory", "generation", "mergekit", "startup", "soak",
         "multifidelity", "warm_start", "real", "general_eval", "table_build", "table_search", "plan"]


def _fmt(value: float) -> str:
    if value == float("inf"):
        return "inf"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 0.01:
        return f"{value:.3g}"
    return f"{value:.2g}"


def _where(doc: dict) -> str:
    m = doc.get("machine") or {}
    gpu = f"{m['gpu']}, " if m.get("gpu") else ""
    return f"{gpu}{m.get('cpu_count', '?')} CPU, {m.get('torch_threads', '?')} thread(s), {str(m.get('date', '?'))[:10]}"


def rows(docs: dict) -> list[tuple[int, str, str]]:
    """(number, file stem, label) of every row group: the known benchmarks in ORDER, each followed
    by its real-model result `<name>_real` (same number, labelled "<name> real", e.g. bench_rsft.py
    --model smollm2) and its other variants `<name>_<variant>` (e.g. multifidelity_edits100), then
    any other file (e.g. gpu_check)."""
    out = []
    for number, name in enumerate(ORDER, start=1):
        out.append((number, name, name))
        if f"{name}_real" in docs:
            out.append((number, f"{name}_real", f"{name} real"))
        for variant in sorted(d for d in docs if d.startswith(f"{name}_") and d != f"{name}_real" and d not in ORDER):
            out.append((number, variant, f"{name} {variant[len(name) + 1:].replace('_', ' ')}"))
    taken = {name for _, name, _ in out}
    number = len(ORDER)
    for name in docs:
        if name not in taken:
            number += 1
            out.append((number, name, name))
    return out


def table(results: Path) -> str:
    """One Markdown row per goal of every `<name>.json` in `results`."""
    lines = ["| # | benchmark | goal | target | measured | met | machine, date |", "|---|---|---|---|---|---|---|"]
    docs = {p.stem: json.loads(p.read_text()) for p in sorted(results.glob("*.json"))}
    for number, name, label in rows(docs):
        doc = docs.get(name)
        if doc is None:
            lines.append(f"| {number} | {label} | (no result yet) | | | | |")
            continue
        if not doc.get("goals"):
            lines.append(f"| {number} | {label} | (measurements only, no goal: see benchmarks/README.md) | | | | "
                         f"{_where(doc)} |")
            continue
        where = _where(doc)
        for goal in doc["goals"]:
            sign = ">=" if goal["higher_is_better"] else "<="
            met = "**met**" if goal["met"] else "**not met**"
            lines.append(f"| {number} | {label} | {goal['goal']} | {sign} {_fmt(goal['target'])} | "
                         f"{_fmt(goal['measured'])} | {met} | {where} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "results"))
