"""Reading and validating image and mask files.

Every problem is a one-line DataError naming the file and the fix. Images
come back as (H, W, 3) uint8 RGB with EXIF orientation applied, whatever
their mode (grayscale, RGBA, CMYK, 16-bit, palette); masks come back as
(H, W) bool thresholded at 128 (> 128 is lesion, like the official scorer), with a count of the pixels that were not
cleanly binary (JPEG-compressed masks).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lesion.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
SKIP_HINT = "or pass skip_bad=true to skip it"

# Our own pixel limit replaces PIL's global one (checked on the header, before decoding).
Image.MAX_IMAGE_PIXELS = None
warnings.simplefilter("ignore", Image.DecompressionBombWarning)


def _open(path: str | Path, max_pixels: int, what: str) -> Image.Image:
    try:
        img = Image.open(path)
    except FileNotFoundError:
        raise DataError(f"{path}: {what} not found; check the data folder") from None
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{path}: cannot read {what} ({err.__class__.__name__}); re-export or remove the file, {SKIP_HINT}") from None
    if img.width * img.height > max_pixels:
        img.close()
        raise DataError(f"{path}: {what} is {img.width}x{img.height} = {img.width * img.height} pixels, above "
                        f"max_pixels={max_pixels} (decompression-bomb guard); raise max_pixels if it is genuine, {SKIP_HINT}")
    return img


def _decode(img: Image.Image, path: str | Path, what: str) -> Image.Image:
    try:
        img.load()  # truncated files fail here (LOAD_TRUNCATED_IMAGES stays off)
        return ImageOps.exif_transpose(img)
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{path}: {what} is truncated or corrupt ({err}); re-download it, {SKIP_HINT}") from None


def _to_uint8(img: Image.Image) -> Image.Image:
    """16-bit and 32-bit single-channel images scaled to 8 bits (not clipped)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or array.max() > 255 else 255.0
        return Image.fromarray((array / top * 255).round().clip(0, 255).astype(np.uint8), mode="L")
    if img.mode == "F":
        array = np.asarray(img, dtype=np.float64)
        top = 1.0 if array.max() <= 1.0 else 255.0
        return Image.fromarray((array / top * 255).round().clip(0, 255).astype(np.uint8), mode="L")
    return img


def read_image(path: str | Path, max_pixels: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB; RGBA is composited on white, CMYK/palette/grayscale/16-bit converted."""
    with _open(path, max_pixels, "image") as raw:
        img = _to_uint8(_decode(raw, path, "image"))
        if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, rgba)
        return np.asarray(img.convert("RGB"))


def read_mask(path: str | Path, max_pixels: int) -> tuple[np.ndarray, int]:
    """((H, W) bool, > 128 is lesion as in the official ISIC scorer; count of pixels that were not 0 or 255)."""
    with _open(path, max_pixels, "mask") as raw:
        img = _to_uint8(_decode(raw, path, "mask"))
        if img.mode == "P":
            img = img.convert("RGB")
        array = np.asarray(img.convert("L") if img.mode not in ("L", "1") else img)
    array = array.astype(np.uint8) * 255 if array.dtype == bool else array
    nonbinary = int(np.count_nonzero((array > 0) & (array < 255)))
    return array > 128, nonbinary


def read_size(path: str | Path, max_pixels: int) -> tuple[int, int]:
    """(H, W) after EXIF orientation, from the header only."""
    with _open(path, max_pixels, "image") as img:
        w, h = img.size
        try:
            orientation = img.getexif().get(0x0112, 1)
        except Exception:  # a broken EXIF block does not change the size
            orientation = 1
        return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def load_pair(image_path: str | Path, mask_path: str | Path | None, max_pixels: int
              ) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Image, mask (or None) and its non-binary pixel count; the mask must match the image's size."""
    image = read_image(image_path, max_pixels)
    if not mask_path:
        return image, None, 0
    mask, nonbinary = read_mask(mask_path, max_pixels)
    if mask.shape != image.shape[:2]:
        raise DataError(
            f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {Path(image_path).name} is "
            f"{image.shape[1]}x{image.shape[0]}; re-export the mask at the image's size, {SKIP_HINT}")
    return image, mask, nonbinary
