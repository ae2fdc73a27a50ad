"""Quiet by default: other libraries' notices kept off a sweep's terminal; `--verbose` shows them.

What is silenced, and why it is safe:
- Tune's experiment-state snapshot warning: the sweep forces a snapshot after each trial's one
  checkpoint on purpose (`CheckpointConfig(num_to_keep=1)`, see driver.py).
- Ray's "token authentication is enabled" notice: token auth stays on; only the notice goes.
- MLflow's INFO lines (database tables created), Optuna's "new study created".
- lm-eval's warnings (e.g. "`pretrained` model kwarg is not of type str": we pass a loaded model
  on purpose) and transformers' info/warnings and progress bars (weight loading, shard writing).

Environment variables are set before Ray starts, so Ray's workers inherit them; `quiet_worker`
repeats the logging levels inside a worker process. Tune's TensorBoard logger (which cannot log
our nested results) is not silenced here but left out by the driver (`driver._result_loggers`).
"""

from __future__ import annotations

import logging
import os

VERBOSE_ENV = "MM4KE_RAY_VERBOSE"

_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # also transformers' own tqdm bars (read at import)
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}
_LOGGERS = {
    "ray._private.authentication": logging.ERROR,
    "ray.tune.execution.experiment_state": logging.ERROR,
    "lm_eval": logging.ERROR,
    "transformers": logging.ERROR,
    "mlflow": logging.WARNING,
    "optuna": logging.WARNING,
}


def is_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "0") == "1"


def set_verbose(verbose: bool) -> None:
    """`--verbose` of `sweep`/`demo`: library output shown again (in Ray's workers too)."""
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    quiet_libraries()


def quiet_libraries() -> None:
    """Silence the notices above in this process (and in processes it starts), unless verbose."""
    if is_verbose():
        return
    for name, value in _ENV.items():
        os.environ.setdefault(name, value)
    quiet_worker()


def quiet_worker() -> None:
    """The logging levels alone: for a Ray worker, which inherited the environment."""
    if is_verbose():
        return
    for name, level in _LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    try:  # Optuna resets its logger's level when first used: set it through its own API
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    except ImportError:
        pass
