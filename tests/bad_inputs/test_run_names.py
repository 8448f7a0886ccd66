"""Run names that would reach, reuse or share another run's folder: one clear line, and nothing removed."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.bad_inputs.conftest import assert_clean_error, entry_command, run_entry
from tests.conftest import subprocess_env

TINY = {"data": "synthetic:n=24,size=64,seed=5", "epochs": 1, "max_steps": 1, "batch_size": 8, "register": "false"}


def keepsakes(tmp_path: Path) -> list[Path]:
    """Files that no run may remove: in output_dir, in its stage folder, and in a folder elsewhere."""
    files = [tmp_path / "out" / "keep.txt", tmp_path / "out" / "finetune" / "keep.txt", tmp_path / "elsewhere" / "keep.txt"]
    for f in files:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("mine")
    return files


@pytest.mark.parametrize("via, name", [("cli", "elsewhere"), ("cli", ".."), ("cli", "a/b"), ("cli", "."),
                                       ("mlflow", "elsewhere")])
def test_a_path_is_not_a_run_name(via, name, tmp_path, tracking):
    files = keepsakes(tmp_path)
    run_name = str(tmp_path / "elsewhere") if name == "elsewhere" else name  # an absolute path
    proc = run_entry(via, "finetune", {**TINY, "output_dir": tmp_path / "out", "run_name": run_name}, tmp_path)
    assert_clean_error(proc, "finetune", r"parameter run_name=.* must be a name, not a path")
    assert all(f.read_text() == "mine" for f in files), "nothing outside output_dir/<stage>/<run_name> is removed"
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir()) == ["keep.txt"]
