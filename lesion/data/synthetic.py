"""A deterministic synthetic dermoscopy generator: the embedded default data set.

Each image is drawn from (seed, index) alone: skin of a random tone with
low-frequency texture and illumination fall-off, an irregular multi-coloured
lesion with a fuzzy border, hairs, sometimes gel bubbles or a ruler, and the
dark circular field of view of a dermoscope. The mask is the exact lesion
region (inside the field of view). Images are non-square, like real ones.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from lesion.errors import DataError

SKIN_TONES = np.array([[236, 198, 170], [222, 176, 142], [198, 150, 112], [168, 120, 86], [124, 86, 60]], np.float32)
LESION_COLOURS = np.array([
    [120, 78, 52],   # light brown
    [86, 52, 34],    # dark brown
    [44, 30, 28],    # black
    [102, 100, 122],  # blue-grey
    [164, 82, 72],   # red (vascular)
], np.float32)
COMPLETE = ".complete"


@dataclass(frozen=True)
class SyntheticSpec:
    n: int = 200
    size: int = 128
    seed: int = 0


def parse_spec(options: str) -> SyntheticSpec:
    """'n=200,size=128,seed=0' (any subset) -> SyntheticSpec."""
    valid = [f.name for f in fields(SyntheticSpec)]
    values: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in options.split(","))):
        key, sep, raw = part.partition("=")
        if not sep or key not in valid:
            raise DataError(f"synthetic option {part!r} is unknown; use {', '.join(k + '=' for k in valid)} "
                            "(e.g. synthetic:n=200,size=128,seed=0)")
        try:
            values[key] = int(raw)
        except ValueError:
            raise DataError(f"synthetic option {part!r} needs an integer (e.g. synthetic:n=200,size=128,seed=0)") from None
    spec = SyntheticSpec(**values)
    if spec.n < 1 or spec.size < 64:
        raise DataError(f"synthetic options n={spec.n}, size={spec.size}: need n >= 1 and size >= 64")
    return spec


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    small = rng.normal(0, 1, (max(2, h // cell), max(2, w // cell))).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _lesion_shape(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, float]:
    """Irregular blob: a radius r(theta) with random harmonics, at a random size and position."""
    area = float(np.exp(rng.uniform(np.log(0.04), np.log(0.45)))) * h * w
    radius = np.sqrt(area / np.pi)
    cx = w / 2 + rng.normal(0, 0.12 * w)
    cy = h / 2 + rng.normal(0, 0.12 * h)
    cx, cy = np.clip(cx, 0.25 * w, 0.75 * w), np.clip(cy, 0.25 * h, 0.75 * h)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    aspect = rng.uniform(0.7, 1.3)
    angle = rng.uniform(0, np.pi)
    dx, dy = xx - cx, yy - cy
    rx = dx * np.cos(angle) + dy * np.sin(angle)
    ry = (-dx * np.sin(angle) + dy * np.cos(angle)) * aspect
    theta, dist = np.arctan2(ry, rx), np.hypot(rx, ry)
    r_theta = np.ones_like(theta)
    for k in range(2, 8):
        r_theta += rng.uniform(0, 0.22 / k ** 0.7) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    # a wobbly border on top of the harmonics
    r_theta *= 1 + 0.06 * _smooth_noise(rng, h, w, max(4, int(radius // 3)))
    return (dist <= radius * r_theta).astype(np.float32), radius


def _draw_hairs(rng: np.random.Generator, image: np.ndarray, scale: float) -> None:
    h, w = image.shape[:2]
    for _ in range(int(rng.choice([0, 0, 1, 2, 3, 5, 8]))):
        start = np.array([rng.uniform(0, w), rng.uniform(0, h)])
        direction = rng.uniform(0, 2 * np.pi)
        points = [start]
        for _ in range(12):
            direction += rng.normal(0, 0.15)
            points.append(points[-1] + max(h, w) / 10 * np.array([np.cos(direction), np.sin(direction)]))
        colour = tuple(float(c) for c in rng.uniform(15, 60) * np.array([1.0, 0.85, 0.75]))
        cv2.polylines(image, [np.array(points, np.int32)], False, colour, max(1, int(round(scale * rng.uniform(0.6, 1.6)))),
                      cv2.LINE_AA)


def _draw_bubbles(rng: np.random.Generator, image: np.ndarray, scale: float) -> None:
    h, w = image.shape[:2]
    for _ in range(int(rng.integers(1, 5))):
        centre = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
        radius = int(rng.uniform(3, 14) * scale)
        cv2.circle(image, centre, radius, (235, 235, 235), max(1, int(scale)), cv2.LINE_AA)
        cv2.circle(image, (centre[0] - radius // 3, centre[1] - radius // 3), max(1, radius // 4), (250, 250, 250), -1,
                   cv2.LINE_AA)


def _draw_ruler(rng: np.random.Generator, image: np.ndarray, scale: float) -> None:
    h, w = image.shape[:2]
    y = int(rng.choice([rng.uniform(0.04, 0.12), rng.uniform(0.88, 0.96)]) * h)
    x0, x1 = int(0.15 * w), int(0.85 * w)
    colour = (20, 20, 20) if rng.random() < 0.7 else (240, 240, 240)
    cv2.line(image, (x0, y), (x1, y), colour, max(1, int(scale)), cv2.LINE_AA)
    step = max(3, int(6 * scale))
    for i, x in enumerate(range(x0, x1, step)):
        tick = int((6 if i % 5 == 0 else 3) * scale)
        cv2.line(image, (x, y), (x, y - tick), colour, 1, cv2.LINE_AA)


def generate_one(index: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Image uint8 (H, W, 3) RGB and mask uint8 (H, W) in {0, 1}, deterministic from (seed, index)."""
    rng = np.random.default_rng([seed, index, 7])
    h = size
    w = int(round(size * rng.uniform(1.0, 1.5) / 2)) * 2
    scale = size / 256
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

    skin = SKIN_TONES[rng.integers(len(SKIN_TONES))] + rng.normal(0, 6, 3)
    texture = 7 * _smooth_noise(rng, h, w, 24) + 3 * _smooth_noise(rng, h, w, 5) + 2.5 * rng.normal(0, 1, (h, w))
    image = skin[None, None, :] + texture[..., None] * np.array([1.0, 0.9, 0.85], np.float32)
    # Illumination falls off away from a slightly off-centre light.
    lx, ly = w / 2 + rng.normal(0, 0.1 * w), h / 2 + rng.normal(0, 0.1 * h)
    r2 = ((xx - lx) / w) ** 2 + ((yy - ly) / h) ** 2
    image *= (1 - rng.uniform(0.3, 0.9) * r2)[..., None]

    shape, radius = _lesion_shape(rng, h, w)
    sigma = max(1.0, radius * rng.uniform(0.04, 0.12))
    alpha = cv2.GaussianBlur(shape, (0, 0), sigma)
    mask = alpha >= 0.5

    # Multi-coloured lesion: 2-3 colours blended by smooth fields, darker towards an off-centre core.
    chosen = LESION_COLOURS[rng.choice(len(LESION_COLOURS), size=int(rng.integers(2, 4)), replace=False)]
    weights = np.stack([np.exp(1.5 * _smooth_noise(rng, h, w, max(4, int(radius // 2)))) for _ in chosen])
    weights /= weights.sum(0, keepdims=True)
    colour = np.einsum("khw,kc->hwc", weights, chosen)
    core = np.clip(cv2.GaussianBlur(shape, (0, 0), radius * 0.35) * rng.uniform(0.1, 0.45), 0, 1)
    colour *= (1 - core)[..., None]
    if rng.random() < 0.5:  # reticular (pigment network) pattern
        period = rng.uniform(4, 9) * scale + 2
        net = (np.sin(xx / period * 2 * np.pi + _smooth_noise(rng, h, w, 8) * 2) *
               np.sin(yy / period * 2 * np.pi + _smooth_noise(rng, h, w, 8) * 2))
        colour *= (1 - 0.18 * (net > 0.3))[..., None]
    strength = rng.uniform(0.75, 1.0)
    image = image * (1 - strength * alpha[..., None]) + colour * (strength * alpha[..., None])
    if rng.random() < 0.6:  # dots and globules inside the lesion
        ys, xs = np.nonzero(mask)
        for j in rng.choice(len(ys), size=min(len(ys), int(rng.integers(3, 25))), replace=False):
            cv2.circle(image, (int(xs[j]), int(ys[j])), max(1, int(rng.uniform(0.8, 2.5) * scale)),
                       tuple(float(c) for c in LESION_COLOURS[2] * rng.uniform(0.6, 1.1)), -1, cv2.LINE_AA)

    _draw_hairs(rng, image, scale)
    if rng.random() < 0.15:
        _draw_bubbles(rng, image, scale)
    if rng.random() < 0.10:
        _draw_ruler(rng, image, scale)

    if rng.random() < 0.75:  # the dermoscope's circular field of view
        fov_r = rng.uniform(0.4, 0.52) * np.hypot(h, w)
        dist = np.hypot(xx - w / 2, yy - h / 2)
        fov = np.clip((fov_r - dist) / (0.04 * fov_r), 0, 1)
        image *= fov[..., None]
        mask &= fov > 0.5
    image += rng.normal(0, 1.5, image.shape)  # sensor noise
    return np.clip(image, 0, 255).round().astype(np.uint8), mask.astype(np.uint8)


def folder_name(spec: SyntheticSpec) -> str:
    return f"synthetic-n{spec.n}-size{spec.size}-seed{spec.seed}"


def materialize(root: str | Path, spec: SyntheticSpec) -> Path:
    """Write images/ and masks/ once (atomically) and return the folder."""
    target = Path(root) / folder_name(spec)
    if (target / COMPLETE).is_file():
        return target
    Path(root).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
    (tmp / "images").mkdir()
    (tmp / "masks").mkdir()
    try:
        from tqdm.auto import tqdm

        for i in tqdm(range(spec.n), desc="synthetic data", disable=spec.n < 200, leave=False):
            image, mask = generate_one(i, spec.size, spec.seed)
            Image.fromarray(image).save(tmp / "images" / f"SYN_{i:05d}.png")
            Image.fromarray(mask * 255, mode="L").save(tmp / "masks" / f"SYN_{i:05d}_segmentation.png")
        (tmp / COMPLETE).write_text(f"{spec}\n")
        if target.exists() and not (target / COMPLETE).is_file():
            shutil.rmtree(target, ignore_errors=True)  # an incomplete older attempt
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
