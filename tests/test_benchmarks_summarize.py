"""benchmarks/summarize.py: a real-model result sits under its benchmark's number, labelled "real"."""

from __future__ import annotations

from bench_modules import load_benchmark


def test_real_rows_follow_their_benchmark_with_its_number():
    s = load_benchmark("summarize")
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
