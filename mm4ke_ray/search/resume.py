"""What a killed sweep needs to go on: its folder, the manifest in it, and the restored Tuner.

A sweep's folder is `<storage_path>/<name>` (a suffix is added when that folder already holds
another sweep). It holds Tune's experiment state (trials, searcher, checkpoints = deltas +
results), the Optuna study as a journal file (every told point, extra candidates included), the
MLflow spool if the server was away, and `mm4ke-sweep.json`: the resolved config and the MLflow
parent run id, so `mm4ke-ray sweep --resume FOLDER` continues the same sweep into the same run.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from mm4ke_ray.errors import UserError
from mm4ke_ray.storage import is_uri

MANIFEST = "mm4ke-sweep.json"
FORMAT = 1


@dataclass
class Manifest:
    """The sweep's identity, written before its first trial starts."""

    config: dict  # SweepConfig.model_dump(), with 'demo' already resolved to local paths
    source: str  # the config file it came from
    parent_run_id: str  # MLflow parent run
    experiment_dir: str  # the sweep's folder (Tune experiment)
    created: float
    format: int = FORMAT


def _fs(path: str):
    import pyarrow.fs

    if is_uri(path):
        return pyarrow.fs.FileSystem.from_uri(path)
    return pyarrow.fs.LocalFileSystem(), path


def _exists(path: str) -> bool:
    import pyarrow.fs

    fs, p = _fs(path)
    return fs.get_file_info(p).type != pyarrow.fs.FileType.NotFound


def join(folder: str, name: str) -> str:
    return f"{folder.rstrip('/')}/{name}" if is_uri(folder) else str(Path(folder) / name)


def new_experiment_name(storage: str, name: str) -> str:
    """`name`, or `name-2`, `name-3`, ... when `<storage>/<name>` already holds a sweep.

    Two sweeps in one Tune folder would mix their trials and a later --resume would pick up
    both; a fresh sweep never writes into another's folder.
    """
    candidate, n = name, 1
    while _exists(join(join(storage, candidate), MANIFEST)) or _exists(join(join(storage, candidate), "tuner.pkl")):
        n += 1
        candidate = f"{name}-{n}"
    return candidate


def write_manifest(manifest: Manifest) -> str:
    """Write `mm4ke-sweep.json` into the sweep's folder (atomically when local); return its path."""
    path = join(manifest.experiment_dir, MANIFEST)
    text = json.dumps(asdict(manifest), indent=2)
    if is_uri(path):
        fs, p = _fs(path)
        fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(p) as out:
            out.write(text.encode())
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(path).with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
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
    fs, p = _fs(path)
    with fs.open_input_stream(p) as f:
        try:
            data = json.loads(f.readall().decode())
        except ValueError as exc:
            raise UserError(f"--resume {folder}: {MANIFEST} is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"--resume {folder}: {MANIFEST} has an unknown format; it was written by another version")
    if not _exists(join(folder, "tuner.pkl")):
        raise UserError(
            f"--resume {folder}: the sweep stopped before its first trial was scheduled (no Tune state); "
            "start it again without --resume"
        )
    data["experiment_dir"] = folder  # the folder may have moved since
    return Manifest(**data)


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

    tuner = tune.Tuner.restore(experiment_dir, trainable=trainable, resume_unfinished=True, resume_errored=True)
    # Tune pickled the callbacks with the experiment; their MLflow client and console were not
    # picklable (see SweepCallback.__getstate__). Tuner.restore takes no run config, so hand the
    # restored run config the live ones.
    tuner._local_tuner.get_run_config().callbacks = callbacks
    return tuner


def restored_searcher(tuner):
    """The searcher a (restored) Tuner runs with, for its counters after `fit`."""
    return tuner._local_tuner._tune_config.search_alg
