"""Bad input gets one clear line and lesion's exit code on every entry path; nothing is read or written wrongly.

CLI cases mostly run `lesion.cli.main` in this process (the very code the console script runs); a
representative few go through the `lesion` script, `lesion launch` (one and two processes) and `mlflow run`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.bad_inputs.conftest import assert_clean_error, run_entry
from tests.conftest import REPO, subprocess_env

DATA = "synthetic:n=24,size=64,seed=5"
SLOW = pytest.mark.slow
ACCELERATE_NOTICE = "were not passed to `accelerate launch`"


def cli(argv: list[str], capsys) -> subprocess.CompletedProcess:
    """`lesion ARGV` in this process, as a CompletedProcess for assert_clean_error."""
    from lesion.cli import main

    code = main(argv)
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(["lesion", *argv], code, captured.out, captured.err)


def assert_launched_cleanly(proc: subprocess.CompletedProcess) -> None:
    output = proc.stdout + proc.stderr
    assert ACCELERATE_NOTICE not in output and "CalledProcessError" not in output, output[-3000:]
    assert "ChildFailedError" not in output and "exitcode" not in output, output[-3000:]


# --------------------------------------------------------------------------- 1. one line through every entry path


@pytest.mark.parametrize("via", ["cli", pytest.param("launch", marks=SLOW), pytest.param("launch:2", marks=SLOW),
                                 pytest.param("mlflow", marks=SLOW)])
def test_a_negative_seed_is_one_line_with_lesions_exit_code_on_every_path(via, tmp_path, tracking):
    proc = run_entry(via, "finetune", {"data": DATA, "seed": -1, "output_dir": tmp_path / "out"}, tmp_path)
    assert_clean_error(proc, "finetune", r"parameter seed=-1 must be an integer in \[0, \d+\]")
    assert_launched_cleanly(proc)


@pytest.mark.parametrize("via", [pytest.param("launch:2", marks=SLOW), pytest.param("mlflow", marks=SLOW)])
def test_an_error_on_the_main_rank_alone_is_one_line(via, tmp_path, tracking):
    """Only rank 0 discovers the data; rank 1 waits at a barrier that breaks when rank 0 exits."""
    proc = run_entry(via, "finetune", {"data": tmp_path / "missing", "output_dir": tmp_path / "out"}, tmp_path)
    assert_clean_error(proc, "finetune", r"missing: no such folder")
    assert_launched_cleanly(proc)


@SLOW
def test_a_usage_error_of_every_rank_is_printed_once(tmp_path, tracking):
    proc = run_entry("launch:2", "finetune", {"bogus": 1, "output_dir": tmp_path / "out"}, tmp_path)
    assert_clean_error(proc, "finetune", r"unrecognized arguments: --bogus 1; see lesion finetune --help")
    assert "usage:" not in proc.stderr


def test_an_int_written_as_mlflow_writes_floats_is_read(tmp_path, capsys):
    from lesion.cli import entry_parser
    from lesion.config import FinetuneConfig, from_args

    cfg = from_args(FinetuneConfig, entry_parser("finetune").parse_args(["--epochs", "3.0", "--seed", "7.0"]))
    assert (cfg.train.epochs, cfg.run.seed) == (3, 7)
    proc = cli(["finetune", "--epochs", "2.5"], capsys)
    assert_clean_error(proc, "finetune", r"parameter epochs='2.5' is not a valid int")


@SLOW
def test_a_successful_launch_prints_no_accelerate_notice(tmp_path, tracking):
    proc = run_entry("launch", "finetune", {"data": DATA, "epochs": 1, "max_steps": 1, "register": "false",
                                            "output_dir": tmp_path / "out"}, tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert_launched_cleanly(proc)


def test_the_launcher_runs_the_cli_module_with_every_value_accelerate_would_default():
    from lesion.launch import accelerate_args

    for n in (1, 2):
        argv = accelerate_args("finetune", n, ["--epochs", "1"])
        assert argv[-5:] == ["-m", "lesion.cli", "finetune", "--epochs", "1"], "no path to a checkout's pipelines/"
        for flag in ("--num_processes", "--num_machines", "--mixed_precision", "--dynamo_backend"):
            assert flag in argv


@pytest.mark.parametrize("via", ["cli", pytest.param("mlflow", marks=SLOW)])
def test_a_timm_encoder_smp_cannot_use_is_one_line(via, tmp_path, tracking):
    proc = run_entry(via, "finetune", {"data": DATA, "encoder": "vit_tiny_patch16_224", "epochs": 1,
                                       "output_dir": tmp_path / "out"}, tmp_path)
    assert_clean_error(proc, "finetune", r"encoder='vit_tiny_patch16_224' is a timm model smp cannot build a unet "
                                         r"from \(Unsupported model downsampling pattern")


@pytest.mark.parametrize("argv", [
    ["finetune", "--encoder", "hf-hub:timm/resnet18.a1_in1k"],
    ["selftrain", "--student_encoder", "hf_hub:timm/resnet18.a1_in1k"],
    ["pretrain", "--encoder", "tu-hf-hub:timm/resnet18.a1_in1k"],
])
def test_a_hugging_face_hub_encoder_is_refused_before_anything_downloads(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # unfixed code fails in timm's download at once, not after retries
    proc = cli([*argv, "--data", DATA, "--output_dir", str(tmp_path / "out")], capsys)
    assert_clean_error(proc, argv[0], r"encoder='t?u?-?hf[-_]hub:timm/resnet18.a1_in1k' must be a timm model name .*"
                                      r"not a Hugging Face Hub id")
