"""The one way this package writes a file a reader or a restart may read: whole or not at all."""

from __future__ import annotations

import stat

import pytest

from mm4ke_ray.atomic_write import write_bytes_atomic, write_text_atomic


def test_writes_the_file_readable_by_others_and_leaves_no_temporary(tmp_path):
    path = write_text_atomic(tmp_path / "sub" / "state.json", '{"a": 1}\n')
    assert path.read_text() == '{"a": 1}\n'
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.json"]
    write_text_atomic(path, "second")  # replaced, not appended
    assert path.read_text() == "second"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = write_bytes_atomic(tmp_path / "record.bin", b"old")
    with pytest.raises(TypeError):  # fails inside the write, after the temporary was made
        write_bytes_atomic(path, "not bytes")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["record.bin"]
