"""Ctrl-C during `Tuner.fit`: Tune's graceful stop, and the driver told that it happened.

Tune catches the first SIGINT itself, saves its state and returns from `fit` as if the sweep
had ended: the sweep printed a finished-looking front and exited 0. Here Tune's own SIGINT
handler is off (`TUNE_DISABLE_SIGINT_HANDLER`) and ours asks Tune to stop the same graceful way
through SIGUSR1 (which Tune always handles), remembering that it did; a second Ctrl-C raises
KeyboardInterrupt at once, as Python's default would.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager


class Interrupt:
    """Whether Ctrl-C (SIGINT) arrived while `catch_interrupt` was active."""

    def __init__(self) -> None:
        self.seen = False

    def __call__(self, signum, frame) -> None:
        self.seen, again = True, self.seen
        # The second Ctrl-C stops now; so does one before Tune's handler of SIGUSR1 is in place
        # (SIGUSR1's default action would end the process without a word).
        if again or signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, signal.SIG_IGN, None):
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGUSR1)  # Tune: stop trials, save the experiment state, return


@contextmanager
def catch_interrupt():
    """Yield an `Interrupt`; inside, a first Ctrl-C stops Tune gracefully and is remembered."""
    interrupt = Interrupt()
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGUSR1"):
        yield interrupt  # no signal handlers off the main thread: Tune's own behaviour stays
        return
    previous, env = signal.getsignal(signal.SIGINT), os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    signal.signal(signal.SIGINT, interrupt)
    try:
        yield interrupt
    finally:
        signal.signal(signal.SIGINT, previous)
        if env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = env
