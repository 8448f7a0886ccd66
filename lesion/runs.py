"""Run names, run folders and the lock that lets one process own a run.

A stage's run lives in the folder output_dir/<stage>/<run_name>, so a run name
is a name, never a path: no separators, not `.` or `..` (an apostrophe or a
space is fine). A new run may clean only that folder, and only when it holds
the leftovers of an unfinished run: a finished run's folder (marked by
FINISHED) is never touched; re-using its name is refused.

While a run trains, its main process holds an exclusive flock on
output_dir/.locks/<stage>/<run_name>.lock (outside the folder that may be
cleaned). A second process with the same run name is refused; the kernel drops
the lock when the holder dies, even by kill -9, so a crashed run resumes
without a stale lock in the way. Nothing here talks to MLflow.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from lesion.config import name_problem
from lesion.errors import ConfigError
from lesion.outputs import write_json

FINISHED = "finished.json"
LOCKS = ".locks"


def default_run_name(prefix: str) -> str:
    """prefix-YYYYmmdd-HHMMSS-xxxx: the random tail keeps two runs started in the same second apart."""
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def stage_dir(output_dir: str | Path, stage: str, run_name: str) -> Path:
    problem = name_problem(run_name)
    if problem or not run_name:  # config checks this first; a programming slip must not reach rmtree
        raise ConfigError(f"run_name {run_name!r} must be a name, not a path ({problem or 'it is empty'})")
    return Path(output_dir) / stage / run_name


class RunInProgress(ConfigError):
    """Another live process holds the run."""


class RunFinished(ConfigError):
    """The run name belongs to a finished run whose outputs are kept."""

    def __init__(self, message: str, workdir: Path):
        super().__init__(message)
        self.workdir = workdir


def finished_record(workdir: Path) -> dict | None:
    path = Path(workdir) / FINISHED
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def mark_finished(workdir: Path, run_name: str, run_id: str | None) -> None:
    """The last file a successful run writes: from now on its folder is never cleaned."""
    write_json(Path(workdir) / FINISHED, {"run_name": run_name, "run_id": run_id,
                                          "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def check_not_finished(workdir: Path, run_name: str) -> None:
    record = finished_record(workdir)
    if record is not None:
        run = f" (MLflow run {record['run_id']})" if record.get("run_id") else ""
        raise RunFinished(f"run_name {run_name!r} is a finished run{run}: its outputs are kept in {workdir}; "
                          "pass a new run_name, or delete that folder to run it again", Path(workdir))


def _holder(fd: int) -> str:
    """Who holds the lock, as written by the holder (it may still be writing: retry briefly)."""
    for _ in range(20):
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 4096).decode(errors="replace").strip()
        try:
            info = json.loads(text)
            pid, host = info.get("pid"), info.get("host")
            return f"pid {pid}" + (f" on {host}" if host and host != socket.gethostname() else "")
        except ValueError:
            time.sleep(0.1)
    return "pid unknown"


@contextmanager
def run_lock(output_dir: str | Path, stage: str, run_name: str) -> Iterator[Path]:
    """Hold the run's lock for the with-block, or raise RunInProgress at once when another process holds it."""
    path = Path(output_dir) / LOCKS / stage / f"{run_name}.lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # never O_TRUNC: that would erase the holder's pid
    except OSError as err:
        raise ConfigError(f"output_dir={output_dir}: cannot write the run's lock file {path} "
                          f"({err.strerror or err}); pass an output_dir you can write to") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunInProgress(f"run {run_name!r} is in progress ({_holder(fd)}): another process is writing "
                                f"{Path(output_dir) / stage / run_name}; wait for it to finish, or pass a new "
                                "run_name") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode())
        yield path
    finally:
        os.close(fd)  # closing drops the lock; the file stays (removing it would race a newcomer)
