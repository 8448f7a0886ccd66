"""SSL pretraining end to end: the loss falls, the encoder is registered, and fine-tuning loads it 1:1."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from lesion.config import FinetuneConfig, PretrainConfig, from_flat
from lesion.errors import ConfigError
from lesion.models.io import resolve_artifact_dir
from lesion.ssl.pretrain import run_pretrain
from lesion.tracking import Tracker
from lesion.train.finetune import build_initialised_model
from tests.conftest import subprocess_env

DATA = "synthetic:n=24,size=64,seed=4"


@pytest.fixture
def pretrained(tmp_path, tracking):
    cfg = from_flat(PretrainConfig, {"data": DATA, "epochs": 4, "batch_size": 8, "lr": 2e-3,
                                     "output_dir": str(tmp_path / "out"), "run_name": "ssl"})
    return run_pretrain(cfg)


def test_pretraining_lowers_its_loss_and_registers_the_encoder(pretrained):
    losses = [h["pretrain/loss"] for h in pretrained["history"]]
    assert losses[-1] < losses[0]
    client = MlflowClient()
    version = client.get_model_version_by_alias("lesion-encoder", "ssl")
    assert version.tags["encoder"] == "resnet18" and version.run_id == pretrained["run_id"]
    pictures = [a.path for a in client.list_artifacts(pretrained["run_id"], "pictures")]
    assert pictures and all("puzzles_epoch" in p for p in pictures)


@pytest.mark.parametrize("arch", ["unet", "pspnet", "deeplabv3plus"])
def test_finetuning_from_the_uri_loads_every_encoder_tensor(pretrained, tmp_path, arch):
    logged = load_file(str(resolve_artifact_dir("models:/lesion-encoder/latest") / "encoder.safetensors"))
    cfg = from_flat(FinetuneConfig, {"data": DATA, "arch": arch, "encoder_init": "models:/lesion-encoder@ssl"})
    model = build_initialised_model(cfg, Tracker(enabled=False))
    state = model.encoder.state_dict()
    assert state and all(torch.equal(v, logged[k]) for k, v in state.items())


def test_a_mismatched_encoder_is_a_clear_error(pretrained):
    cfg = from_flat(FinetuneConfig, {"data": DATA, "encoder": "resnet34", "encoder_init": "models:/lesion-encoder/latest"})
    with pytest.raises(ConfigError, match="holds a tu-resnet18 encoder but this model uses tu-resnet34"):
        build_initialised_model(cfg, Tracker(enabled=False))


@pytest.mark.slow
def test_pretrain_entry_point_then_finetune_from_it(tmp_path, tracking):
    out = str(tmp_path / "out")
    for cmd in (["pipelines/pretrain.py", "--data", DATA, "--epochs", "1", "--output_dir", out],
                ["pipelines/finetune.py", "--data", DATA, "--epochs", "1", "--output_dir", out,
                 "--encoder_init", "models:/lesion-encoder@ssl", "--run_name", "from-ssl"]):
        proc = subprocess.run([sys.executable, *cmd], env=subprocess_env(), capture_output=True, text=True,
                              cwd=str(__import__("tests.conftest").conftest.REPO), timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    client = MlflowClient()
    run = client.search_runs([e.experiment_id for e in client.search_experiments()],
                             "tags.`lesion.run_name` = 'from-ssl'")[0]
    assert run.data.tags["lesion.init.loaded"] == "encoder"
    assert run.data.tags["lesion.init.source"] == "models:/lesion-encoder@ssl"
