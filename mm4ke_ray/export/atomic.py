"""Write an output directory so that a kill at any moment leaves it absent or complete.

Everything is written into a hidden sibling (`.NAME.mm4ke-partial-PID`, same filesystem, so the
final `os.rename` is atomic); only a finished directory is renamed to `NAME`. Replacing an
earlier directory (`--force`) moves it aside to `.NAME.mm4ke-old-PID` first, so a kill between
the two renames leaves `NAME` absent, never half-written. Siblings left by a killed writer (its
process no longer alive) are removed by the next write to the same `NAME`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

_PARTIAL = ".mm4ke-partial-"
_OLD = ".mm4ke-old-"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def leftover_siblings(out: Path) -> list[Path]:
    """Staging and moved-aside siblings of `out` whose writer is no longer running."""
    found = []
    for mark in (_PARTIAL, _OLD):
        for p in out.parent.glob(f".{out.name}{mark}*"):
            pid = p.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not _alive(int(pid)):
                found.append(p)
    return sorted(found)


def clean_leftovers(out: Path) -> list[Path]:
    """Remove what a killed earlier write to `out` left next to it; returns what was removed."""
    removed = leftover_siblings(out)
    for p in removed:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return removed


def new_staging_dir(out: Path) -> Path:
    """A fresh, empty hidden sibling of `out` to write into (`out`'s parent is created)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}{_PARTIAL}{os.getpid()}"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir()
    return stage


def publish(stage: Path, out: Path) -> Path:
    """Rename the finished `stage` to `out`, replacing an existing `out` (moved aside first)."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}{_OLD}{os.getpid()}"
        if old.exists():
            shutil.rmtree(old)
        os.rename(out, old)
    os.rename(stage, out)
    _fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


def publish_into(stage: Path, out: Path, last: str | None = None) -> Path:
    """Move `stage`'s files into an existing non-empty `out` one rename at a time (`last`
    renamed after the rest), keeping the files of `out` that `stage` does not have."""
    files = sorted(p for p in stage.iterdir() if p.name != last)
    if last and (stage / last).exists():
        files.append(stage / last)
    for p in files:
        dest = out / p.name
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        os.replace(p, dest)
    shutil.rmtree(stage, ignore_errors=True)
    return out


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
