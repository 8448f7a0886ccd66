"""Presets (--config FILE, -P config=FILE): their values apply first, given parameters win, and a bad file is one
line with lesion's exit code on every entry path."""

from __future__ import annotations

import subprocess

import pytest

from tests.bad_inputs.conftest import assert_clean_error, run_entry
from tests.conftest import REPO

SLOW = pytest.mark.slow


def cli(argv: list[str], capsys) -> subprocess.CompletedProcess:
    from lesion.cli import main

    code = main(argv)
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(["lesion", *argv], code, captured.out, captured.err)


@pytest.fixture
def ran(monkeypatch) -> list:
    """The configs an entry point was called with (it is not run)."""
    from lesion.cli import EntryPoint

    configs: list = []
    monkeypatch.setattr(EntryPoint, "function", lambda self: configs.append)
    return configs


def test_the_cli_applies_a_preset_and_given_parameters_win(ran, capsys):
    proc = cli(["selftrain", "--config", str(REPO / "configs" / "cpu.json"), "--epochs", "3"], capsys)
    assert proc.returncode == 0, proc.stderr
    (cfg,) = ran
    assert (cfg.train.epochs, cfg.pseudo.student_epochs, cfg.data.image_size, cfg.model.encoder) == (3, 10, 128,
                                                                                                     "resnet18")
    assert "config=" in proc.stdout and "(given instead: epochs)" in proc.stdout


def test_a_preset_for_several_entry_points_skips_what_this_one_does_not_take(ran, capsys):
    proc = cli(["finetune", "--config", str(REPO / "configs" / "gpu.json")], capsys)
    assert proc.returncode == 0, proc.stderr
    assert (ran[0].train.epochs, ran[0].data.image_size, ran[0].train.batch_size) == (50, 384, 16)
    assert "student_epochs" not in proc.stdout  # selftrain's, not finetune's: skipped


@pytest.mark.parametrize("text, match", [
    (None, r"config=.*missing\.json: cannot read the preset \(.*No such file"),
    ("{not json", r"config=.*bad\.json: cannot read the preset"),
    ('{"epoch": 30}', r"config=.*bad\.json: 'epoch' is no parameter of any entry point; fix or remove it"),
    ('{"epochs": "many"}', r"config=.*bad\.json: parameter epochs='many' is not a valid int"),
    ('{"seed": -1}', r"config=.*bad\.json: parameter seed=-1 must be"),
])
def test_a_bad_preset_is_one_line_exit_2_before_anything_runs(text, match, ran, tmp_path, capsys):
    path = tmp_path / ("missing.json" if text is None else "bad.json")
    if text is not None:
        path.write_text(text)
    proc = cli(["finetune", "--config", str(path), "--epochs", "1"], capsys)
    assert_clean_error(proc, "finetune", match)
    assert not ran


@SLOW
@pytest.mark.parametrize("via", ["launch", "mlflow"])
def test_a_bad_preset_is_one_line_through_launch_and_mlflow_run(via, tmp_path, tracking):
    path = tmp_path / "bad.json"
    path.write_text('{"epoch": 30}')
    proc = run_entry(via, "finetune", {"config": path, "output_dir": tmp_path / "out"}, tmp_path)
    assert_clean_error(proc, "finetune", r"'epoch' is no parameter of any entry point")
    assert not (tmp_path / "out").exists()
