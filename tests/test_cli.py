"""The command line (lesion/cli.py): every entry point's --help, presets and options on the way to its config,
user errors as one line with exit 2, interrupts as one line with the run marked KILLED, and crashes that keep
their traceback."""

from __future__ import annotations

import os
import signal
import time

import pytest

import lesion.finetune
from lesion import config as C
from lesion.cli import ENTRY_POINTS, main, parameter_names, run_entry_point


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_every_entry_points_help_lists_each_parameter_with_its_default(entry, capsys):
    with pytest.raises(SystemExit) as done:
        main([entry, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    text, packed = " ".join(out.split()), "".join(out.split())  # argparse wraps lines, also at a hyphen
    assert text.startswith(f"usage: lesion {entry}") and ENTRY_POINTS[entry].help.split("(")[0].strip()[:40] in text
    for name, _typ, default, help_text, _choices in C.flat_fields(ENTRY_POINTS[entry].config):
        assert f"--{name}" in text, name
        if "(default:" not in help_text:
            assert "".join(f"(default: {default!r})".split()) in packed, name
    assert "--config FILE" in text


def test_options_and_a_preset_become_the_config_and_the_options_win(tmp_path, monkeypatch):
    preset = tmp_path / "preset.json"
    preset.write_text('{"epochs": 5, "lr": 0.01, "trial_epochs": 2}')  # trial_epochs: tune's, skipped by finetune
    seen = []
    monkeypatch.setattr(lesion.finetune, "run_finetune", seen.append)
    assert run_entry_point("finetune", ["--config", str(preset), "--lr", "0.02", "--arch", "pspnet"]) == 0
    cfg = seen[0]
    assert (cfg.train.epochs, cfg.train.lr, cfg.model.arch) == (5, 0.02, "pspnet")
    assert "trial_epochs" in parameter_names()


def test_a_bad_value_is_one_line_naming_the_parameter_and_exit_2(monkeypatch, capsys):
    monkeypatch.setattr(lesion.finetune, "run_finetune", lambda cfg: pytest.fail("must not run"))
    assert run_entry_point("finetune", ["--epochs", "many"]) == 2
    message = capsys.readouterr().err
    assert message.startswith("lesion finetune: error: ") and "epochs" in message and message.count("\n") == 1


@pytest.mark.parametrize("entry", ["tune", "predict", "export", "report", "sweep"])
def test_single_process_entry_points_refuse_more_processes(entry, capsys):
    assert main(["launch", entry, "--num_processes", "2", "--"]) == 2
    message = capsys.readouterr().err
    assert message.startswith("lesion launch: error: num_processes=2: ") and message.count("\n") == 1


def test_a_full_disk_is_one_line_and_other_crashes_keep_their_traceback(monkeypatch, capsys):
    import errno

    def disk_full_inside_a_library(cfg):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as err:
            raise RuntimeError("Error while serializing") from err

    monkeypatch.setattr(lesion.finetune, "run_finetune", disk_full_inside_a_library)
    assert run_entry_point("finetune", ["--output_dir", "/big/disk"]) == 2
    message = capsys.readouterr().err
    assert message.startswith("lesion finetune: error: the disk is full") and message.count("\n") == 1
    assert "output_dir=/big/disk" in message and "run the same command again" in message

    def a_bug(cfg):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(lesion.finetune, "run_finetune", a_bug)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        run_entry_point("finetune", [])


def test_a_command_refused_under_mlflow_run_leaves_no_empty_run(tracking, tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment = client.create_experiment("refused")
    for argv in (["--epochs", "many"], ["--data", "/no/such/folder", "--output_dir", str(tmp_path)]):
        env_run = client.create_run(experiment).info.run_id  # what mlflow run opens before the command starts
        monkeypatch.setenv("MLFLOW_RUN_ID", env_run)
        assert run_entry_point("finetune", argv) == 2
        err = capsys.readouterr().err  # (and the new store's "Creating initial MLflow database tables" lines)
        assert err.splitlines()[-1].startswith("lesion finetune: error: ") and "Traceback" not in err
        assert client.get_run(env_run).info.lifecycle_stage == "deleted", argv
    assert not client.search_runs([experiment])


def test_an_abbreviated_option_is_refused(capsys):
    with pytest.raises(SystemExit) as done:
        run_entry_point("finetune", ["--epoch", "1"])
    assert done.value.code == 2
    assert "unrecognized arguments: --epoch 1" in capsys.readouterr().err


@pytest.mark.parametrize("stop, code, how", [(signal.SIGTERM, 143, "stopped by SIGTERM"),
                                             (signal.SIGINT, 130, "interrupted by Ctrl-C (SIGINT)")])
def test_an_interrupt_is_one_line_and_its_run_ends_killed(stop, code, how, tracking, monkeypatch, capsys,
                                                          ctrl_c_enabled):
    """kill, docker stop or a scheduler's pre-emption (SIGTERM), or Ctrl-C: no traceback, and no run left RUNNING."""
    from mlflow.tracking import MlflowClient

    from lesion.tracking import Tracker

    def interrupted_training(cfg):
        with Tracker().run("finetune", "stopped", "interrupts"):
            os.kill(os.getpid(), stop)
            time.sleep(30)  # the signal ends this at once
            pytest.fail("the signal must stop the command")

    monkeypatch.setattr(lesion.finetune, "run_finetune", interrupted_training)
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    assert run_entry_point("finetune", []) == code
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith(f"lesion finetune: {how}; ") and "Traceback" not in err
    assert "resumes" in err.splitlines()[-1]
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("interrupts").experiment_id])
    assert [r.info.status for r in runs] == ["KILLED"]
    assert {sig: signal.getsignal(sig) for sig in before} == before, "lesion's handlers live only while its command runs"
