"""Start an entry point through `accelerate launch`, with lesion's one-line errors and exit codes.

num_processes=1 runs one process; N>1 starts N ranks with --multi_gpu, which
on a machine without GPUs forms one gloo group because the engine builds
Accelerator(cpu=True) when CUDA is absent (accelerate 1.x's `--cpu
--num_processes N` starts a single process). num_processes=0 defers to the
user's `accelerate config` (multi-node, DeepSpeed, ...).

Every rank runs `python -m lesion.cli ENTRY ...`: the module is found the same
way from a checkout (the MLproject) and from an installed package.

Accelerate's launcher runs in this process, so a failed rank becomes this
process's exit code instead of accelerate's CalledProcessError traceback or
torch elastic's failure table. Ranks of a group do not print a user error
themselves (every rank would print the same line): they leave it in a folder
the launcher names, and the launcher prints the first one. A rank whose
collective breaks because a peer has reported an error exits quietly.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from lesion.interrupts import RESUME_HINT, RUN_ENDED

ERRORS = "LESION_LAUNCH_ERRORS"  # the folder where a group's ranks leave their user errors for lesion launch
USER_ERROR = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_args(entry: str, num_processes: int, args: list[str]) -> list[str]:
    """The `accelerate launch` arguments that run entry with args on num_processes processes."""
    cmd: list[str] = []
    # Every value accelerate would otherwise default is given, so it prints no notice about them. The config's
    # mixed_precision still wins over --mixed_precision (make_accelerator passes it to the Accelerator).
    single = ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    if num_processes == 1:
        cmd += ["--num_processes", "1", *single]
    elif num_processes > 1:
        cmd += ["--multi_gpu", "--num_processes", str(num_processes), *single, "--main_process_port", str(free_port())]
    return cmd + ["-m", "lesion.cli", entry, *args]


def in_group() -> bool:
    """Whether this process is one rank of a group of several that lesion launch started."""
    return _group_errors() is not None


def _group_errors() -> Path | None:
    """The folder where ranks of a group that lesion launch started leave their user errors (None otherwise)."""
    folder = os.environ.get(ERRORS, "")
    return Path(folder) if folder and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None


def report_user_error(entry: str, message: str) -> None:
    """Print `lesion ENTRY: error: MESSAGE`; a rank of a group hands it to lesion launch, which prints it once."""
    line = f"lesion {entry}: error: {message}"
    folder = _group_errors()
    if folder is not None:
        try:  # written before this rank exits, i.e. before its peers see a broken collective
            tmp = folder / f".{os.getpid()}.tmp"
            tmp.write_text(line + "\n")
            tmp.rename(folder / f"{time.time_ns():020d}-rank{os.environ.get('RANK', '0')}.txt")
            return
        except OSError:
            pass
    print(line, file=sys.stderr, flush=True)


def peer_reported_error() -> bool:
    """Whether another rank of this group has reported a user error (so this rank's broken collective is no news)."""
    folder = _group_errors()
    return folder is not None and any(folder.glob("*.txt"))


@contextmanager
def _quiet_torch_elastic() -> Iterator[None]:
    """torch elastic logs every failure (and the SIGTERM to the other ranks) itself; lesion reports it in one line."""
    names = [name for name in logging.root.manager.loggerDict
             if name.startswith(("torch.distributed.elastic", "torch.distributed.launcher", "torch.distributed.run"))]
    loggers = [logging.getLogger(name) for name in names]
    before = [lg.disabled for lg in loggers]
    for lg in loggers:
        lg.disabled = True
    try:
        yield
    finally:
        for lg, was in zip(loggers, before):
            lg.disabled = was


def _exit_code(code: int) -> int:
    return 128 - code if code < 0 else code  # killed by signal N: the shell's 128+N


def _reported(folder: Path) -> str | None:
    """The first user error a rank left in folder."""
    for path in sorted(folder.glob("*.txt")):
        return path.read_text().strip()
    return None


def _child_failed(entry: str, err) -> int:
    """A torch elastic ChildFailedError without a rank's lesion error: say which rank failed and how."""
    rank, failure = err.get_first_failure()
    if failure.exitcode < 0:
        try:
            how = f"was killed by {signal.Signals(-failure.exitcode).name}"
        except ValueError:
            how = f"was killed by signal {-failure.exitcode}"
    else:
        how = f"exited with status {failure.exitcode} (its output is above)"
    print(f"lesion launch: {entry} rank {rank} {how}", file=sys.stderr, flush=True)
    return _exit_code(failure.exitcode)


def launch(entry: str, num_processes: int, args: list[str]) -> int:
    """Run entry on num_processes processes; returns the exit status (lesion's 2 for a user error)."""
    import torch.distributed.run  # noqa: F401  (imported before its loggers are quieted)
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    argv = accelerate_args(entry, num_processes, args)
    print("[lesion] accelerate launch " + shlex.join(argv), file=sys.stderr, flush=True)
    parsed = launch_command_parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lesion-launch-") as errors:
        os.environ[ERRORS] = errors
        try:
            with _quiet_torch_elastic():
                launch_command(parsed)
        except subprocess.CalledProcessError as err:  # one process: it printed its own error
            return _exit_code(err.returncode)
        except ChildFailedError as err:
            line = _reported(Path(errors))
            if line is None:
                return _child_failed(entry, err)
            print(line, file=sys.stderr, flush=True)
            return USER_ERROR
        except KeyboardInterrupt:
            return 130
        except SystemExit as stop:  # accelerate exits 128 + N once it has stopped the processes on signal N
            code = stop.code if isinstance(stop.code, int) else 1
            # accelerate has filled in num_processes=0 from the accelerate config (or the device count) by now
            ranks = parsed.num_processes or num_processes
            if ranks != 1 and code - 128 in (signal.SIGINT, signal.SIGTERM):  # one process said it itself
                print(f"lesion launch: {entry} stopped by {signal.Signals(code - 128).name}; every rank stopped, "
                      f"{RUN_ENDED}; {RESUME_HINT}", file=sys.stderr, flush=True)
            return code
        except (ValueError, RuntimeError, OSError) as err:  # accelerate's own checks (an invalid accelerate config)
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            print(f"lesion launch: error: accelerate launch failed: {first}; check num_processes and your "
                  "`accelerate config`", file=sys.stderr, flush=True)
            return USER_ERROR
        finally:
            os.environ.pop(ERRORS, None)
    return 0
