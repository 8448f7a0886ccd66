"""The jigsaw auto-encoder: the fine-tuning encoder, a light decoder and a projection head.

- encoder: `build_encoder(name)`, the very module (same tensor names) that
  every segmentation architecture builds, so its weights load 1:1;
- decoder: a light U-Net decoder on the encoder's feature pyramid of the
  SHUFFLED puzzle (skips at strides 16, 8, 4, 2; one conv per level) that
  outputs the ORIGINAL image. Skips carry features of misplaced tiles, so only
  an encoding that knows where each tile belongs reconstructs the image;
- projector: MLP on the pooled deepest features -> L2-normalised embedding,
  for the InfoNCE invariance between an image and its puzzle;
- locator: a 1x1 conv on the puzzle's deepest features pooled to one cell per
  tile -> which of the grid x grid places each shown tile came from;
- tile projector: 1x1-conv MLP on the same per-tile cells, of the image and
  of the puzzle -> one L2-normalised embedding per tile, for the tile-level
  invariance (a tile must embed the same in its place and out of it).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lesion.models.registry import build_encoder

DECODER_WIDTHS = (256, 128, 64, 32)  # at strides 16, 8, 4, 2


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class PyramidDecoder(nn.Module):
    """Deepest features, upsampled level by level and fused with each skip, to an RGB image."""

    def __init__(self, channels: list[int], widths: tuple[int, ...] = DECODER_WIDTHS, out_channels: int = 3):
        super().__init__()
        *skips, deepest = channels  # encoder channels from stride 2 to stride 32
        ins = [deepest, *widths[:-1]]
        self.blocks = nn.ModuleList(conv_bn_relu(i + s, w) for i, s, w in zip(ins, reversed(skips), widths))
        self.head = nn.Sequential(conv_bn_relu(widths[-1], widths[-1] // 2), nn.Conv2d(widths[-1] // 2, out_channels, 1))

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        *skips, x = features
        for block, skip in zip(self.blocks, reversed(skips)):
            x = block(torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="nearest"), skip], 1))
        return self.head(F.interpolate(x, size=size, mode="bilinear", align_corners=False))


class JigsawOutput(NamedTuple):
    reconstruction: torch.Tensor  # (B, 3, H, W): the image rebuilt from its puzzle
    z_image: torch.Tensor  # (B, D): pooled embedding of the image
    z_puzzle: torch.Tensor  # (B, D): pooled embedding of its puzzle
    places: torch.Tensor  # (B, grid*grid places, grid, grid): where each puzzle slot's tile belongs
    tiles_image: torch.Tensor  # (B, grid*grid, D): one embedding per place of the image (row-major)
    tiles_puzzle: torch.Tensor  # (B, grid*grid, D): one embedding per slot of the puzzle (row-major)


class JigsawAutoEncoder(nn.Module):
    def __init__(self, encoder: str, projection_dim: int = 128, grid: int = 3):
        super().__init__()
        self.grid = grid
        self.encoder = build_encoder(encoder)
        channels = list(self.encoder.out_channels[1:])  # [0] is the input itself, not a feature
        self.decoder = PyramidDecoder(channels)
        width = channels[-1]
        self.projector = nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, projection_dim))
        self.locator = nn.Conv2d(width, grid * grid, 1)
        self.tile_projector = nn.Sequential(nn.Conv2d(width, width, 1), nn.ReLU(inplace=True),
                                            nn.Conv2d(width, projection_dim, 1))

    def embed(self, deepest: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projector(deepest.mean((2, 3))), dim=1)

    def tile_cells(self, deepest: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) deepest features -> (B, C, grid, grid): one cell per tile, what locator and tile projector read."""
        return F.adaptive_avg_pool2d(deepest, self.grid)

    def solve(self, puzzle: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction, tile place logits) of a puzzle alone: what the pictures show."""
        features = self.encoder(puzzle)[1:]
        return self.decoder(features, puzzle.shape[-2:]), self.locator(self.tile_cells(features[-1]))

    def embed_tiles(self, cells: torch.Tensor) -> torch.Tensor:
        """(B, C, grid, grid) cells -> (B, grid*grid, D): one L2-normalised embedding per tile, row-major."""
        return F.normalize(self.tile_projector(cells).flatten(2).transpose(1, 2), dim=2)

    def forward(self, image: torch.Tensor, puzzle: torch.Tensor) -> JigsawOutput:
        b = len(image)
        # One encoder pass over both views: one BatchNorm batch, half the kernel launches.
        features = self.encoder(torch.cat([image, puzzle]))[1:]
        z, cells = self.embed(features[-1]), self.tile_cells(features[-1])
        tiles = self.embed_tiles(cells)
        return JigsawOutput(self.decoder([f[b:] for f in features], puzzle.shape[-2:]), z[:b], z[b:],
                            self.locator(cells[b:]), tiles[:b], tiles[b:])
