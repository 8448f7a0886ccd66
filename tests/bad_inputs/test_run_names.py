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
                                       pytest.param("mlflow", "elsewhere", marks=pytest.mark.slow)])
def test_a_path_is_not_a_run_name(via, name, tmp_path, tracking):
    files = keepsakes(tmp_path)
    run_name = str(tmp_path / "elsewhere") if name == "elsewhere" else name  # an absolute path
    proc = run_entry(via, "finetune", {**TINY, "output_dir": tmp_path / "out", "run_name": run_name}, tmp_path)
    assert_clean_error(proc, "finetune", r"parameter run_name=.* must be a name, not a path")
    assert all(f.read_text() == "mine" for f in files), "nothing outside output_dir/<stage>/<run_name> is removed"
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir()) == ["keep.txt"]


def snapshot(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.mark.slow
def test_a_finished_runs_name_is_refused_and_its_outputs_kept(tmp_path, tracking):
    params = {**TINY, "output_dir": tmp_path / "out", "run_name": "first run"}  # a space is fine in a name
    first = run_entry("cli", "finetune", params, tmp_path)
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    folder = tmp_path / "out" / "finetune" / "first run"
    before = snapshot(folder)
    assert "result.json" in before

    again = run_entry("cli", "finetune", params, tmp_path)
    assert_clean_error(again, "finetune", r"run_name 'first run' is a finished run .*: its outputs are kept in "
                                          r".*; pass a new run_name, or delete that folder to run it again")
    assert snapshot(folder) == before, "a finished run's outputs are never removed or rewritten"


@pytest.mark.slow
def test_a_run_in_progress_is_refused(tmp_path, tracking):
    params = {**TINY, "max_steps": 0, "epochs": 50, "output_dir": tmp_path / "out", "run_name": "busy"}
    first = subprocess.Popen(entry_command("cli", "finetune", params), cwd=tmp_path, env=subprocess_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        progress = tmp_path / "out" / "finetune" / "busy" / "state" / "progress.json"
        deadline = time.time() + 300
        while not progress.exists():
            assert first.poll() is None, first.communicate()[0][-3000:]
            assert time.time() < deadline, "the first run never checkpointed"
            time.sleep(0.2)
        second = run_entry("cli", "finetune", params, tmp_path, timeout=300)
        assert_clean_error(second, "finetune", rf"run 'busy' is in progress \(pid {first.pid}\): another process is "
                                               r"writing .*busy; wait for it to finish, or pass a new run_name")
        assert first.poll() is None, "the first run goes on"
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
