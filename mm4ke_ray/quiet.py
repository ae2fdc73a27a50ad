"""Quiet by default: other libraries' notices kept off our commands' terminal; `--verbose` shows them.

What is silenced, and why it is safe:
- Tune's experiment-state snapshot warning: the sweep forces a snapshot after each trial's one
  checkpoint on purpose (`CheckpointConfig(num_to_keep=1)`, see driver.py).
- Ray's "token authentication is enabled" notice: token auth stays on; only the notice goes.
- MLflow's INFO lines (database tables created), Optuna's "new study created".
- lm-eval's warnings (e.g. "`pretrained` model kwarg is not of type str": we pass a loaded model
  on purpose) and transformers' info/warnings and progress bars (weight loading, shard writing).
- Progress bars of datasets (an lm-eval task's "Generating test split") and lm-eval's own
  per-task bar over its documents, which takes no switch but tqdm's `TQDM_DISABLE`.

Most of these switches are environment variables that a library reads once, when it is imported
(transformers and huggingface_hub their progress-bar state, tqdm its `TQDM_*` defaults). So
`quiet_libraries` runs first thing in a command (`sweep`, `demo`, `export`, `evaluate`), before
those imports, and before Ray starts, so Ray's workers inherit them; `quiet_worker` repeats the
logging levels inside a worker process. A library imported earlier (a caller that ran `main()`
in-process, a test) is quieted through its own runtime switch where it has one; tqdm has none,
so bars made with a tqdm imported earlier stay. Tune's TensorBoard logger (which cannot log our
nested results) is not silenced here but left out by the driver (`driver._result_loggers`).
"""

from __future__ import annotations

import logging
import os
import sys

VERBOSE_ENV = "MM4KE_RAY_VERBOSE"

_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # also transformers' own tqdm bars (read at import)
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TQDM_DISABLE": "1",  # bars of libraries without a switch of their own (lm-eval's requests)
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "LMEVAL_LOG_LEVEL": "ERROR",  # should lm-eval's `setup_logging` run (its CLI, simple_evaluate)
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
    """A command's `--verbose`: library output shown again (in Ray's workers too); else quieted.

    Call it first thing in the command, before torch, transformers or lm-eval are imported."""
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    quiet_libraries()


def quiet_libraries() -> None:
    """Silence the notices above in this process (and in processes it starts), unless verbose.
    Our own warnings are shown either way, as one plain line (`plain_own_warnings`)."""
    plain_own_warnings()
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
    _quiet_imported()
    try:  # Optuna resets its logger's level when first used: set it through its own API
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    except ImportError:
        pass


def _quiet_imported() -> None:
    """Libraries imported before `quiet_libraries` read its variables too late: their own switches."""
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()  # huggingface_hub's bars too
    if "datasets" in sys.modules:
        from datasets.utils import disable_progress_bars

        disable_progress_bars()


_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def plain_own_warnings() -> None:
    """Show this package's warnings as `warning: <message>`: no file:line and no echo of the
    source line that raised it (both point into our code, not at what the user can change).
    Other libraries' warnings keep Python's format. Installed once per process."""
    import warnings

    original = warnings.showwarning
    if getattr(original, "_mm4ke_plain", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        if os.path.abspath(filename).startswith(_PACKAGE + os.sep):
            try:
                print(f"warning: {message}", file=file or sys.stderr)
            except OSError:  # a closed stderr loses a warning, as Python's own would
                pass
            return
        original(message, category, filename, lineno, file, line)

    show._mm4ke_plain = True
    warnings.showwarning = show
