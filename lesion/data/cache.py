"""Preprocessing cache: decode and resize every image once.

Full-resolution ISIC JPEGs (up to 6000x4000) cost far more to decode than a
training step at 256 px, so each image is decoded once, resized to the
working resolution and stored as an uncompressed .npz (fast to read back),
keyed by source path, size, mtime and working size. The original-resolution
mask is kept too (bit-packed), because metrics are computed at the mask's
original size. Entries are written atomically, so concurrent processes and
crashed runs never see half-written files.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from lesion.data.io import load_pair
from lesion.errors import DataError
from lesion.progress import bar

CACHE_VERSION = "2"  # 2: masks read at their own bit depth (16-bit 0/1, palette indices)


@dataclass
class Sample:
    image: np.ndarray  # (S, S, 3) uint8 at the working size
    mask: np.ndarray | None  # (S, S) uint8 {0, 1} at the working size
    original_size: tuple[int, int]  # (H, W) of the source image
    nonbinary_pixels: int  # mask pixels that were neither 0 nor 255 before thresholding


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    # INTER_AREA when shrinking avoids aliasing; linear when enlarging.
    shrinking = image.shape[0] > size or image.shape[1] > size
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Bool/uint8 mask -> (size, size) uint8 {0, 1}: area-averaged then thresholded, so it stays exactly binary."""
    soft = cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    return (soft >= 0.5).astype(np.uint8)


class PreprocessCache:
    def __init__(self, root: str | Path, size: int, max_pixels: int):
        self.root = Path(root) / "preprocessed" / f"v{CACHE_VERSION}-{size}px"
        self.size = size
        self.max_pixels = max_pixels
        self.root.mkdir(parents=True, exist_ok=True)

    def _key(self, image: str, mask: str | None) -> Path:
        parts = [CACHE_VERSION, str(self.size)]
        for path in (image, mask):
            if path:
                st = os.stat(path)
                parts += [os.path.abspath(path), str(st.st_mtime_ns), str(st.st_size)]
        digest = hashlib.sha1("|".join(parts).encode()).hexdigest()
        return self.root / digest[:2] / f"{digest}.npz"

    def at_size(self, size: int) -> "PreprocessCache":
        """The same cache folder at another working size (for a model trained at that size)."""
        return self if size == self.size else PreprocessCache(self.root.parent.parent, size, self.max_pixels)

    def load(self, image: str, mask: str | None = None) -> Sample:
        """The cached sample for (image, mask), building it on a miss."""
        try:
            path = self._key(image, mask)
        except FileNotFoundError as err:
            raise DataError(f"{err.filename}: file not found; check the data path or re-run discovery") from None
        if path.exists():
            try:
                with np.load(path) as z:
                    return Sample(z["image"], z["mask"] if "mask" in z else None,
                                  tuple(int(v) for v in z["original_size"]), int(z["nonbinary"]))
            except (OSError, ValueError, KeyError, EOFError):
                path.unlink(missing_ok=True)  # a damaged entry is rebuilt, never trusted
        return self._build(image, mask, path)

    def original_mask(self, image: str, mask: str) -> np.ndarray:
        """The full-resolution bool mask (for metrics at the original size)."""
        path = self._key(image, mask)
        if not path.exists():
            self._build(image, mask, path)
        with np.load(path) as z:
            h, w = (int(v) for v in z["original_size"])
            return np.unpackbits(z["original_mask"], count=h * w).reshape(h, w).astype(bool)

    def _build(self, image: str, mask: str | None, path: Path) -> Sample:
        img, full_mask, nonbinary = load_pair(image, mask, self.max_pixels)
        arrays = {
            "image": resize_image(img, self.size),
            "original_size": np.array(img.shape[:2], dtype=np.int64),
            "nonbinary": np.array(nonbinary, dtype=np.int64),
        }
        if full_mask is not None:
            arrays["mask"] = resize_mask(full_mask, self.size)
            arrays["original_mask"] = np.packbits(full_mask.reshape(-1))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
        return Sample(arrays["image"], arrays.get("mask"), tuple(img.shape[:2]), nonbinary)

    def warm(self, pairs: list[tuple[str, str | None]], *, skip_bad: bool, workers: int = 0,
             progress: bool = True, desc: str = "cache") -> tuple[list[int], list[str], int]:
        """Build every entry once, in parallel threads (decoding releases the GIL).

        Returns (indices of usable pairs, one line per skipped pair, how many masks were
        not binary). Without skip_bad the first bad file raises its DataError.
        """
        workers = workers or min(8, os.cpu_count() or 1)
        usable, skipped, nonbinary_masks = [], [], 0

        def one(pair: tuple[str, str | None]) -> Sample | DataError:
            try:
                return self.load(*pair)
            except DataError as err:
                return err

        with ThreadPoolExecutor(workers) as pool:
            results = pool.map(one, pairs)
            for i, result in enumerate(bar(results, desc, total=len(pairs), enabled=progress, unit="images")):
                if isinstance(result, DataError):
                    if not skip_bad:
                        raise result
                    skipped.append(str(result))
                    continue
                usable.append(i)
                nonbinary_masks += result.nonbinary_pixels > 0
        return usable, skipped, nonbinary_masks
