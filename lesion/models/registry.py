"""Named builders: every smp architecture with any timm encoder.

Encoders are always timm encoders through smp's `tu-` bridge, so the encoder
that SSL pretraining learns and the one a segmenter fine-tunes are the same
module with the same tensor names, for every architecture.
"""

from __future__ import annotations

from typing import Callable

import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn.functional as F
from torch import nn

from lesion.config import ModelConfig, hub_model
from lesion.errors import ConfigError

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {}


def register_arch(name: str):
    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        ARCHITECTURES[name] = builder
        return builder
    return wrap


@register_arch("unet")
def _unet(encoder: str, weights: str | None, **kw) -> nn.Module:
    return smp.Unet(encoder, encoder_weights=weights, classes=1, **kw)


@register_arch("pspnet")
def _pspnet(encoder: str, weights: str | None, **kw) -> nn.Module:
    return smp.PSPNet(encoder, encoder_weights=weights, classes=1, **kw)


@register_arch("deeplabv3")
def _deeplabv3(encoder: str, weights: str | None, **kw) -> nn.Module:
    return smp.DeepLabV3(encoder, encoder_weights=weights, classes=1, **kw)


@register_arch("deeplabv3plus")
def _deeplabv3plus(encoder: str, weights: str | None, **kw) -> nn.Module:
    return smp.DeepLabV3Plus(encoder, encoder_weights=weights, classes=1, **kw)


def timm_encoder_name(encoder: str) -> str:
    """'resnet18' -> 'tu-resnet18' (smp's bridge to timm); 'tu-...' is kept."""
    return encoder if encoder.startswith("tu-") else f"tu-{encoder}"


class LesionSegmenter(nn.Module):
    """An smp model plus the student's channel dropout; returns logits (B, 1, H, W)."""

    def __init__(self, net: nn.Module, config: ModelConfig):
        super().__init__()
        self.net = net
        self.config = config
        if config.dropout > 0:
            # A hook keeps the state-dict names identical with and without dropout.
            net.segmentation_head.register_forward_pre_hook(
                lambda module, args: (F.dropout2d(args[0], config.dropout, training=module.training),)
            )

    @property
    def encoder(self) -> nn.Module:
        return self.net.encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _check_local(encoder: str) -> None:
    # Also for a model.json's encoder: loading a model never downloads either.
    if hub_model(encoder):
        raise ConfigError(f"encoder={encoder!r} is a Hugging Face Hub model, which timm downloads even to build it "
                          "randomly initialised; lesion never downloads a model definition: use a timm model name such "
                          "as resnet18 or resnet34.a1_in1k (encoder_init=imagenet downloads its weights)")


def _smp_build(build: Callable[[], nn.Module], encoder: str, what: str) -> nn.Module:
    """build(), after checking that encoder is a timm model, with smp's refusals of it turned into one line."""
    _check_local(encoder)
    try:
        known = timm.is_model(encoder.removeprefix("tu-"))
    except Exception:  # timm cannot even parse the name
        known = False
    if not known:
        raise ConfigError(f"encoder={encoder!r} is not a timm model (lesion uses timm encoders through smp's "
                          "tu- bridge, so SSL and fine-tuning share one encoder; list them with "
                          "timm.list_models()); try resnet18, resnet34, resnet50 or convnext_tiny")
    try:
        return build()
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, AssertionError, NotImplementedError) as err:
        # e.g. a ViT: "Unsupported model downsampling pattern" (smp needs a feature pyramid)
        text = " ".join(str(err).split())[:200] or type(err).__name__
        raise ConfigError(f"encoder={encoder!r} is a timm model smp cannot build {what} from ({text}); use an "
                          "encoder with a feature pyramid such as resnet18, resnet34, convnext_tiny or "
                          "efficientnet_b0") from None


def build_model(config: ModelConfig, pretrained_imagenet: bool = False) -> LesionSegmenter:
    """The segmenter for config, randomly initialised unless pretrained_imagenet (downloads)."""
    if config.arch not in ARCHITECTURES:
        raise ConfigError(f"arch={config.arch!r} is unknown; use one of {', '.join(sorted(ARCHITECTURES))}")
    kwargs = {"drop_path_rate": config.drop_path} if config.drop_path > 0 else {}
    net = _smp_build(lambda: ARCHITECTURES[config.arch](timm_encoder_name(config.encoder),
                                                        "imagenet" if pretrained_imagenet else None, **kwargs),
                     config.encoder, f"a {config.arch}")
    return LesionSegmenter(net, config)


def build_encoder(encoder: str, drop_path: float = 0.0) -> nn.Module:
    """The bare encoder a U-Net with this encoder has (depth 5), for SSL pretraining."""
    kwargs = {"drop_path_rate": drop_path} if drop_path > 0 else {}
    return _smp_build(lambda: smp.Unet(timm_encoder_name(encoder), encoder_weights=None, classes=1, **kwargs),
                      encoder, "an encoder").encoder
