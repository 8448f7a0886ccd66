"""Ctrl-C and SIGTERM (kill, docker stop, a scheduler's pre-emption) as exceptions, so that a command ends its
MLflow run KILLED and says so in one line, instead of a traceback or a run left RUNNING forever."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
RESUME_HINT = "the same command with the run_name printed at its start resumes it"  # what to do next, one line
# mlflow run then marks it FAILED: its check for an already-ended run compares the status string with int codes.
RUN_ENDED = "its MLflow run is marked KILLED (FAILED under `mlflow run`, which marks every failed command so)"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt: the tracker ends the run KILLED for both."""


def _ignore(signum, frame) -> None:
    pass


def _raise(signum, frame) -> None:
    # One interrupt is enough: later ones (accelerate sends SIGTERM right after a Ctrl-C, users press it twice) must
    # not cut short the clean-up that ends the run KILLED. A Python no-op, not SIG_IGN: a signal already pending
    # when its handler becomes SIG_IGN makes CPython print a warning.
    for sig in SIGNALS:
        signal.signal(sig, _ignore)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()  # signal handlers can be set there only


@contextmanager
def interrupts_raise() -> Iterator[None]:
    """While the block runs, Ctrl-C raises KeyboardInterrupt and SIGTERM Terminated (once); then the old handlers."""
    if not _main_thread():
        yield
        return
    # A signal the shell told this process to ignore (SIGINT of a background job started by `nohup cmd &`) stays so.
    previous = {sig: signal.signal(sig, _raise) for sig in SIGNALS if signal.getsignal(sig) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends: steps that must happen together (a model logged, then the
    tag that tells a resumed run so) do, and the interrupt comes right after them."""
    if not _main_thread():
        yield
        return
    pending: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: pending.append(signum)) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if pending:
            signal.raise_signal(pending[0])
