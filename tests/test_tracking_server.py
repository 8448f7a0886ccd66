"""A team's set-up: `mlflow server` on PostgreSQL with proxied artifacts; workers and users only know its URL."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import optuna
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import free_port, subprocess_env

BIN = Path(sys.executable).parent
DATA = "synthetic:n=24,size=64,seed=5"
TINY = ["--data", DATA, "--label_fraction", "0.5", "--epochs", "1", "--batch_size", "8", "--tta", "false"]


@pytest.fixture
def tracking_server(tmp_path, postgres_server, cache_dir, monkeypatch):
    """`mlflow server` on loopback: runs and registry in PostgreSQL, artifacts proxied into a folder of its own."""
    backend = postgres_server("mlflow")
    artifacts, home = tmp_path / "server-artifacts", tmp_path / "server"
    home.mkdir()
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen([str(BIN / "mlflow"), "server", "--backend-store-uri", backend, "--serve-artifacts",
                               "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port),
                               "--workers", "1"], cwd=home, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                if urllib.request.urlopen(f"{uri}/health", timeout=5).read().strip() == b"OK":
                    break
            except OSError:
                pass
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.time() < deadline, "mlflow server did not answer /health:\n" + (tmp_path / "server.log").read_text()[-3000:]
            time.sleep(1)
        for name, value in (("MLFLOW_TRACKING_URI", uri), ("LESION_CACHE_DIR", str(cache_dir))):
            monkeypatch.setenv(name, value)
        for name in ("MLFLOW_RUN_ID", "MLFLOW_REGISTRY_URI"):
            monkeypatch.delenv(name, raising=False)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        yield uri, artifacts
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def lesion(args: list[str], cwd: Path, log: Path) -> str:
    """Run the lesion CLI as a worker does (output to a file, as under nohup); returns the log."""
    cwd.mkdir(exist_ok=True)
    with open(log, "w") as fh:
        code = subprocess.run([str(BIN / "lesion"), *args], cwd=cwd, env=subprocess_env(), stdout=fh,
                              stderr=subprocess.STDOUT, timeout=900).returncode
    text = log.read_text()
    assert code == 0, f"lesion {' '.join(args)} failed ({code}):\n{text[-4000:]}"
    return text


@pytest.mark.slow
def test_selftrain_and_tune_against_a_server_then_predict_from_anywhere(tmp_path, tracking_server, postgres_server,
                                                                       cache_dir):
    uri, artifacts = tracking_server
    worker, out = tmp_path / "worker", tmp_path / "worker" / "outputs"
    log = lesion(["selftrain", *TINY, "--iterations", "1", "--min_confidence", "0.5", "--run_name", "team",
                  "--output_dir", str(out)], worker, tmp_path / "selftrain.log")
    assert "\r" not in log, "a worker's log has lines, not progress bars"
    optuna_db = postgres_server("optuna")
    lesion(["tune", *TINY, "--storage", optuna_db, "--study", "team", "--n_trials", "1", "--trial_epochs", "1",
            "--pruner", "none", "--space", '{"min_confidence": [0.0, 0.3]}', "--output_dir", str(out)],
           worker, tmp_path / "tune.log")

    client = MlflowClient()
    champion = client.get_model_version_by_alias("lesion-segmenter", "champion")
    assert champion.tags["role"] in ("teacher", "student")
    assert [t.state for t in optuna.load_study(study_name="team", storage=optuna_db).trials] == [
        optuna.trial.TrialState.COMPLETE]
    study_runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                    "tags.`lesion.study` = 'team'")
    assert len(study_runs) == 1, "the tune worker logged to the server too"
    assert not (worker / "mlruns").exists() and not (worker / "mlflow.db").exists(), "nothing tracked locally"
    assert list(artifacts.rglob("model.safetensors")), "the server holds the models"
    assert not list(out.rglob("state")), "finished stages keep no resume state"

    # Another machine, another user: a fresh folder that knows only the server's URL.
    fresh = tmp_path / "elsewhere"
    images = fresh / "images"
    images.mkdir(parents=True)
    for image in sorted((cache_dir / "synthetic" / "synthetic-n24-size64-seed5" / "images").glob("*.png"))[:3]:
        shutil.copy(image, images)
    lesion(["predict", "--model", "models:/lesion-segmenter@champion", "--input", str(images),
            "--out", str(fresh / "masks")], fresh, tmp_path / "predict.log")
    assert sorted(p.name for p in (fresh / "masks").glob("*_segmentation.png")) == [
        f"{p.stem}_segmentation.png" for p in sorted(images.glob("*.png"))]
    assert not (fresh / "mlruns").exists() and not (fresh / "mlflow.db").exists()
