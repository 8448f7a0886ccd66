"""Bad input through every entry path: one clear line, lesion's exit code, no traceback from any layer.

    proc = run_entry("cli", "finetune", {"seed": -1}, tmp_path)      # or "launch", "mlflow"
    assert_clean_error(proc, "finetune", r"seed=-1 must be >= 0")
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, subprocess_env

BIN = Path(sys.executable).parent
VIAS = ("cli", "launch", "mlflow")
USER_ERROR = 2  # what the `lesion` CLI exits with on a LesionError


def entry_command(via: str, entry: str, params: dict[str, object]) -> list[str]:
    """The command a user types for entry with params, through the `lesion` CLI, `lesion launch` or `mlflow run`."""
    flags = [part for name, value in params.items() for part in (f"--{name}", str(value))]
    if via == "cli":
        return [str(BIN / "lesion"), entry, *flags]
    if via == "launch":
        return [str(BIN / "lesion"), "launch", entry, "--num_processes", "1", "--", *flags]
    if via == "mlflow":
        return [str(BIN / "mlflow"), "run", str(REPO), "-e", entry, "--env-manager", "local",
                *[part for name, value in params.items() for part in ("-P", f"{name}={value}")]]
    raise ValueError(via)


def run_entry(via: str, entry: str, params: dict[str, object], cwd: Path, timeout: int = 600,
              **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(entry_command(via, entry, params), cwd=cwd, env=subprocess_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def assert_clean_error(proc: subprocess.CompletedProcess, entry: str, match: str,
                       code: int = USER_ERROR) -> str:
    """Exactly one `lesion ENTRY: error: ...` line matching `match`, exit status `code`, no traceback anywhere."""
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, output[-4000:]
    errors = [line for line in output.splitlines() if line.startswith(f"lesion {entry}: error: ")]
    assert len(errors) == 1, output[-4000:]
    assert re.search(match, errors[0]), errors[0]
    assert proc.returncode == code, f"exit {proc.returncode}, expected {code}:\n{output[-2000:]}"
    return errors[0]
