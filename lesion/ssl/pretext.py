"""The jigsaw pretext task (JIANet idea): puzzles of the images, the checks on their settings, its pictures.

Sizes: image_size must be a multiple of 32 (the encoder's stride; checked by
prepare_data). When it is not a multiple of grid, the puzzle is cut from the
image resized to the nearest multiple of grid and resized back (256 px with
grid 3: 85-px tiles of a 255-px image); the target is always the image itself.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from lesion.config import NoiseConfig, SSLConfig
from lesion.data.datasets import ImageDataset, epoch_seed, worker_seed
from lesion.data.transforms import denormalize
from lesion.errors import ConfigError
from lesion.plots import titled_grid
from lesion.ssl.puzzles import assemble, make_puzzle


METRICS = ("pretrain/loss", "pretrain/reconstruction", "pretrain/invariance", "pretrain/tile_invariance",
           "pretrain/place", "pretrain/place_accuracy")


MIN_TILE = 8  # pixels: smaller tiles hold too little to place


# Flips, rot90 and a mild affine only: the puzzle brings its own per-tile colour jitter.
PRETRAIN_AUGMENTATION = NoiseConfig(photometric=0.0, artifacts=0.0, zoom_out=0.0)


def puzzle_side(size: int, grid: int) -> int:
    """The nearest multiple of grid to size: the side the puzzle is cut at."""
    return max(grid, round(size / grid) * grid)


def check_config(ssl: SSLConfig, image_size: int) -> None:
    """One-line errors for settings that cannot work, before anything runs."""
    if ssl.grid < 2:
        raise ConfigError(f"grid={ssl.grid} makes no puzzle; use grid=2, 3 or 4")
    tile = puzzle_side(image_size, ssl.grid) // ssl.grid
    if tile < MIN_TILE:
        raise ConfigError(f"grid={ssl.grid} at image_size={image_size} gives {tile}-px tiles; "
                          f"use grid<={image_size // MIN_TILE} or a larger image_size")
    if not 0 <= ssl.tile_jitter < 0.5:
        raise ConfigError(f"tile_jitter={ssl.tile_jitter} must be in [0, 0.5) (a fraction of the tile side); try 0.1")
    # Single-field ranges (temperature > 0, queue_size >= 0, ...) are checked by the config itself.
    if ssl.reconstruction_weight + ssl.invariance_weight + ssl.tile_invariance_weight + ssl.place_weight == 0:
        raise ConfigError("reconstruction_weight, invariance_weight, tile_invariance_weight and place_weight "
                          "must not all be 0")


class PuzzleDataset(Dataset):
    """(augmented image, its puzzle): the puzzle is seeded by (seed, epoch, index), so a resume replays it."""

    def __init__(self, images: ImageDataset, ssl: SSLConfig, seed: int):
        self.images, self.ssl, self.seed, self.epoch = images, ssl, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.images.transform is not None:
            self.images.transform.set_random_seed(epoch_seed(self.seed, epoch))

    def reseed_worker(self, worker_id: int) -> None:
        if self.images.transform is not None:
            self.images.transform.set_random_seed(worker_seed(self.seed, self.epoch, worker_id))

    def __len__(self) -> int:
        return len(self.images)

    def resized(self, images: torch.Tensor, size: tuple[int, ...] | None = None) -> torch.Tensor:
        """images at size, by default at the puzzle side (see the module docstring for sizes); as is when they are."""
        size = tuple(size or (puzzle_side(s, self.ssl.grid) for s in images.shape[-2:]))
        same = tuple(images.shape[-2:]) == size
        return images if same else F.interpolate(images, size=size, mode="bilinear", align_corners=False)

    def puzzle(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(puzzles, perms) of (B, C, H, W) images at their own size."""
        x, perms = make_puzzle(self.resized(images), self.ssl.grid, self.ssl.tile_jitter, self.ssl.tile_color_jitter,
                               generator)
        return self.resized(x, images.shape[-2:]), perms

    def assemble(self, puzzles: torch.Tensor, place_logits: torch.Tensor) -> torch.Tensor:
        """Puzzles re-assembled by the predicted places, at their own size."""
        return self.resized(assemble(self.resized(puzzles), place_logits, self.ssl.grid), puzzles.shape[-2:])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        image = self.images[index]["image"]
        seed = int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])
        puzzle, perms = self.puzzle(image[None], torch.Generator().manual_seed(seed))
        return {"image": image, "puzzle": puzzle[0], "perms": perms[0], "index": index}


def picture(columns: list[torch.Tensor], titles: list[str]) -> np.ndarray:
    """One row per image, one titled column per (B, C, H, W) batch: image | puzzle | reconstruction [| assembled]."""
    return titled_grid([[denormalize(t.float().cpu().numpy()) for t in column] for column in columns], titles)


def loss_curves(history: list[dict[str, float]]):
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for key in METRICS:
        ax.plot([h["epoch"] + 1 for h in history], [h[key] for h in history], marker="o", label=key)
    ax.set_xlabel("epoch")
    ax.set_title("pretraining losses")
    ax.legend()
    fig.tight_layout()
    return fig
