"""Small fake images and masks written by the tests (the folder layouts live in test_sources.py)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def blob(h: int = 24, w: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(150, 230, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 255
    image[mask > 0] //= 3
    return image, mask


def save(array: np.ndarray, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def truncated_jpeg(path: Path) -> Path:
    buf = io.BytesIO()
    Image.fromarray(blob(64, 64)[0]).save(buf, format="JPEG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path
