"""benchmarks/disk_memo.py: what a killed long benchmark computed is read back, never recomputed,
and a run with other arguments does not read another's results."""

from __future__ import annotations

import json

import torch
from bench_modules import load_benchmark


def test_a_rerun_reads_back_values_and_tensors_and_skips_a_half_written_line(tmp_path):
    m = load_benchmark("disk_memo")
    calls = []

    def compute(x):
        calls.append(x)
        return {"score": x / 3, "seconds": 1.25}

    memo = m.DiskMemo(tmp_path, {"run": 1})
    first = [memo.get(("eval", i), lambda i=i: compute(i)) for i in range(3)]
    delta = {"w": torch.randn(4, 5), "b": torch.randn(5)}
    memo.tensors("rsft-a", lambda: delta)
    memo.tensors("rsft-b", lambda: None)
    with open(tmp_path / m.RESULTS, "a") as f:  # a kill while the next line was being written
        f.write('{"key": "abc", "val')
    again = m.DiskMemo(tmp_path, {"run": 1})
    assert [again.get(("eval", i), lambda i=i: compute(-1)) for i in range(3)] == first  # floats exact
    assert calls == [0, 1, 2] and again.read_back == 3
    back, read = again.tensors("rsft-a", lambda: {"w": torch.zeros(1)})
    assert read and all(torch.equal(back[k], delta[k]) for k in delta)
    assert again.tensors("rsft-b", lambda: {"w": torch.zeros(1)}) == (None, True)
    assert again.get(("eval", 3), lambda: compute(3)) == {"score": 1.0, "seconds": 1.25} and calls[-1] == 3


def test_another_run_key_or_fresh_starts_the_folder_over(tmp_path):
    m = load_benchmark("disk_memo")
    m.DiskMemo(tmp_path, {"trials": 6}).get("k", lambda: 1)
    assert m.DiskMemo(tmp_path, {"trials": 6}).get("k", lambda: 2) == 1
    assert m.DiskMemo(tmp_path, {"trials": 7}).get("k", lambda: 3) == 3
    assert json.loads((tmp_path / m.KEY_FILE).read_text()) == {"trials": 7}
    assert m.DiskMemo(tmp_path, {"trials": 7}, fresh=True).get("k", lambda: 4) == 4


def test_tensors_digest_sees_one_changed_bit():
    m = load_benchmark("disk_memo")
    a = {"w": torch.ones(3, 3)}
    b = {"w": torch.ones(3, 3)}
    b["w"][1, 1] = torch.nextafter(torch.tensor(1.0), torch.tensor(2.0))
    assert m.tensors_digest(a) == m.tensors_digest({"w": torch.ones(3, 3)}) != m.tensors_digest(b)
