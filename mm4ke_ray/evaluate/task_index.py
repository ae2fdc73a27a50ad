"""Which lm-eval tasks exist and how they load: the task index (built-in + include paths).

Offline by default (`use_offline_defaults`). Local-only indexes answer in milliseconds; the
built-in index (~8 s) is built once per process and include-path fingerprint.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mm4ke_ray.errors import UserError

# Full task indexes (built-in + include_path) take ~8 s to build; keyed by the include_path and
# a fingerprint of its files so an edited or added YAML is seen.
_FULL_MANAGERS: dict[tuple, Any] = {}


def use_offline_defaults() -> None:
    """Default HF to offline unless the user set either variable (then their choice stands)."""
    if "HF_HUB_OFFLINE" in os.environ or "HF_DATASETS_OFFLINE" in os.environ:
        return
    os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    # huggingface_hub and datasets read these once at import; if they are already imported,
    # the new value must reach their module constants too.
    if "huggingface_hub.constants" in sys.modules:
        sys.modules["huggingface_hub.constants"].HF_HUB_OFFLINE = True
    if "datasets.config" in sys.modules:
        cfg = sys.modules["datasets.config"]
        cfg.HF_HUB_OFFLINE = cfg.HF_DATASETS_OFFLINE = True


def _include_paths(include_path) -> list[Path]:
    """The include folders, as a list: one path, several (local real tasks beside the user's
    folder; later ones win on a name both define), or none."""
    if include_path is None:
        return []
    out = []
    for one in [include_path] if isinstance(include_path, str | Path) else include_path:
        path = Path(one)
        if not path.exists():
            raise UserError(
                f"include_path {str(path)!r} does not exist: give a folder of lm-eval task YAMLs"
            )
        out.append(path.resolve())
    return out


def _fingerprint(paths: list[Path]) -> tuple:
    files = []
    for root in paths:
        candidates = [root] if root.is_file() else sorted(root.rglob("*.y*ml"))
        for f in candidates:
            st = f.stat()
            files.append((str(f), st.st_mtime_ns, st.st_size))
    return tuple(files)


def _full_manager(paths: list[Path]):
    from lm_eval.tasks import TaskManager

    key = _fingerprint(paths)
    if key not in _FULL_MANAGERS:
        _FULL_MANAGERS[key] = TaskManager(include_path=[str(p) for p in paths] or None)
    return _FULL_MANAGERS[key]


def task_manager(tasks: Sequence[str], include_path: str | Path | Sequence[str | Path] | None, *, full: bool = False):
    """The TaskManager that knows every name in `tasks`; UserError with suggestions otherwise.

    Local-only indexes are built first (milliseconds); the built-in index (~8 s, cached per
    process) only when a name is not local or `full` is asked for.
    """
    use_offline_defaults()
    from lm_eval.tasks import TaskManager

    paths = _include_paths(include_path)
    if paths and not full:
        local = TaskManager(include_path=[str(p) for p in paths], include_defaults=False)
        if all(t in local.task_index for t in tasks):
            return local
    manager = _full_manager(paths)
    unknown = [t for t in tasks if t not in manager.task_index]
    if unknown:
        lines = []
        for name in unknown:
            close = difflib.get_close_matches(name, manager.all_tasks, n=5, cutoff=0.6)
            hint = f"did you mean: {', '.join(close)}?" if close else "no similar task name"
            lines.append(f"  - {name!r}: {hint}")
        where = f" (built-in tasks + {', '.join(map(str, paths))})" if paths else " (built-in tasks; no include_path)"
        raise UserError(
            f"unknown lm-eval task name(s){where}:\n"
            + "\n".join(lines)
            + "\nFix the name in the eval config, or add a task YAML to the include_path."
        )
    return manager


def validate_tasks(tasks: Sequence[str], include_path: str | Path | Sequence[str | Path] | None = None) -> None:
    """Check task names against lm-eval's index (built-in + include_path) without loading data.

    Raises UserError listing each unknown name with close matches ("did you mean"). Cheap when
    every name is in include_path; otherwise builds lm-eval's built-in index once per process.
    """
    tasks = list(tasks)
    if not tasks:
        return
    if len(set(tasks)) != len(tasks):
        dupes = sorted({t for t in tasks if tasks.count(t) > 1})
        raise UserError(f"general tasks list names {dupes} more than once; list each task once")
    task_manager(tasks, include_path)


def load_each(manager, tasks: Sequence[str]) -> list[dict]:
    """`manager.load` per name; data problems become a UserError naming the task and the fix."""
    loaded = []
    for name in tasks:
        try:
            loaded.append(manager.load([name]))
        except KeyError:
            raise
        except Exception as e:  # datasets/hub errors vary by cause; the user needs the task name
            raise UserError(
                f"lm-eval task {name!r} could not be loaded ({type(e).__name__}: {e}). Offline "
                "(HF_HUB_OFFLINE=1), a built-in task needs its dataset in the Hugging Face cache: "
                "use a local task YAML, or set HF_HUB_OFFLINE=0 to allow downloads."
            ) from e
    return loaded


