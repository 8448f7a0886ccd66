"""Ctrl-C and SIGTERM (kill, docker stop, a scheduler's pre-emption) as exceptions, so that a command ends its
MLflow run KILLED and says so in one line, instead of a traceback or a run left RUNNING forever."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

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
def _handled_by(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """Ctrl-C and SIGTERM go to handler while the block runs, then to their old handlers. Main thread only (the
    only one that may set handlers); a signal the shell told this process to ignore (SIGINT of a background job
    started by `nohup cmd &`) stays ignored."""
    if not _main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in SIGNALS if signal.getsignal(sig) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def interrupts_raise() -> Iterator[None]:
    """While the block runs, Ctrl-C raises KeyboardInterrupt and SIGTERM Terminated (once); then the old handlers."""
    with _handled_by(_raise):
        yield


@contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends: steps that must happen together (a model logged, then the
    tag that tells a resumed run so) do, and the interrupt comes right after them."""
    pending: list[int] = []
    try:
        with _handled_by(lambda signum, frame: pending.append(signum)):
            yield
    finally:
        if pending:  # the old handlers are back: the held signal goes to them now
            signal.raise_signal(pending[0])
