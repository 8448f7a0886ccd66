"""The MLflow registry (lesion/registry.py): URIs to folders, one copy of logged weights on a local disk, encoder
versions registered once, and the champion gate that re-scores the champion before it moves."""

from __future__ import annotations

import os

import pytest
from mlflow.tracking import MlflowClient

from lesion import registry
from lesion.config import ENCODER, SEGMENTER
from lesion.errors import ConfigError
from lesion.finetune import run_finetune
from lesion.tracking import Tracker
from tests.test_finetune import tiny_config


def test_a_missing_model_or_alias_is_none_not_an_error(tracking):
    assert registry.alias_version(SEGMENTER, "champion") is None
    MlflowClient().create_registered_model(SEGMENTER)
    assert registry.alias_version(SEGMENTER, "champion") is None


@pytest.mark.parametrize("source, says", [("no/such/folder", "no such model folder or URI"),
                                          ("models:/lesion-segmenter@nobody", "cannot load models:/lesion-segmenter@nobody")])
def test_a_source_that_is_not_there_is_one_line(source, says, tracking):
    with pytest.raises(ConfigError, match=says) as err:
        registry.resolve_artifact_dir(source)
    assert "\n" not in str(err.value)


def test_an_encoder_is_registered_once_and_shares_its_bytes_with_the_logged_copy(tmp_path, tracking):
    folder = tmp_path / "encoder"
    folder.mkdir()
    (folder / "encoder.safetensors").write_bytes(os.urandom(2 << 20))
    (folder / "meta.json").write_text("{}")
    with Tracker().run("pretrain", "ssl-a", "registry") as tracker:
        version = registry.register_encoder(tracker, folder, {"encoder": "resnet18"})
        assert registry.register_encoder(tracker, folder, {"encoder": "resnet18"}) == version, "never twice"
    assert str(registry.alias_version(ENCODER, "ssl").version) == version
    assert len(MlflowClient().search_model_versions(f"name='{ENCODER}'")) == 1
    assert (folder / "encoder.safetensors").stat().st_nlink == 2, "the local store holds the weights once"
    with registry.artifact_dir(f"models:/{ENCODER}@ssl") as downloaded:
        assert (downloaded / "encoder.safetensors").read_bytes() == (folder / "encoder.safetensors").read_bytes()
    assert not downloaded.exists(), "a download for one read is deleted after it"


def test_a_remote_or_unknown_location_is_left_as_it_is(tmp_path, tracking):
    (tmp_path / "big.bin").write_bytes(b"0" * (2 << 20))
    assert registry.share_logged_copy(tmp_path, "runs:/0123456789abcdef/model") == 0
    assert registry.share_logged_copy(tmp_path, "s3://bucket/model") == 0
    assert (tmp_path / "big.bin").stat().st_nlink == 1


@pytest.mark.slow
def test_champion_gate_rescores_the_champion_on_the_candidates_validation_images(tmp_path, tracking):
    # A barely trained champion whose registered score (from "other data") looks unbeatable.
    weak = run_finetune(tiny_config(tmp_path / "a", data="synthetic:n=40,size=64,seed=7", run_name="weak",
                                    max_steps=1, epochs=1))
    client = MlflowClient()
    client.set_model_version_tag("lesion-segmenter", weak["version"], "val_jaccard", "0.99")

    strong = run_finetune(tiny_config(tmp_path / "b", run_name="strong"))
    gate = strong["champion"]
    assert gate["champion_version"] == weak["version"]
    assert gate["champion_registered_val_jaccard"] == pytest.approx(0.99)
    assert gate["champion_val_jaccard"] < 0.99, "the champion must be re-scored on these images, not trusted"
    assert gate["promoted"] and gate["candidate_val_jaccard"] > gate["champion_val_jaccard"]
    assert str(client.get_model_version_by_alias("lesion-segmenter", "champion").version) == strong["version"]

    # And a worse candidate on the same images does not move it.
    worse = run_finetune(tiny_config(tmp_path / "c", run_name="worse", max_steps=1, epochs=1))
    assert not worse["champion"]["promoted"]
    assert worse["champion"]["champion_val_jaccard"] == pytest.approx(strong["val_jaccard"], abs=1e-6)
    assert str(client.get_model_version_by_alias("lesion-segmenter", "champion").version) == strong["version"]
