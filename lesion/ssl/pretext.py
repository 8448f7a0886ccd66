"""The jigsaw pretext task (JIANet idea) as a fit() task: puzzles of the images, the checks on their settings,
its loss and queue of negatives (Jigsaw), its pictures and curves, and the encoder it leaves (SaveEncoder).

Sizes: image_size must be a multiple of 32 (the encoder's stride; checked by
prepare_data). When it is not a multiple of grid, the puzzle is cut from the
image resized to the nearest multiple of grid and resized back (256 px with
grid 3: 85-px tiles of a 255-px image); the target is always the image itself.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lesion.config import NoiseConfig, SSLConfig
from lesion.data.datasets import ImageDataset, epoch_seed, worker_seed
from lesion.data.transforms import denormalize
from lesion.errors import ConfigError
from lesion.models.io import save_encoder
from lesion.plots import titled_grid
from lesion.ssl.losses import EmbeddingQueue, info_nce, place_loss, reconstruction_loss, tile_info_nce
from lesion.ssl.puzzles import assemble, make_puzzle
from lesion.train.engine import Callback, Fit


METRICS = ("pretrain/loss", "pretrain/reconstruction", "pretrain/invariance", "pretrain/tile_invariance",
           "pretrain/place", "pretrain/place_accuracy")


MIN_TILE = 8  # pixels: smaller tiles hold too little to place


# Flips, rot90 and a mild affine only: the puzzle brings its own per-tile colour jitter.
PRETRAIN_AUGMENTATION = NoiseConfig(photometric=0.0, artifacts=0.0, zoom_out=0.0, zoom_in=0.0)


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


class Jigsaw:
    """The pretext as a fit() task: the weighted four-term loss (see lesion.pretrain), no validation, no best epoch.

    With queue_size > 0 every batch's image embeddings, gathered from all processes, join a queue of
    negatives for InfoNCE; the queue is checkpointed (safetensors), so a resume sees the same negatives.
    """

    monitor = None
    train_metrics = METRICS

    def __init__(self, ssl: SSLConfig, dataset: PuzzleDataset, accelerator: Accelerator, shown_images: torch.Tensor,
                 shown_puzzles: torch.Tensor):
        self.ssl, self.dataset, self.accelerator = ssl, dataset, accelerator
        self.shown_images, self.shown_puzzles = shown_images, shown_puzzles  # fixed, unaugmented: comparable pictures
        self.queue = EmbeddingQueue(ssl.queue_size, ssl.projection_dim, accelerator.device)
        self.embedded: torch.Tensor | None = None  # the last batch's image embeddings, for the queue

    def start(self, model: nn.Module, loaders: dict[str, DataLoader]) -> None:
        pass

    def train_step(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        ssl = self.ssl
        outputs = model(batch["image"], batch["puzzle"])
        rec = reconstruction_loss(outputs.reconstruction, batch["image"])
        inv = info_nce(outputs.z_image, outputs.z_puzzle, ssl.temperature, self.queue.negatives())
        tile_inv = tile_info_nce(outputs.tiles_image, outputs.tiles_puzzle, batch["perms"], ssl.temperature)
        place, accuracy = place_loss(outputs.places, batch["perms"])
        loss = (ssl.reconstruction_weight * rec + ssl.invariance_weight * inv
                + ssl.tile_invariance_weight * tile_inv + ssl.place_weight * place)
        self.embedded = outputs.z_image.detach()
        return loss, torch.stack([loss, rec, inv, tile_inv, place, accuracy]).detach()

    def after_step(self, model: nn.Module, synced: bool) -> None:
        self.queue.push(self.accelerator.gather(self.embedded))  # every rank keeps the same queue

    def validate(self, model: nn.Module, epoch: int) -> dict[str, float]:
        return {}

    def kept(self, model: nn.Module) -> nn.Module:
        return self.accelerator.unwrap_model(model)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"queue": self.queue.state_dict()["items"]}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if "queue" in state:
            self.queue.load_state_dict({"items": state["queue"]})

    def summary(self, record: dict[str, float]) -> str:
        loss, rec, inv, tile_inv, place, accuracy = (record[k] for k in METRICS)
        return (f"loss {loss:.4f} (reconstruction {rec:.4f}, invariance {inv:.4f}, tile invariance {tile_inv:.4f}, "
                f"place {place:.4f}, tiles placed right {accuracy:.0%})")

    def picture(self, net: nn.Module, device: torch.device) -> np.ndarray:
        """The shown images, their puzzles, the network's reconstructions [and the tiles where it places them]."""
        net.eval()
        with torch.no_grad():
            rebuilt, places = net.solve(self.shown_puzzles.to(device))
        columns, titles = [self.shown_images, self.shown_puzzles, rebuilt], ["image", "puzzle", "reconstruction"]
        if self.ssl.place_weight > 0:  # the tiles where the network places them
            columns.append(self.dataset.assemble(self.shown_puzzles, places))
            titles.append("tiles placed")
        return picture(columns, titles)


class SaveEncoder(Callback):
    """At the end of the epochs, before the resume state goes, the trained encoder as safetensors + its name."""

    def __init__(self, folder: Path, encoder: str, image_size: int, data: str, run_id: str | None,
                 color_constancy: str):
        self.folder, self.encoder = folder, encoder
        self.image_size, self.data, self.run_id, self.color_constancy = image_size, data, run_id, color_constancy

    def on_fit_end(self, fit: Fit) -> None:
        if fit.ctx.main and fit.state.history:
            save_encoder(fit.kept.encoder, self.encoder, self.folder, image_size=self.image_size,
                         epochs=len(fit.state.history), data=self.data, run_id=self.run_id,
                         color_constancy=self.color_constancy)
