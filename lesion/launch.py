"""Start an entry point through `accelerate launch`.

num_processes=1 runs one process; N>1 starts N ranks with --multi_gpu, which
on a machine without GPUs forms one gloo group because the engine builds
Accelerator(cpu=True) when CUDA is absent (accelerate 1.x's `--cpu
--num_processes N` starts a single process). num_processes=0 defers to the
user's `accelerate config` (multi-node, DeepSpeed, ...).
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

PIPELINES = Path(__file__).resolve().parent.parent / "pipelines"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_command(entry: str, num_processes: int, args: list[str]) -> list[str]:
    script = PIPELINES / f"{entry}.py"
    exe = shutil.which("accelerate") or "accelerate"
    cmd = [exe, "launch"]
    if num_processes == 1:
        cmd += ["--num_processes", "1", "--num_machines", "1", "--dynamo_backend", "no"]
    elif num_processes > 1:
        cmd += ["--multi_gpu", "--num_processes", str(num_processes), "--num_machines", "1",
                "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    return cmd + [str(script), *args]


def launch(entry: str, num_processes: int, args: list[str]) -> int:
    cmd = accelerate_command(entry, num_processes, args)
    print("[lesion] " + " ".join(cmd), file=sys.stderr, flush=True)
    os.execv(cmd[0], cmd) if os.path.isabs(cmd[0]) else os.execvp(cmd[0], cmd)
    return 0
