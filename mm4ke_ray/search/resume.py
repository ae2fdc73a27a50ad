"""What a killed sweep needs to go on: its folder, the manifest in it, and the restored Tuner.

A sweep's folder is `<storage_path>/<name>` (a suffix is added when that folder already holds
or is being claimed by another sweep; `.mm4ke-claim` marks it as taken). It holds Tune's experiment state (trials, searcher, checkpoints = deltas +
results), the Optuna study as a journal file (every told point, extra candidates included), the
MLflow spool if the server was away, and `mm4ke-sweep.json`: the resolved config and the MLflow
parent run id, so `mm4ke-ray sweep --resume FOLDER` continues the same sweep into the same run.
"""

from __future__ import annotations

import json
import os
import pickletools
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from mm4ke_ray.atomic_write import write_bytes_atomic, write_text_atomic
from mm4ke_ray.errors import UserError
from mm4ke_ray.storage import filesystem, is_uri
from mm4ke_ray.tracking.store_check import absolute_uri

MANIFEST = "mm4ke-sweep.json"
CLAIM = ".mm4ke-claim"  # created first, exclusively: the folder belongs to one sweep
FORMAT = 1
STUDY_FILE = "optuna-study.journal"  # the Optuna study's journal file in the folder


@dataclass
class Manifest:
    """The sweep's identity, written before its first trial starts."""

    config: dict  # SweepConfig.model_dump(), with 'demo' already resolved to local paths
    source: str  # the config file it came from
    parent_run_id: str  # MLflow parent run
    experiment_dir: str  # the sweep's folder (Tune experiment)
    created: float
    format: int = FORMAT


def _exists(path: str) -> bool:
    import pyarrow.fs

    fs, p = filesystem(path)
    return fs.get_file_info(p).type != pyarrow.fs.FileType.NotFound


def join(folder: str, name: str) -> str:
    return f"{folder.rstrip('/')}/{name}" if is_uri(folder) else str(Path(folder) / name)


def _holds_sweep(folder: str) -> bool:
    return _exists(join(folder, MANIFEST)) or _exists(join(folder, "tuner.pkl")) or _exists(join(folder, CLAIM))


def _claim(folder: str) -> bool:
    """Mark `folder` as this sweep's; False when another sweep got it first."""
    text = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()})
    if is_uri(folder):
        # Object stores offer no create-if-absent here: checked just before, so two sweeps
        # would have to start within the same second to share a cloud folder.
        fs, p = filesystem(join(folder, CLAIM))
        fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(p) as out:
            out.write(text.encode())
        return True
    Path(folder).mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(join(folder, CLAIM), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return True


def claim_experiment_folder(storage: str, name: str) -> str:
    """A new sweep's folder: `<storage>/<name>`, or `name-2`, `name-3`, ... when taken; claimed.

    Two sweeps in one Tune folder would mix their trials and a later --resume would pick up
    both; a fresh sweep never writes into another's folder. The claim (a file created with
    O_EXCL, atomic on local disks and NFS) also holds when two sweeps of the same name start at
    the same moment: only one of them can create it, the other moves on to the next name.
    """
    n = 1
    while True:
        folder = join(storage, name if n == 1 else f"{name}-{n}")
        if not _holds_sweep(folder) and _claim(folder):
            return folder
        n += 1


def write_manifest(manifest: Manifest) -> str:
    """Write `mm4ke-sweep.json` into the sweep's folder (atomically when local); return its path."""
    path = join(manifest.experiment_dir, MANIFEST)
    text = json.dumps(asdict(manifest), indent=2)
    if is_uri(path):
        fs, p = filesystem(path)
        fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(p) as out:
            out.write(text.encode())
    else:
        write_text_atomic(path, text)
    return path


def read_manifest(folder: str) -> Manifest:
    """The manifest of the sweep in `folder`; UserError saying what to give otherwise."""
    folder = folder.rstrip("/") if is_uri(folder) else str(Path(folder).expanduser().resolve())
    if not is_uri(folder) and Path(folder).name == MANIFEST:
        folder = str(Path(folder).parent)
    path = join(folder, MANIFEST)
    if not _exists(path):
        raise UserError(
            f"--resume {folder}: no {MANIFEST} there, so it is not a sweep's folder; give the folder the sweep "
            "printed at its start (<storage_path>/<sweep name>)"
        )
    fs, p = filesystem(path)
    with fs.open_input_stream(p) as f:
        try:
            data = json.loads(f.readall().decode())
        except ValueError as exc:
            raise UserError(f"--resume {folder}: {MANIFEST} is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"--resume {folder}: {MANIFEST} has an unknown format; it was written by another version")
    shapes = {"config": dict, "source": str, "parent_run_id": str, "experiment_dir": str, "created": int | float}
    if bad := [k for k, kind in shapes.items() if not isinstance(data.get(k), kind)] + sorted(set(data) - {*shapes, "format"}):
        raise UserError(f"--resume {folder}: {MANIFEST} is damaged (field(s) {', '.join(bad)} missing, of the wrong "
                        "type or unknown); restore it from a copy, or start the sweep again without --resume")
    if not _exists(join(folder, "tuner.pkl")):
        raise UserError(
            f"--resume {folder}: the sweep stopped before its first trial was scheduled (no Tune state); "
            "start it again without --resume"
        )
    if not is_uri(folder) and (problem := _journal_problem(Path(folder) / STUDY_FILE)):
        raise UserError(f"--resume {folder}: {STUDY_FILE} (the Optuna study) is damaged ({problem}); restore the "
                        "folder from a copy, or start the sweep again without --resume")
    if problem := _pickle_problem(join(folder, "tuner.pkl")):
        raise UserError(f"--resume {folder}: tuner.pkl (Tune's state) is damaged ({problem}), so the sweep cannot be "
                        "continued; restore the folder from a copy, or start the sweep again without --resume")
    # The folder may have been moved or copied since: every path of the sweep is re-derived from
    # where it is now (Tune's own state follows `Tuner.restore(folder)`; the study: restore_tuner).
    data["experiment_dir"] = folder
    if isinstance(data.get("config"), dict):
        config = data["config"]
        tracking = config.get("tracking")
        if isinstance(tracking, dict) and isinstance(tracking.get("uri"), str) and not is_uri(folder):
            # Older manifests keep the relative `sqlite:///runs/...` the sweep started with: the
            # store is where it was, relative to the directory the sweep started in, not to ours.
            tracking["uri"] = absolute_uri(tracking["uri"], _start_dir(folder, config.get("storage_path")))
        config["storage_path"] = folder.rsplit("/", 1)[0] if is_uri(folder) else str(Path(folder).parent)
    return Manifest(**data)


def _journal_problem(path: Path) -> str | None:
    """Why the Optuna journal at `path` cannot be read back (None when absent or whole): each
    line one JSON operation (`op_code`); only the last may be cut by a crash mid-write."""
    if not path.is_file():
        return None
    lines = path.read_bytes().splitlines()
    for number, line in enumerate(lines, start=1):
        try:
            op = json.loads(line)
        except ValueError:
            if number == len(lines):
                continue
            return f"line {number} is not JSON"
        if not isinstance(op, dict) or "op_code" not in op:
            return f"line {number} is not an Optuna journal operation"
    return None


def _pickle_problem(path: str) -> str | None:
    """Why the pickle at `path` is cut or corrupted (None when whole): its opcodes are walked to
    STOP without building any object, so nothing in it runs, before any side effect of a resume."""
    fs, p = filesystem(path)
    with fs.open_input_stream(p) as f:
        data = f.readall()
    try:
        for _ in pickletools.genops(data):
            pass
    except Exception as exc:  # noqa: BLE001 - any failure to parse is damage
        return str(exc) or type(exc).__name__
    return None


def _start_dir(folder: str, storage_path) -> Path | None:
    """The directory a sweep started in, when its storage path was relative and the folder is
    still below it (`runs/ray` + `/x/runs/ray/demo` → `/x`); None when that cannot be told."""
    if not isinstance(storage_path, str) or is_uri(storage_path) or Path(storage_path).expanduser().is_absolute():
        return None
    parts, parent = Path(storage_path).parts, Path(folder).parent
    if parts and parent.parts[-len(parts):] == parts:
        return Path(*parent.parts[:-len(parts)])
    return None


def manifest_for(config, source: str, parent_run_id: str, experiment_dir: str) -> Manifest:
    return Manifest(config=config.model_dump(), source=source, parent_run_id=parent_run_id,
                    experiment_dir=experiment_dir, created=time.time())


def restore_tuner(experiment_dir: str, trainable, callbacks: list):
    """Tune's own restore of the experiment, with this driver's live callbacks.

    Unfinished trials continue from their checkpoints (a trial whose result is in its checkpoint
    reports it again without training); errored ones are retried. The searcher comes back from
    Tune's saved state and re-reads the Optuna study from its journal file.
    """
    from ray import tune

    if not is_uri(experiment_dir):
        _repoint_search_state(experiment_dir)
    tuner = tune.Tuner.restore(experiment_dir, trainable=trainable, resume_unfinished=True, resume_errored=True)
    # Tune pickled the callbacks with the experiment; their MLflow client and console were not
    # picklable (see SweepCallback.__getstate__). Tuner.restore takes no run config, so hand the
    # restored run config the live ones.
    tuner._local_tuner.get_run_config().callbacks = callbacks
    # The searcher's saved state names the Optuna journal by the absolute path the sweep started
    # with; the journal read and written from now on is the one in this (maybe moved) folder.
    searcher = restored_searcher(tuner)
    study_file = join(experiment_dir, STUDY_FILE)
    if hasattr(searcher, "relocate_study") and not is_uri(experiment_dir) and _exists(study_file):
        searcher.relocate_study(study_file)
    return tuner


def _repoint_search_state(experiment_dir: str) -> None:
    """Point the search generator's saved experiment at the folder where it is now.

    Tune re-derives the stored trials' paths from the folder given to `Tuner.restore`, but the
    search generator's state (`search_gen_state-*.json`) keeps the Experiment it was created
    with, storage path included: after a move, every new trial would be set up in the old
    folder (and fail there). Its storage gets the same three fields Tune updates on its trials.
    """
    import ray.cloudpickle as cloudpickle
    from pyarrow.fs import LocalFileSystem

    folder = Path(experiment_dir)
    for state_file in folder.glob("search_gen_state-*.json"):
        with state_file.open("rb") as f:
            state = cloudpickle.load(f)
        storage = getattr(state.get("experiment"), "storage", None)
        if storage is None or (storage.storage_fs_path == str(folder.parent)
                               and storage.experiment_dir_name == folder.name):
            continue
        storage.storage_filesystem = LocalFileSystem()
        storage.storage_fs_path, storage.experiment_dir_name = str(folder.parent), folder.name
        write_bytes_atomic(state_file, cloudpickle.dumps(state))


def restored_searcher(tuner):
    """The searcher a (restored) Tuner runs with, for its counters after `fit`."""
    return tuner._local_tuner._tune_config.search_alg
