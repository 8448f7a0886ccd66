"""Shared fixtures: every test gets its own MLflow store; the preprocessing cache is shared per session;
a throwaway PostgreSQL server for the distributed tests.

Two tiers. `make test` runs `pytest -m "not slow"`: the unit tests and one end-to-end test per entry point,
the cheapest that runs it whole through its function:

    finetune  test_finetune.py::test_a_run_that_ends_early_still_logs_its_final_picture
    evaluate  test_degenerate_reporting.py::test_evaluate_reports_the_share_of_degenerate_masks
    predict   test_predict.py::test_predict_keeps_sub_folders_so_names_never_collide
    pretrain  test_pretrain.py::test_pretraining_lowers_its_loss_logs_and_registers_the_encoder
    selftrain selftrain/test_selftrain.py::test_a_student_can_start_from_its_teacher
    export    test_export_and_serving.py::test_onnx_export_matches_torch_and_predicts
    sweep, report  test_report.py::test_sweep_then_report
    tune      tuning/test_study.py::test_pruned_and_failed_trials_do_not_stop_the_study

`make test-all` (CI) runs every test. `@pytest.mark.slow` marks the rest of what takes time: multi-process
launches, `mlflow run`, kill -9 resumes, PostgreSQL, the non-editable install and further trainings.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lesion-cache")


@pytest.fixture
def tracking(tmp_path, monkeypatch, cache_dir) -> str:
    """A fresh sqlite MLflow store in tmp_path, made current for this test (and its subprocesses)."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.setenv("LESION_CACHE_DIR", str(cache_dir))
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_RUN_ID", None)
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_server() -> Callable[[str], str]:
    """A throwaway PostgreSQL server on loopback, owned by the postgres user: database name -> a new database's URL.

    Missing PostgreSQL skips the test, except under CI (CI=1), where it fails.
    """
    bin_dir = next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin"))), None)
    if bin_dir is None or shutil.which("runuser") is None:
        message = "PostgreSQL is not installed (make test installs Debian's postgresql package where it can)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    # pytest's tmp folders are private to root; the server runs as postgres in a folder of its own.
    pg = Path(tempfile.mkdtemp(prefix="lesion-pg-"))
    shutil.chown(pg, "postgres")
    port = free_port()
    as_pg = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_pg, f"{bin_dir}/initdb", "-D", str(pg / "data"), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    subprocess.run([*as_pg, f"{bin_dir}/pg_ctl", "-D", str(pg / "data"), "-l", str(pg / "log"), "-w", "start",
                    "-o", f"-p {port} -k {pg} -c listen_addresses=127.0.0.1"], check=True, capture_output=True)

    def database(name: str) -> str:
        subprocess.run([*as_pg, f"{bin_dir}/createdb", "-h", "127.0.0.1", "-p", str(port), name], check=True,
                       capture_output=True)
        return f"postgresql+psycopg2://postgres@127.0.0.1:{port}/{name}"

    try:
        yield database
    finally:
        subprocess.run([*as_pg, f"{bin_dir}/pg_ctl", "-D", str(pg / "data"), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(pg, ignore_errors=True)


@pytest.fixture
def postgres(postgres_server) -> str:
    """An empty `optuna` database on a throwaway PostgreSQL server."""
    return postgres_server("optuna")


@pytest.fixture
def ctrl_c_enabled():
    """Ctrl-C raises KeyboardInterrupt, as in a terminal, also where the tests run as a background job (`nohup
    .ci/run &`: SIGINT ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)
