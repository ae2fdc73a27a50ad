"""The Ray Train worker body of runner 'train', light to import (issue 28 §3).

Ray Train's worker unpickles its training function, and with it this module and everything the
module imports at its top, in a fresh process per trial. So the top holds only Ray Train, and
the trial's R-SFT arguments travel as opaque bytes (`rsft_job`): the worker loads the R-SFT code
(torch, transformers, the data readers) when it runs, and nothing else of the sweep (Optuna,
the evaluators, the search space, the sweep's settings classes).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import ray.train
from ray import cloudpickle

from mm4ke_ray.search.train_placement import record_placement_group

SUMMARY_FILE = "rsft-summary.json"  # the R-SFT summary, inside the Ray Train checkpoint


def rsft_job(arguments: dict) -> bytes:
    """`rsft_to_folder`'s keyword arguments (all but the folder and the device), as the worker's
    config carries them: bytes, unpickled only where R-SFT runs."""
    return cloudpickle.dumps(arguments)


def rsft_train_loop(cfg: dict) -> None:
    """Ray Train worker body: R-SFT on this worker's device, the delta reported as checkpoint.

    `cfg`: `job` (`rsft_job`), `placement_key` (train_placement.py)."""
    record_placement_group(cfg["placement_key"])
    previous = ray.train.get_checkpoint()
    if previous is not None:
        # A retried trial whose R-SFT had already finished: Ray Train restored its delta.
        with previous.as_directory() as folder:
            summary = json.loads((Path(folder) / SUMMARY_FILE).read_text())
        ray.train.report(summary, checkpoint=previous)
        return
    # Loaded only where R-SFT runs: torch, transformers, the data readers.
    from ray.train.torch import get_device

    from mm4ke_ray.rsft.to_folder import rsft_to_folder

    out = tempfile.mkdtemp(prefix="mm4ke-delta-")
    arguments = cloudpickle.loads(cfg["job"])
    summary = rsft_to_folder(out, device=str(get_device()), **arguments).summary()
    checkpoint = None
    if summary["status"] == "ok":
        (Path(out) / SUMMARY_FILE).write_text(json.dumps(summary))
        checkpoint = ray.train.Checkpoint.from_directory(out)
    ray.train.report(summary, checkpoint=checkpoint)


def rsft_local_loop(cfg: dict) -> dict:
    """Runner 'train-local' body (Ray Train's local mode, in the trial's own process): R-SFT on the
    device Ray gave the trial, its summary and delta folder returned (`Result.return_value`).

    Ray 2.60 refuses `ray.train.report` and `get_checkpoint` inside a Tune trial, so the result
    travels as the function's return value; there is no Ray Train retry to restore from here (a
    failed R-SFT fails the trial, which Tune retries: search.max_failures)."""
    import torch

    from mm4ke_ray.rsft.to_folder import rsft_to_folder

    out = tempfile.mkdtemp(prefix="mm4ke-delta-")
    device = "cuda" if torch.cuda.is_available() else "cpu"  # CUDA_VISIBLE_DEVICES: the trial's own GPU
    # The trial process outlives the trial (reuse_actors): the next trial trains the same loaded base.
    summary = rsft_to_folder(out, device=device, keep_loaded=True, **cloudpickle.loads(cfg["job"])).summary()
    return {"summary": summary, "folder": out if summary["status"] == "ok" else None}
