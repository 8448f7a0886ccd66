"""Progress that reads well both on a terminal and in a log file: every loop of lesion goes through here.

On a terminal (stderr, where tqdm draws, is a TTY) a loop shows a tqdm bar. In a log (`mlflow run` under
CI, nohup, `> run.log 2>&1`) a bar is a stream of `\\r` redraws: megabytes for a 20-epoch run. There:

- loops inside an epoch print nothing (every=EPOCH_HEARTBEAT_S): the epoch's own summary line, written
  with say(), is the one line per epoch; only an epoch longer than EPOCH_HEARTBEAT_S (a 10k-image
  pretraining pool on a CPU) also says how far it is, every EPOCH_HEARTBEAT_S seconds;
- long loops that are not epochs (pseudo-labelling a pool, cache warm-up, predict) print a line every
  HEARTBEAT_S seconds, and a last one when they end, so a reader sees they are alive; loops shorter than
  that print nothing.

Only the main process shows progress: pass enabled=accelerator.is_main_process.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")
HEARTBEAT_S = 30.0
EPOCH_HEARTBEAT_S = 300.0  # an epoch loop: silent unless the epoch runs for minutes


def on_terminal() -> bool:
    """Whether bars can be drawn: stderr (tqdm's stream) is a TTY."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def say(line: str) -> None:
    """A line on stdout, above any live bar; flushed, so a log shows it at once."""
    if on_terminal():
        tqdm.write(line)
    else:
        print(line, flush=True)


def quiet_library_bars() -> None:
    """In a log, MLflow's artifact up/download bars are \\r noise too (an explicit setting wins)."""
    if not on_terminal():
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class _Quiet:
    """The iterable as is, with the bar methods the loops call."""

    def __init__(self, iterable: Iterable[T]):
        self.iterable = iterable

    def __iter__(self) -> Iterator[T]:
        return iter(self.iterable)

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass


class _Heartbeat(_Quiet):
    """A line every `every` seconds, and one at the end if any was printed."""

    def __init__(self, iterable: Iterable[T], desc: str, total: int | None, unit: str, every: float):
        super().__init__(iterable)
        self.desc, self.unit, self.every = desc, unit, every
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)

    def _count(self, n: int) -> str:
        return f"{n}/{self.total} {self.unit}" if self.total else f"{n} {self.unit}"

    def __iter__(self) -> Iterator[T]:
        start = last = time.monotonic()
        n, spoke = 0, False
        for item in self.iterable:
            yield item
            n += 1
            now = time.monotonic()
            if now - last >= self.every:
                line = f"[lesion] {self.desc}: {self._count(n)}"
                if self.total:
                    left = (now - start) / n * (self.total - n)
                    line += f" ({n / self.total:.0%}), {_duration(now - start)} so far, about {_duration(left)} left"
                else:
                    line += f", {_duration(now - start)} so far"
                say(line)
                last, spoke = now, True
        if spoke:
            say(f"[lesion] {self.desc}: {self._count(n)} done in {_duration(time.monotonic() - start)}")


def bar(iterable: Iterable[T], desc: str, *, total: int | None = None, enabled: bool = True, unit: str = "it",
        heartbeat: bool = True, every: float = HEARTBEAT_S) -> Any:
    """Iterate with progress: a tqdm bar on a terminal; in a log, a line every `every` seconds (none: heartbeat=False).

    The result iterates like iterable and has set_postfix() (a no-op without a bar).
    """
    if not enabled:
        return _Quiet(iterable)
    if on_terminal():
        return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True)
    if not heartbeat:
        return _Quiet(iterable)
    return _Heartbeat(iterable, desc, total, unit, every)
