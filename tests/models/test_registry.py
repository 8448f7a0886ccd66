import pytest
import torch
from safetensors.torch import load_file

from lesion.config import ModelConfig
from lesion.errors import ConfigError
from lesion.models import ARCHITECTURES, build_encoder, build_model, load_model, save_model
from lesion.models.io import init_encoder, save_encoder


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_builds_and_keeps_resolution(arch):
    model = build_model(ModelConfig(arch=arch)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 96)).shape == (2, 1, 64, 96)


def test_noise_knobs_do_not_change_tensor_names():
    plain = build_model(ModelConfig())
    noisy = build_model(ModelConfig(dropout=0.3, drop_path=0.2))
    assert plain.state_dict().keys() == noisy.state_dict().keys()
    noisy.train()
    x = torch.randn(2, 3, 64, 64)
    assert not torch.equal(noisy(x), noisy(x)), "dropout/drop_path should make training passes stochastic"


def test_unknown_arch_and_encoder_are_clear_errors():
    with pytest.raises(ConfigError, match="arch='segformer' must be one of unet"):
        ModelConfig(arch="segformer")  # checked when made
    changed = ModelConfig()
    changed.arch = "segformer"  # changed after its check: the registry still names it
    with pytest.raises(ConfigError, match="arch='segformer' is unknown"):
        build_model(changed)
    with pytest.raises(ConfigError, match="not a timm model"):
        build_model(ModelConfig(encoder="resnet_does_not_exist"))


def test_save_load_round_trip(tmp_path):
    model = build_model(ModelConfig(arch="deeplabv3plus"))
    save_model(model, tmp_path / "m", image_size=64)
    loaded, meta = load_model(str(tmp_path / "m"))
    assert meta["image_size"] == 64 and meta["arch"] == "deeplabv3plus"
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])


@pytest.mark.parametrize("arch", ["unet", "pspnet", "deeplabv3"])
def test_ssl_encoder_loads_one_to_one_into_every_arch(tmp_path, arch):
    encoder = build_encoder("resnet18")
    with torch.no_grad():
        for p in encoder.parameters():
            p.normal_()
    save_encoder(encoder, "resnet18", tmp_path / "enc")
    model = build_model(ModelConfig(arch=arch))
    info = init_encoder(model, str(tmp_path / "enc"))
    saved = load_file(str(tmp_path / "enc" / "encoder.safetensors"))
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, saved[k]), k
    assert info["tensors"] == len(model.encoder.state_dict())


def test_mismatched_encoder_names_both(tmp_path):
    save_encoder(build_encoder("resnet18"), "resnet18", tmp_path / "enc")
    with pytest.raises(ConfigError, match="tu-resnet18 encoder but this model uses tu-resnet34"):
        init_encoder(build_model(ModelConfig(encoder="resnet34")), str(tmp_path / "enc"))


def test_missing_model_folder_is_clear(tmp_path):
    with pytest.raises(ConfigError, match="no such model folder"):
        load_model(str(tmp_path / "nope"))


def test_continue_from_a_fine_tuned_segmenter(tmp_path):
    trained = build_model(ModelConfig(arch="unet"))
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)
    save_model(trained, tmp_path / "seg", image_size=64)
    same_arch = build_model(ModelConfig(arch="unet"))
    assert init_encoder(same_arch, str(tmp_path / "seg"))["loaded"] == "segmenter"
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in same_arch.state_dict().items())
    other_arch = build_model(ModelConfig(arch="deeplabv3plus"))
    assert init_encoder(other_arch, str(tmp_path / "seg"))["loaded"] == "encoder"
    assert all(torch.equal(v, trained.encoder.state_dict()[k]) for k, v in other_arch.encoder.state_dict().items())
