"""Torch datasets over manifest rows, read from the preprocessing cache.

Every item carries `target` (a mask or a soft pseudo-label in [0, 1]) and
`valid` (1 where the loss may look, 0 for low-confidence pseudo-label pixels),
so the same loss serves labelled and pseudo-labelled images.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from lesion.config import NoiseConfig
from lesion.data.cache import PreprocessCache, resize_image
from lesion.data.color import apply_color_constancy
from lesion.data.io import read_image
from lesion.data.splits import Row
from lesion.data.transforms import build_transform, normalize


def load_pseudo_label(path: str | Path) -> np.ndarray:
    """A stored pseudo-label (8-bit PNG of probability * 255) -> float32 in [0, 1]."""
    data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if data is None:
        raise FileNotFoundError(f"{path}: pseudo-label missing; re-run the pseudo-labelling stage")
    return data.astype(np.float32) / 255.0


def pseudo_valid(prob: np.ndarray, threshold: float) -> np.ndarray:
    """Pixels confident enough to train on: max(p, 1 - p) >= threshold."""
    return (np.maximum(prob, 1.0 - prob) >= threshold).astype(np.float32)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of everything random in one epoch: a resumed run replays the same epochs."""
    return seed * 1000 + epoch


def worker_seed(seed: int, epoch: int, worker_id: int) -> int:
    return epoch_seed(seed, epoch) * 1000 + worker_id + 1


def seed_worker(worker_id: int) -> None:
    """worker_init_fn: each DataLoader worker gets its own augmentation stream, still fixed by (seed, epoch).

    Workers start from a copy of the dataset; without this they would all replay one
    augmentation sequence (the same flips and crops for every worker's batches).
    """
    dataset = torch.utils.data.get_worker_info().dataset
    if hasattr(dataset, "reseed_worker"):
        dataset.reseed_worker(worker_id)


class SegmentationDataset(Dataset):
    """Labelled rows (and optionally pseudo-labelled ones) -> image, target, valid."""

    def __init__(
        self,
        rows: list[Row],
        cache: PreprocessCache,
        noise: NoiseConfig | None = None,
        train: bool = False,
        seed: int = 0,
        pseudo: dict[str, str] | None = None,
        pseudo_threshold: float = 0.0,
        color_constancy: str = "none",
    ):
        self.rows = rows
        self.cache = cache
        self.color_constancy = color_constancy
        self.pseudo = pseudo or {}
        self.pseudo_threshold = pseudo_threshold
        self.seed, self.epoch = seed, 0
        self.transform = build_transform(noise, train, seed)
        missing = [r.id for r in rows if not r.labelled and r.id not in self.pseudo]
        if missing:
            raise ValueError(f"rows without a mask or a pseudo-label: {missing[:5]}")

    def set_epoch(self, epoch: int) -> None:
        # Augmentation depends only on (seed, epoch): a resumed run replays the same epochs.
        self.epoch = epoch
        if self.transform is not None:
            self.transform.set_random_seed(epoch_seed(self.seed, epoch))

    def reseed_worker(self, worker_id: int) -> None:
        if self.transform is not None:
            self.transform.set_random_seed(worker_seed(self.seed, self.epoch, worker_id))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        row = self.rows[index]
        if row.labelled:
            sample = self.cache.load(row.image, row.mask)
            target = sample.mask.astype(np.float32)
            valid = np.ones_like(target)
        else:
            sample = self.cache.load(row.image, None)
            target = load_pseudo_label(self.pseudo[row.id])
            valid = pseudo_valid(target, self.pseudo_threshold)
        image = apply_color_constancy(sample.image, self.color_constancy)  # before augmentation: jitter around neutral
        if self.transform is not None:
            out = self.transform(image=image, masks=[target, valid])
            image, (target, valid) = out["image"], out["masks"]
        return {
            "image": torch.from_numpy(normalize(image)),
            "target": torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32))[None],
            "valid": torch.from_numpy(np.ascontiguousarray(valid, dtype=np.float32))[None],
            "index": index,
        }


class ImageDataset(Dataset):
    """Images only (inference, pseudo-labelling, SSL): from the cache, or decoded on the fly."""

    def __init__(self, paths: list[str], size: int, cache: PreprocessCache | None, max_pixels: int,
                 transform=None, color_constancy: str = "none"):
        self.paths = paths
        self.size = size
        self.cache = cache
        self.max_pixels = max_pixels
        self.transform = transform
        self.color_constancy = color_constancy

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, index: int) -> tuple[np.ndarray, tuple[int, int]]:
        """The working-size image with its colour constancy, and the original (H, W)."""
        if self.cache is not None:
            sample = self.cache.load(self.paths[index], None)
            image, size = sample.image, sample.original_size
        else:
            full = read_image(self.paths[index], self.max_pixels)
            image, size = resize_image(full, self.size), full.shape[:2]
        return apply_color_constancy(image, self.color_constancy), size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        image, (h, w) = self.image(index)
        if self.transform is not None:
            image = self.transform(image=image)["image"]
        return {"image": torch.from_numpy(normalize(image)), "index": index, "height": h, "width": w}
