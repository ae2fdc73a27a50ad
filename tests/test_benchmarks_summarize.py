"""benchmarks/summarize.py: a real-model result sits under its benchmark's number, labelled "real"."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SUMMARIZE = Path(__file__).resolve().parents[1] / "benchmarks" / "summarize.py"


def _summarize():
    spec = importlib.util.spec_from_file_location("bench_summarize", SUMMARIZE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_real_rows_follow_their_benchmark_with_its_number():
    s = _summarize()
    docs = {name: {} for name in ("rsft", "rsft_real", "generation_real", "gpu_check")}
    rows = s.rows(docs)
    numbers = {name: number for number, name, _ in rows}
    labels = {name: label for _, name, label in rows}
    assert numbers["rsft_real"] == numbers["rsft"] == s.ORDER.index("rsft") + 1
    assert numbers["generation_real"] == s.ORDER.index("generation") + 1
    assert labels["rsft_real"] == "rsft real" and labels["generation_real"] == "generation real"
    assert [name for _, name, _ in rows].index("rsft_real") == [name for _, name, _ in rows].index("rsft") + 1
    assert numbers["general_eval"] == s.ORDER.index("general_eval") + 1  # the known benchmarks keep their numbers
    assert numbers["gpu_check"] == len(s.ORDER) + 1
