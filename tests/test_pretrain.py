"""SSL pretraining end to end: the loss falls, the encoder is registered, fine-tuning loads it 1:1, crashes resume."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image
from safetensors.torch import load_file

import lesion.train.engine as engine_module
from lesion.cli import run_entry_point
from lesion.config import FinetuneConfig, PretrainConfig, from_flat
from lesion.errors import ConfigError
from lesion.registry import artifact_dir
from lesion.finetune import build_initialised_model, run_finetune
from lesion.pretrain import run_pretrain
from lesion.tracking import Tracker
from tests.conftest import REPO, subprocess_env

DATA = "synthetic:n=16,size=64"  # 13 training images: 3 steps of 4 per epoch
TINY = {"data": DATA, "image_size": 64, "epochs": 2, "batch_size": 4, "picture_every": 1}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow store, artifact root and cache for the module: the pretrain run is shared by its tests."""
    root = tmp_path_factory.mktemp("ssl")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # a sqlite store puts artifacts in ./mlruns
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("LESION_CACHE_DIR", str(root / "cache"))
        mp.delenv("MLFLOW_RUN_ID", raising=False)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        yield root
    shutil.rmtree(root, ignore_errors=True)  # ~1.4 GB of checkpoints; tmp_path retention does not cover module fixtures


def config(root, **overrides) -> PretrainConfig:
    return from_flat(PretrainConfig, {**TINY, "output_dir": str(root / "out"), "cache_dir": str(root / "cache"),
                                      **overrides})


@pytest.fixture(scope="module")
def pretrained(store):
    return run_pretrain(config(store, run_name="ssl"))


def test_pretraining_lowers_its_loss_logs_and_registers_the_encoder(pretrained, store):
    history = pretrained["history"]
    assert [h["epoch"] for h in history] == [0, 1]
    assert history[-1]["pretrain/loss"] < history[0]["pretrain/loss"]

    client = MlflowClient()
    run = client.get_run(pretrained["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["grid"] == "3"
    for key in ("pretrain/loss", "pretrain/reconstruction", "pretrain/invariance", "pretrain/tile_invariance",
                "pretrain/place", "pretrain/place_accuracy"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [0, 1], key
    assert all(0 <= h["pretrain/place_accuracy"] <= 1 for h in history)
    artifacts = {a.path for path in ("", "pictures", "plots", "encoder", "data", "plan")
                 for a in client.list_artifacts(run.info.run_id, path)}
    assert {"pictures/puzzles_epoch_001.png", "pictures/puzzles_epoch_002.png", "plots/pretrain_curves.png",
            "encoder/encoder.safetensors", "encoder/encoder.json", "data/manifest.csv", "plan/plan.json"} <= artifacts

    # image | puzzle | reconstruction | tiles where the network places them, one row per shown image
    shown = np.asarray(Image.open(client.download_artifacts(run.info.run_id, "pictures/puzzles_epoch_002.png",
                                                            str(store))))
    assert shown.shape[1] == 4 * 64 and 4 * 64 < shown.shape[0] < 5 * 64, "4 images under a band of column titles"

    workdir = store / "out" / "pretrain" / "ssl"
    assert not (workdir / "state").exists(), "a finished pretraining keeps its encoder, not its resume state"
    assert (workdir / "encoder" / "encoder.safetensors").stat().st_nlink == 2, "one copy with the logged encoder"

    plan = json.loads((store / "out" / "pretrain" / "ssl" / "plan.json").read_text())
    assert plan["pretrain_splits"] == ["train", "unlabeled"]
    assert plan["pretrain_images"] == pretrained["images"] == plan["data_summary"]["train_labelled"] < 16, "no val"

    version = client.get_model_version_by_alias("lesion-encoder", "ssl")
    assert str(version.version) == pretrained["version"] and version.run_id == run.info.run_id
    expected = {"encoder": "resnet18", "data": DATA, "image_size": "64", "epochs": "2", "parent_run": run.info.run_id}
    assert {k: version.tags.get(k) for k in expected} == expected
    for uri in ("models:/lesion-encoder/latest", "models:/lesion-encoder@ssl"):
        with artifact_dir(uri) as folder:
            assert json.loads((folder / "encoder.json").read_text())["encoder"] == "tu-resnet18"
            assert (folder / "encoder.safetensors").is_file()
        assert not folder.exists(), "a downloaded copy must not be left in the temp folder"


@pytest.mark.slow
def test_finetuning_from_the_uri_loads_every_encoder_tensor(pretrained, store):
    with artifact_dir("models:/lesion-encoder/latest") as folder:
        logged = load_file(str(folder / "encoder.safetensors"))
    base = {"data": DATA, "image_size": 64, "encoder_init": "models:/lesion-encoder/latest"}
    for arch in ("unet", "pspnet", "deeplabv3plus"):  # PSPNet's encoder has 3 stages: it takes that subset
        model = build_initialised_model(from_flat(FinetuneConfig, {**base, "arch": arch}), Tracker(enabled=False))
        state = model.encoder.state_dict()
        assert state and all(torch.equal(v, logged[k]) for k, v in state.items()), arch
        assert arch == "pspnet" or state.keys() == logged.keys()

    out = run_finetune(from_flat(FinetuneConfig, {**base, "epochs": 1, "max_steps": 1, "register": False,
                                                  "encoder_init": "models:/lesion-encoder@ssl", "run_name": "from-ssl",
                                                  "output_dir": str(store / "out"), "cache_dir": str(store / "cache")}))
    tags = MlflowClient().get_run(out["run_id"]).data.tags
    assert tags["lesion.init.loaded"] == "encoder" and tags["lesion.init.tensors"] == str(len(logged))


def test_a_mismatched_encoder_is_a_clear_error(pretrained):
    cfg = from_flat(FinetuneConfig, {"data": DATA, "encoder": "resnet34", "encoder_init": "models:/lesion-encoder/latest"})
    with pytest.raises(ConfigError, match="holds a tu-resnet18 encoder but this model uses tu-resnet34"):
        build_initialised_model(cfg, Tracker(enabled=False))


class Crash(Exception):
    pass


@pytest.mark.parametrize("queue_size", [0, 8])
@pytest.mark.slow
def test_a_crashed_pretraining_resumes_its_run_with_the_same_losses(pretrained, store, monkeypatch, queue_size):
    reference = pretrained if queue_size == 0 else run_pretrain(
        config(store, run_name=f"reference-q{queue_size}", register=False, queue_size=queue_size))
    real_save = engine_module.save_checkpoint

    def crash_after_epoch_1(accelerator, workdir, progress, **kwargs):
        real_save(accelerator, workdir, progress, **kwargs)
        if progress["epoch"] == 0:
            raise Crash("simulated crash after epoch 1")

    name = f"crashy-q{queue_size}"
    monkeypatch.setattr(engine_module, "save_checkpoint", crash_after_epoch_1)
    with pytest.raises(Crash):
        run_pretrain(config(store, run_name=name, register=False, queue_size=queue_size))
    monkeypatch.setattr(engine_module, "save_checkpoint", real_save)
    state = store / "out" / "pretrain" / name / "state"
    assert (state / "extra.safetensors").is_file() and not list(state.glob("custom_checkpoint_*")), \
        "the queue is saved as safetensors: nothing to unpickle on resume"

    resumed = run_pretrain(config(store, run_name=name, register=False, queue_size=queue_size))
    client = MlflowClient()
    assert len(client.search_runs([client.get_run(resumed["run_id"]).info.experiment_id],
                                  f"tags.`lesion.run_name` = '{name}'")) == 1, "the same run, resumed"
    assert [h["pretrain/loss"] for h in resumed["history"]] == pytest.approx(
        [h["pretrain/loss"] for h in reference["history"]], abs=1e-5)
    assert [m.step for m in client.get_metric_history(resumed["run_id"], "pretrain/loss")] == [0, 1]
    assert not state.exists(), "finished: the resume state is dropped"


@pytest.mark.slow
def test_a_crash_after_pretraining_keeps_the_trained_encoder(store, monkeypatch):
    real_finish = engine_module.finish

    def crash_once_finished(*args, **kwargs):
        real_finish(*args, **kwargs)
        raise Crash("simulated crash as the run ends")

    monkeypatch.setattr(engine_module, "finish", crash_once_finished)
    with pytest.raises(Crash):
        run_pretrain(config(store, run_name="late-crash", register=False, epochs=1))
    monkeypatch.setattr(engine_module, "finish", real_finish)
    workdir = store / "out" / "pretrain" / "late-crash"
    assert not (workdir / "state").exists()
    trained = load_file(str(workdir / "encoder" / "encoder.safetensors"))

    resumed = run_pretrain(config(store, run_name="late-crash", register=False, epochs=1))
    assert len(resumed["history"]) == 1
    again = load_file(str(workdir / "encoder" / "encoder.safetensors"))
    assert all(torch.equal(again[k], v) for k, v in trained.items()), "not overwritten by untrained weights"


def test_impossible_settings_fail_before_any_run(store, capsys):
    assert run_entry_point("pretrain", ["--data", DATA, "--image_size", "64", "--grid", "16"]) == 2
    assert "grid=16 at image_size=64 gives 4-px tiles" in capsys.readouterr().err


@pytest.mark.slow
def test_the_pretrain_entry_point_registers_an_encoder(store, tmp_path):
    before = len(MlflowClient().search_model_versions("name='lesion-encoder'"))
    proc = subprocess.run([sys.executable, "pipelines/pretrain.py", "--data", DATA,
                           "--image_size", "64", "--epochs", "1", "--output_dir", str(tmp_path / "out")],
                          env=subprocess_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    versions = MlflowClient().search_model_versions("name='lesion-encoder'")
    assert len(versions) == before + 1
    newest = MlflowClient().get_model_version_by_alias("lesion-encoder", "ssl")
    assert int(newest.version) == max(int(v.version) for v in versions) and newest.tags["epochs"] == "1"


@pytest.mark.slow
def test_pretraining_needs_no_mask_at_all(store, tmp_path):
    from lesion.data.synthetic import generate_one

    pool = tmp_path / "ISIC2019_images"
    pool.mkdir()
    for i in range(6):
        Image.fromarray(generate_one(i, 64, 3)[0]).save(pool / f"ISIC_{i:07d}.jpg")
    out = run_pretrain(config(store, data=f"unlabeled:{pool}", run_name="no-masks", register=False, epochs=1))
    assert out["history"] and np.isfinite(out["history"][0]["pretrain/loss"])
    plan = json.loads((store / "out" / "pretrain" / "no-masks" / "plan.json").read_text())
    assert plan["pretrain_images"] == 6
