"""Named builders: every smp architecture with any timm encoder.

Encoders are always timm encoders through smp's `tu-` bridge, so the encoder
that SSL pretraining learns and the one a segmenter fine-tunes are the same
module with the same tensor names, for every architecture.
"""

from __future__ import annotations

from typing import Callable

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from lesion.config import ModelConfig
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


def build_model(config: ModelConfig, pretrained_imagenet: bool = False) -> LesionSegmenter:
    """The segmenter for config, randomly initialised unless pretrained_imagenet (downloads)."""
    if config.arch not in ARCHITECTURES:
        raise ConfigError(f"arch={config.arch!r} is unknown; use one of {', '.join(sorted(ARCHITECTURES))}")
    kwargs = {"drop_path_rate": config.drop_path} if config.drop_path > 0 else {}
    try:
        net = ARCHITECTURES[config.arch](timm_encoder_name(config.encoder), "imagenet" if pretrained_imagenet else None,
                                         **kwargs)
    except (RuntimeError, KeyError, ValueError) as err:
        if "Unknown model" in str(err) or "not found" in str(err).lower():
            raise ConfigError(f"encoder={config.encoder!r} is not a timm model (lesion uses timm encoders through smp's "
                              "tu- bridge, so SSL and fine-tuning share one encoder; list them with "
                              "timm.list_models()); try resnet18, resnet34, resnet50 or convnext_tiny") from None
        raise
    return LesionSegmenter(net, config)


def build_encoder(encoder: str, drop_path: float = 0.0) -> nn.Module:
    """The bare encoder a U-Net with this encoder has (depth 5), for SSL pretraining."""
    kwargs = {"drop_path_rate": drop_path} if drop_path > 0 else {}
    return smp.Unet(timm_encoder_name(encoder), encoder_weights=None, classes=1, **kwargs).encoder
