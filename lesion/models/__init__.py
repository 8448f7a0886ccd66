"""Segmentation models: named builders, encoder initialisation, safetensors I/O (local folders; no MLflow).

    from lesion.models import build_model
    model = build_model(ModelConfig(arch="unet", encoder="resnet18"))
"""

from lesion.models.registry import ARCHITECTURES, LesionSegmenter, build_encoder, build_model, timm_encoder_name
from lesion.models.io import load_model, save_model

__all__ = [
    "ARCHITECTURES", "LesionSegmenter", "build_encoder", "build_model", "timm_encoder_name",
    "load_model", "save_model",
]
