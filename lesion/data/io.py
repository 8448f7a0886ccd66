"""Reading and validating image and mask files.

Images come back as (H, W, 3) uint8 RGB, masks as (H, W) bool, both with the
EXIF orientation applied, whatever the file's mode:

- grayscale, CMYK, palette: converted to RGB; 16-bit: scaled to 8 bits (not clipped);
- transparency: composited on black, like the dark corners outside a dermoscope's
  field of view (for masks: transparent is background);
- masks are read at their own bit depth: a mask holding only 0 and one other
  value (0/255, 0/1, 0/65535, 16-bit 0/1, a palette's index 0 and index k
  whatever colours the palette gives them) takes that value as lesion; any other
  mask is scaled to 8 bits and a pixel > 128 is lesion, as in the official ISIC
  scorer. Colour masks are reduced to their brightest channel first (so a red
  or white lesion on black both work); transparent is background. A mask with
  several values none of which reaches the threshold (a 0/1 mask saved as JPEG)
  is refused rather than read as empty.

Every problem is a one-line DataError naming the file and the fix. The pixel
limit (`max_pixels`) is checked on the header, before anything is decoded.
Arrays may be read-only views of the decoded buffer: copy before writing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, ImageChops, ImageOps, UnidentifiedImageError

from lesion.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
LESION_ABOVE = 128  # the official scorer's `mask > 128`
SKIP_HINT = "or pass skip_bad=true to skip it"
ORIENTATION = 0x0112
HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
ALPHA_MODES = ("RGBA", "RGBa", "LA", "PA")

# max_pixels replaces PIL's process-wide limit: it is checked per call on the header (see _open).
# (ImageFile.LOAD_TRUNCATED_IMAGES stays False, PIL's default, so a truncated file fails to decode.)
Image.MAX_IMAGE_PIXELS = None

T = TypeVar("T")


@dataclass(frozen=True)
class Header:
    """What a file's header says, without decoding its pixels."""

    size: tuple[int, int]  # (H, W) after EXIF orientation
    mode: str              # PIL mode as stored: "RGB", "L", "RGBA", "CMYK", "P", "I;16", ...
    rotated: bool          # an EXIF orientation is applied when reading


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _corrupt(path: str | Path, what: str, err: Exception) -> DataError:
    return DataError(f"{path}: {what} is truncated or corrupt ({_one_line(err)}); "
                     f"re-download or re-export it, {SKIP_HINT}")


def _open(path: str | Path, max_pixels: int, what: str) -> Image.Image:
    """Open the file (header only) and refuse it above max_pixels."""
    try:
        img = Image.open(path)
    except FileNotFoundError:
        raise DataError(f"{path}: {what} not found; check the path or re-run discovery") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: {what} is not a readable image (unknown format or corrupt header); "
                        f"re-export it as PNG or JPEG, {SKIP_HINT}") from None
    except OSError as err:
        if err.errno is None:  # raised by PIL on a short header, not by the file system
            raise _corrupt(path, what, err) from None
        raise DataError(f"{path}: cannot open {what} ({err.strerror}); check the file, {SKIP_HINT}") from None
    w, h = img.size
    if w * h > max_pixels:
        img.close()
        raise DataError(f"{path}: {what} is {w}x{h} = {w * h:,} pixels, above max_pixels={max_pixels:,} "
                        f"(decompression-bomb guard); raise max_pixels if the file is genuine, {SKIP_HINT}")
    return img


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1 = as stored), read from the header only."""
    if img.format == "PNG" and "exif" not in img.info:
        return 1  # an eXIf chunk after the pixel data would need a full decode to find: ignored
    try:
        return int(img.getexif().get(ORIENTATION, 1))
    except Exception:  # a malformed EXIF block leaves the image as stored
        return 1


def _full_scale(img: Image.Image, array: np.ndarray) -> float:
    """The value that means white in a 16-bit, 32-bit or float single-channel image."""
    if img.mode.startswith("I;16"):
        return 65535.0
    if img.mode == "F" and array.max(initial=0) <= 1.0:
        return 1.0
    return 65535.0 if array.max(initial=0) > 255 else 255.0  # 32-bit: 16-bit data if it goes above 255


def _scale_to_8bit(array: np.ndarray, top: float) -> np.ndarray:
    return np.clip(np.rint(array * (255.0 / top)), 0, 255).astype(np.uint8)


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float single-channel images scaled onto 0..255 (not clipped)."""
    array = np.asarray(img)
    return Image.fromarray(_scale_to_8bit(array, _full_scale(img, array)), mode="L")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Mode RGB, 8 bits, transparency composited on black."""
    if img.mode in HIGH_BIT_MODES:
        img = _to_8bit(img)
    if img.mode in ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    return img if img.mode == "RGB" else img.convert("RGB")


def _to_mask_channel(img: Image.Image) -> Image.Image:
    """One 8-bit channel; for colour masks the brightest of R, G, B, so a lesion drawn in any colour counts."""
    if img.mode in HIGH_BIT_MODES:
        img = _to_8bit(img)
    if img.mode == "1":
        img = img.convert("L")
    if img.mode == "L" and "transparency" not in img.info:
        return img
    r, g, b = _to_rgb(img).split()
    return ImageChops.lighter(ImageChops.lighter(r, g), b)


def _mask_values(img: Image.Image) -> tuple[np.ndarray, float]:
    """The mask's values before any scaling, and the value that means white (255 for 8 bits, 65535 for 16)."""
    if img.mode in HIGH_BIT_MODES:
        array = np.asarray(img)
        return array, _full_scale(img, array)
    if img.mode == "P" and "transparency" not in img.info:
        indices = np.asarray(img)
        used = np.flatnonzero(np.bincount(indices.ravel(), minlength=256))
        if used[0] == 0 and len(used) <= 2:  # a label mask: index 0 background, the other lesion, any colours
            return indices, 255.0
    return np.asarray(_to_mask_channel(img)), 255.0


def _distinct_nonzero(values: np.ndarray) -> int:
    if values.dtype.kind in "ub" or (values.dtype.kind == "i" and values.min(initial=0) >= 0
                                     and values.max(initial=0) < 65536):
        return int(np.count_nonzero(np.bincount(values.ravel())[1:]))
    return int(np.count_nonzero(np.unique(values)))


def _decode(path: str | Path, max_pixels: int, what: str, convert: Callable[[Image.Image], T]) -> T:
    """Decode the whole file, apply its EXIF orientation, convert; a truncated or corrupt file raises."""
    with _open(path, max_pixels, what) as img:
        try:
            if _orientation(img) != 1:
                ImageOps.exif_transpose(img, in_place=True)  # in place: an upright image is never copied
            img.load()
            return convert(img)
        except MemoryError:
            raise
        except Exception as err:  # decoders fail in many ways on bad data (OSError, SyntaxError, ValueError, ...)
            raise _corrupt(path, what, err) from None


def read_header(path: str | Path, max_pixels: int) -> Header:
    """Size (after orientation), mode and rotation from the header; refuses files above max_pixels."""
    with _open(path, max_pixels, "image") as img:
        orientation = _orientation(img)
        w, h = img.size
        return Header((w, h) if orientation in (5, 6, 7, 8) else (h, w), img.mode, orientation != 1)


def read_size(path: str | Path, max_pixels: int) -> tuple[int, int]:
    """(H, W) after EXIF orientation, from the header only."""
    return read_header(path, max_pixels).size


def read_image(path: str | Path, max_pixels: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB (see the module docstring for mode conversions)."""
    return np.asarray(_decode(path, max_pixels, "image", _to_rgb))


def read_mask(path: str | Path, max_pixels: int) -> tuple[np.ndarray, int]:
    """((H, W) bool lesion mask, number of pixels that were neither 0 nor full scale, e.g. from JPEG)."""
    values, top = _decode(path, max_pixels, "mask", _mask_values)
    if _distinct_nonzero(values) == 1:  # 0 and one other value: a label mask such as 0/1, 0/255 or 0/65535
        return values > 0, 0
    scaled = values if values.dtype == np.uint8 else _scale_to_8bit(values, top)
    lesion = scaled > LESION_ABOVE
    if not lesion.any() and scaled.any():
        raise DataError(f"{path}: mask holds values 0..{int(scaled.max())} (on a 0..255 scale) and none above "
                        f"{LESION_ABOVE}, so no pixel would be lesion: a 0/1 label mask saved as JPEG? Re-export it "
                        f"as PNG with one value for the lesion, {SKIP_HINT}")
    return lesion, int(np.count_nonzero((scaled != 0) & (scaled != 255)))


def load_pair(image_path: str | Path, mask_path: str | Path | None, max_pixels: int
              ) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Image, mask (None when unlabelled) and the mask's non-binary pixel count; sizes must match."""
    image = read_image(image_path, max_pixels)
    if not mask_path:
        return image, None, 0
    mask, nonbinary = read_mask(mask_path, max_pixels)
    if mask.shape != image.shape[:2]:
        raise DataError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {Path(image_path).name} "
                        f"is {image.shape[1]}x{image.shape[0]}; re-export the mask at the image's size "
                        f"or pass skip_bad=true to skip it")
    return image, mask, nonbinary
