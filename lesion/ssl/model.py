"""The jigsaw-invariant auto-encoder.

A U-Net with RGB output reconstructs the original image from its shuffled
puzzle: the decoder sees the puzzle's feature pyramid, so the encoder must
learn where each piece belongs (lesion shape, border, texture). A projection
head on the pooled deepest features gives the embeddings of the image and of
its puzzle for the invariance term. The encoder is the U-Net's encoder:
the very module, with the very tensor names, that fine-tuning builds.
"""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from lesion.models.registry import timm_encoder_name


class JigsawAutoEncoder(nn.Module):
    def __init__(self, encoder: str, projection_dim: int = 128):
        super().__init__()
        self.net = smp.Unet(timm_encoder_name(encoder), encoder_weights=None, classes=3)
        width = self.net.encoder.out_channels[-1]
        self.projector = nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, projection_dim))

    @property
    def encoder(self) -> nn.Module:
        return self.net.encoder

    def embed(self, features: list[torch.Tensor]) -> torch.Tensor:
        return F.normalize(self.projector(features[-1].mean((2, 3))), dim=1)

    def forward(self, image: torch.Tensor, puzzle: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction of image from puzzle, image embedding, puzzle embedding)."""
        puzzle_features = self.net.encoder(puzzle)
        reconstruction = self.net.segmentation_head(self.net.decoder(puzzle_features))
        return reconstruction, self.embed(self.net.encoder(image)), self.embed(puzzle_features)
