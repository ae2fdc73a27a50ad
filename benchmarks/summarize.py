"""Print the goal table of every result in benchmarks/results/ as Markdown (for the README).

    python benchmarks/summarize.py [RESULTS_DIR]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ORDER = ["merge", "rsft", "eval", "sweep", "search_quality", "memory", "generation", "mergekit", "startup", "soak"]


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


def table(results: Path) -> str:
    """One Markdown row per goal of every `<name>.json` in `results`."""
    lines = ["| # | benchmark | goal | target | measured | met | machine, date |", "|---|---|---|---|---|---|---|"]
    docs = {p.stem: json.loads(p.read_text()) for p in results.glob("*.json") if p.stem in ORDER}
    for number, name in enumerate(ORDER, start=1):
        doc = docs.get(name)
        if doc is None:
            lines.append(f"| {number} | {name} | (no result yet) | | | | |")
            continue
        m = doc["machine"]
        where = f"{m['cpu_count']} CPU, {m['torch_threads']} thread(s), {m['date'][:10]}"
        for goal in doc["goals"]:
            sign = ">=" if goal["higher_is_better"] else "<="
            met = "**met**" if goal["met"] else "**not met**"
            lines.append(f"| {number} | {name} | {goal['goal']} | {sign} {_fmt(goal['target'])} | "
                         f"{_fmt(goal['measured'])} | {met} | {where} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "results"))
