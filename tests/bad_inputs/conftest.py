"""Bad input through every entry path: one clear line, lesion's exit code, no traceback from any layer.

    proc = run_entry("cli", "finetune", {"seed": -1}, tmp_path)      # or "launch", "launch:2", "mlflow"
    assert_clean_error(proc, "finetune", r"seed=-1 must be")

What `mlflow run` adds cannot be changed from the project: MLflow's own INFO
lines, then `ERROR mlflow.cli: === Run (ID '...') failed ===`, and exit
status 1 for any failed run (mlflow.cli exits 1 whatever the command's status).
assert_clean_error expects exactly that for `mlflow run` and nothing more.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, subprocess_env

BIN = Path(sys.executable).parent
VIAS = ("cli", "launch", "mlflow")
USER_ERROR = 2  # what the `lesion` CLI and `lesion launch` exit with on a LesionError
MLFLOW_FAILED = 1  # what `mlflow run` exits with when its command fails, whatever the command's status
MLFLOW_FAILED_LINE = re.compile(r"ERROR mlflow\.cli: === Run \(ID '[0-9a-f]+'\) failed ===$")


def entry_command(via: str, entry: str, params: dict[str, object]) -> list[str]:
    """The command a user types for entry with params: the `lesion` CLI, `lesion launch` (on N processes with
    via="launch:N") or `mlflow run`."""
    flags = [part for name, value in params.items() for part in (f"--{name}", str(value))]
    if via == "cli":
        return [str(BIN / "lesion"), entry, *flags]
    if via.partition(":")[0] == "launch":
        return [str(BIN / "lesion"), "launch", entry, "--num_processes", via.partition(":")[2] or "1", "--", *flags]
    if via == "mlflow":
        return [str(BIN / "mlflow"), "run", str(REPO), "-e", entry, "--env-manager", "local",
                *[part for name, value in params.items() for part in ("-P", f"{name}={value}")]]
    raise ValueError(via)


def run_entry(via: str, entry: str, params: dict[str, object], cwd: Path, timeout: int = 600,
              **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(entry_command(via, entry, params), cwd=cwd, env=subprocess_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def _via_mlflow(proc: subprocess.CompletedProcess) -> bool:
    return Path(str(proc.args[0])).name == "mlflow" and list(proc.args[1:2]) == ["run"]


def assert_clean_error(proc: subprocess.CompletedProcess, entry: str, match: str,
                       code: int | None = None) -> str:
    """Exactly one `lesion ENTRY: error: ...` line matching `match`, no traceback anywhere, and exit status `code`
    (default: USER_ERROR, or MLFLOW_FAILED with MLflow's one failure line for `mlflow run`)."""
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, output[-4000:]
    errors = [line for line in output.splitlines() if line.startswith(f"lesion {entry}: error: ")]
    assert len(errors) == 1, output[-4000:]
    assert re.search(match, errors[0]), errors[0]
    if _via_mlflow(proc):
        code = MLFLOW_FAILED if code is None else code
        # MLflow's own verdict is its only logged error
        logged = [line for line in output.splitlines() if " ERROR " in line]
        assert len(logged) == 1 and MLFLOW_FAILED_LINE.search(logged[0]), logged
    code = USER_ERROR if code is None else code
    assert proc.returncode == code, f"exit {proc.returncode}, expected {code}:\n{output[-2000:]}"
    return errors[0]
