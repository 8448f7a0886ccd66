"""A deterministic synthetic dermoscopy generator: the embedded default data set.

`data=synthetic` (or `synthetic:n=200,size=128,seed=0`) lets the demo and the
tests run with no download. Each image is drawn from (seed, index) alone: skin
of a random tone with mottling, pores and an illumination fall-off; an
irregular multi-coloured lesion (pigment network, dots, a darker core) with a
fuzzy border; hairs; sometimes gel bubbles or a ruler; and, in most images,
the dark circular field of view of a dermoscope. Hairs, bubbles and rulers
never change the mask, which is the exact region of the lesion's shape (where
its fuzzy alpha is at least 0.5, inside the field of view), so a model has to
learn to look through them, as it must on real data.
Images are non-square, like real ones. Everything is vectorised numpy/cv2:
300 images at size 256 take a few seconds on one core.
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

# Fitzpatrick-like skin tones, light to dark (RGB); a tone is interpolated between two neighbours.
SKIN_TONES = np.array([[238, 204, 184], [226, 182, 154], [206, 156, 122], [176, 124, 90], [130, 88, 62]], np.float32)
# Lesion colours (RGB); browns dominate, as in real nevi and melanomas.
LESION_COLOURS = np.array([
    [150, 98, 70],    # light brown
    [104, 62, 42],    # dark brown
    [48, 34, 32],     # black
    [90, 94, 108],    # blue-grey (blue-white veil)
    [172, 88, 82],    # red (vascular)
], np.float32)
COLOUR_ODDS = np.array([0.55, 0.5, 0.25, 0.18, 0.12])  # chance each joins the one brown every lesion has
LUMA = np.array([0.3, 0.59, 0.11], np.float32)
COMPLETE = ".complete"  # written last: a folder without it is an interrupted write
EXAMPLE = "synthetic:n=200,size=128,seed=0"
PROGRESS_FROM = 200  # show a progress bar from this many images on
THETA_BINS = 1024  # r(theta) is tabulated once per blob, then looked up per pixel


@dataclass(frozen=True)
class SyntheticSpec:
    n: int = 200
    size: int = 128
    seed: int = 0


def parse_spec(options: str) -> SyntheticSpec:
    """'' or 'n=200,size=128,seed=0' (any subset, any order) -> SyntheticSpec."""
    valid = [f.name for f in fields(SyntheticSpec)]
    usage = f"use {', '.join(k + '=' for k in valid)} (e.g. {EXAMPLE})"
    minimum = {"n": 1, "size": 64}
    values: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in options.split(","))):
        key, sep, raw = (s.strip() for s in part.partition("="))
        if not sep or key not in valid:
            raise DataError(f"synthetic option {part!r} is unknown; {usage}")
        if key in values:
            raise DataError(f"synthetic option {part!r} is given twice; give each of "
                            f"{', '.join(k + '=' for k in valid)} once (e.g. {EXAMPLE})")
        try:
            values[key] = int(raw)
        except ValueError:
            raise DataError(f"synthetic option {part!r} needs an integer; {usage}") from None
        if key in minimum and values[key] < minimum[key]:
            raise DataError(f"synthetic option {part!r} is too small: {key} must be >= {minimum[key]} (e.g. {EXAMPLE})")
    return SyntheticSpec(**values)


def _noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Unit-variance noise varying over about `cell` px: upsampled white noise (uniform: cheaper than normal)."""
    small = rng.random((max(2, round(h / cell)), max(2, round(w / cell))), dtype=np.float32) - 0.5
    field = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    return field / (field[::4, ::4].std() + 1e-6)


def _blob(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, radius: float) -> np.ndarray:
    """Signed distance-like field (px, > 0 inside) of an irregular blob: r(theta) = radius * (1 + harmonics)."""
    theta = np.linspace(-np.pi, np.pi, THETA_BINS + 1, dtype=np.float32)  # the last bin closes the circle
    r = np.ones_like(theta)
    roughness = rng.uniform(0.3, 1.0)
    for k in range(2, 12):
        r += roughness * rng.uniform(0, 0.3 / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    r = np.maximum(r, 0.45) * np.float32(radius)
    stretch, angle = float(np.sqrt(rng.uniform(0.6, 1.0))), rng.uniform(0, np.pi)  # elongated at any angle, same area
    cos, sin = float(np.cos(angle)), float(np.sin(angle))
    dx, dy = xx - float(cx), yy - float(cy)
    u = (dx * cos + dy * sin) * stretch
    v = (dy * cos - dx * sin) * (1 / stretch)
    bins = ((np.arctan2(v, u) + np.float32(np.pi)) * np.float32(THETA_BINS / (2 * np.pi))).astype(np.int32)
    return np.take(r, bins) - np.sqrt(u * u + v * v)


def _lesion_field(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, h: int,
                  w: int) -> tuple[np.ndarray, float, tuple[float, float]]:
    """The lesion as a signed distance-like field (union of a main blob and 0-2 lobes), its radius and centre."""
    area = np.exp(rng.uniform(np.log(0.03), np.log(0.45))) * h * w
    radius = float(np.sqrt(area / np.pi))
    # Mostly near the centre, sometimes off-centre; the centre stays well inside, so the lesion is never off-image.
    spread = 0.08 if rng.random() < 0.8 else 0.22
    margin = np.minimum(0.5, radius / np.array([w, h]) * 0.7)
    cx, cy = np.clip(rng.normal(0.5, spread, 2), np.maximum(0.2, margin), np.minimum(0.8, 1 - margin)) * [w, h]
    field = _blob(rng, xx, yy, cx, cy, radius)
    for _ in range(int(rng.choice([0, 0, 1, 2]))):
        a = rng.uniform(0, 2 * np.pi)
        off = rng.uniform(0.3, 0.7) * radius  # lobe centres lie inside the main blob, so the union is connected
        np.maximum(field, _blob(rng, xx, yy, cx + off * np.cos(a), cy + off * np.sin(a),
                                radius * rng.uniform(0.35, 0.65)), out=field)
    field += (radius * 0.05) * _noise(rng, h, w, max(3.0, radius / 5))  # a wobbly border, finer than the harmonics
    # The wobble can pinch off specks of a few pixels: push them outside, so the lesion is one piece.
    count, labels, stats, _ = cv2.connectedComponentsWithStats((field >= 0).astype(np.uint8))
    if count > 2:
        specks = (labels != 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))) & (field >= 0)
        field[specks] = -0.5 - field[specks]
    return field, radius, (float(cx), float(cy))


def _lesion_colour(rng: np.random.Generator, field: np.ndarray, radius: float, skin: np.ndarray,
                   scale: float) -> np.ndarray:
    """Lesion colour (3, H, W): 1-4 colours in smooth regions, a darker core, pigment network, dots, texture."""
    h, w = field.shape
    picks = {int(rng.choice(2))} | {k for k in range(len(LESION_COLOURS)) if rng.random() < COLOUR_ODDS[k]}
    colours = LESION_COLOURS[sorted(picks)] * rng.uniform(0.8, 1.15)
    # Lesions are darker than the skin they sit on, also on dark skin.
    lum = colours @ LUMA
    colours *= np.minimum(1.0, 0.72 * float(skin @ LUMA) / lum)[:, None]
    logits = np.stack([2.0 * _noise(rng, h, w, max(4.0, radius / rng.uniform(1.2, 4))) for _ in colours])
    logits[0] += 1.0  # one colour dominates
    weights = np.exp(logits - logits.max(0))
    weights /= weights.sum(0)
    colour = (colours.T.astype(np.float32) @ weights.reshape(len(colours), -1)).reshape(3, h, w)
    depth = np.clip(field * (1 / radius), 0, 1)  # 0 at the border, 1 deep inside
    shade = 1 - rng.uniform(-0.1, 0.45) * np.sqrt(depth) + 0.06 * _noise(rng, h, w, 2.5 * scale + 1)
    if rng.random() < 0.55:  # pigment network: zero crossings of a band-limited field form a mesh
        mesh = np.exp(-np.square(_noise(rng, h, w, rng.uniform(3, 6) * scale + 1.5) * (1 / 0.5)))
        patch = np.clip(0.8 + _noise(rng, h, w, radius / 2), 0, 1)  # the network covers part of the lesion
        shade -= rng.uniform(0.1, 0.3) * mesh * patch
    colour *= shade
    if rng.random() < 0.6:  # dots and globules, darker than the darkest colour: blurred impulses stay round at any size
        ys, xs = np.nonzero(field > 0)
        picked = rng.choice(len(ys), size=min(len(ys), int(rng.integers(3, 30))), replace=False)
        impulses = np.zeros((h, w), np.float32)
        impulses[ys[picked], xs[picked]] = rng.uniform(0.7, 4, len(picked))  # bigger weight: bigger, darker dot
        sigma = max(0.8, 1.2 * scale + 0.3)
        dots = cv2.GaussianBlur(impulses, (0, 0), sigma) * (2 * np.pi * sigma ** 2)
        _blend(colour, ((1 - np.exp(-dots)) * 255).astype(np.uint8), colours.min(0) * 0.6)  # soft saturation
    return colour


def _blend(image: np.ndarray, ink: np.ndarray, colour: np.ndarray | float, opacity: float = 1.0) -> None:
    """Paint `colour` over the (3, H, W) image in place where the uint8 coverage `ink` is drawn."""
    cover = ink.astype(np.float32) * (opacity / 255)
    for c in range(3):
        value = float(colour if np.isscalar(colour) else colour[c])
        image[c] += (value - image[c]) * cover


def _draw_hairs(rng: np.random.Generator, image: np.ndarray, centre: tuple[float, float], radius: float,
                scale: float) -> None:
    """Thin dark smooth curves, some through the lesion; the mask ignores them."""
    h, w = image.shape[1:]
    low, high = [(0, 1), (1, 5), (5, 13), (13, 30)][rng.choice(4, p=[0.35, 0.38, 0.19, 0.08])]  # none, few, some, hairy
    count = int(rng.integers(low, high))
    if not count:
        return
    ink = np.zeros((h, w), np.uint8)
    for _ in range(count):
        direction = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(0.3, 1.2) * max(h, w)
        if rng.random() < 0.35:  # start such that the hair crosses the lesion, through some point inside it
            through = np.array(centre) + rng.uniform(-0.6, 0.6, 2) * radius
            start = through - rng.uniform(0.2, 0.8) * length * np.array([np.cos(direction), np.sin(direction)])
        else:
            start = rng.uniform(0, 1, 2) * [w, h]
        turns = direction + np.cumsum(rng.normal(0, 0.08, 16)) + rng.normal(0, 0.03) * np.arange(16)
        points = start + np.cumsum(length / 16 * np.stack([np.cos(turns), np.sin(turns)], 1), 0)
        width = scale * rng.uniform(0.8, 2.4)  # a hair thinner than a pixel is drawn 1 px wide but fainter
        cv2.polylines(ink, [np.round(np.vstack([start, points]) * 16).astype(np.int32)], False,
                      round(rng.uniform(200, 255) * min(1.0, width)), max(1, round(width)), cv2.LINE_AA, shift=4)
    _blend(image, ink, np.array([1.0, 0.85, 0.75]) * rng.uniform(10, 50))


def _draw_bubbles(rng: np.random.Generator, image: np.ndarray, scale: float) -> None:
    """Gel/air bubbles: translucent bright rings with a specular highlight."""
    h, w = image.shape[1:]
    ink = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(1, 7))):
        x, y, radius = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(3, 22) * scale
        cv2.circle(ink, (int(x), int(y)), max(2, int(radius)), 255, max(1, round(scale * rng.uniform(0.8, 1.8))),
                   cv2.LINE_AA)
        cv2.circle(ink, (int(x - 0.4 * radius), int(y - 0.4 * radius)), max(1, int(radius / 5)), 255, -1, cv2.LINE_AA)
    _blend(image, ink, 245.0, rng.uniform(0.5, 0.85))


def _draw_ruler(rng: np.random.Generator, image: np.ndarray, scale: float) -> None:
    """A ruler near one edge: a line, ticks every 'millimetre', longer every fifth, digits every tenth."""
    h, w = image.shape[1:]
    vertical = rng.random() < 0.3
    length, across = (h, w) if vertical else (w, h)
    offset = int(rng.uniform(0.04, 0.12) * across)
    base, sign = (offset, 1) if rng.random() < 0.5 else (across - 1 - offset, -1)  # ticks point into the image
    start, stop = int(rng.uniform(0.05, 0.3) * length), int(rng.uniform(0.7, 0.95) * length)

    def at(along: int, off: int) -> tuple[int, int]:
        return (base + off, along) if vertical else (along, base + off)

    ink = np.zeros((h, w), np.uint8)
    cv2.line(ink, at(start, 0), at(stop, 0), 255, max(1, round(scale)), cv2.LINE_AA)
    step = max(3.0, rng.uniform(5, 8) * scale)
    for i, along in enumerate(np.arange(start, stop, step).astype(int)):
        tick = round((7 if i % 5 == 0 else 3.5) * scale) + 1
        cv2.line(ink, at(along, 0), at(along, sign * tick), 255, 1, cv2.LINE_AA)
        if i % 10 == 0 and i:
            x, y = at(along, sign * (tick + round(9 * scale)))
            cv2.putText(ink, str(i // 10), (x - round(3 * scale), y + round(3 * scale)), cv2.FONT_HERSHEY_SIMPLEX,
                        0.3 * scale + 0.05, 255, 1, cv2.LINE_AA)
    _blend(image, ink, 25.0 if rng.random() < 0.7 else 240.0)


def generate_one(index: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Image uint8 (H, W, 3) RGB and mask uint8 (H, W) in {0, 1}, deterministic from (seed, index).

    H = size; W = size * aspect, aspect in [1.0, 1.5], rounded to an even number of pixels.
    """
    rng = np.random.default_rng([seed, index])
    h = size
    w = int(np.clip(round(size * rng.uniform(1.0, 1.5) / 2) * 2, size + size % 2, int(1.5 * size) // 2 * 2))
    scale = size / 256
    yy, xx = (a.astype(np.float32) for a in np.ogrid[0:h, 0:w])
    # Channel-first float32 throughout: per-channel 2-D arithmetic is far cheaper than (H, W, 1) broadcasting.

    # Skin: a tone between two neighbouring anchors, mottled (with patches of redness), grainy, with pores.
    t = rng.uniform(0, len(SKIN_TONES) - 1)
    lo = min(int(t), len(SKIN_TONES) - 2)
    skin = (SKIN_TONES[lo] + (t - lo) * (SKIN_TONES[lo + 1] - SKIN_TONES[lo])) * rng.uniform(0.94, 1.06, 3)
    mottle = rng.uniform(3, 9) * _noise(rng, h, w, rng.uniform(20, 60) * scale)
    redness = rng.uniform(0, 8) * np.maximum(_noise(rng, h, w, 40 * scale), 0)
    grain = 2.5 * _noise(rng, h, w, 2.5 * scale + 1) + 5 * (rng.random((h, w), dtype=np.float32) - 0.5)
    pores = cv2.GaussianBlur((rng.random((h, w), dtype=np.float32) < 0.004).astype(np.float32), (0, 0),
                             0.6 * scale + 0.4)
    luminance = mottle + grain - rng.uniform(40, 100) * min(1.0, scale) ** 2 * pores  # pores fade out below size 256
    # Illumination: radial fall-off from a slightly off-centre light plus a gentle gradient.
    lx, ly = (float(v) for v in rng.normal(0.5, 0.08, 2) * [w, h])
    gx, gy = (float(v) for v in rng.normal(0, 0.08, 2))
    light = (1 - rng.uniform(0.3, 1.0) * (np.square((xx - lx) * (1 / w)) + np.square((yy - ly) * (1 / h)))
             + gx * (xx * (1 / w) - 0.5) + gy * (yy * (1 / h) - 0.5))
    image = np.stack([(float(skin[c]) + luminance * tint + redness * red) * light
                      for c, tint, red in zip(range(3), (1.0, 0.9, 0.85), (0.6, -0.6, -0.5))])

    # The lesion: a fuzzy blend whose alpha is exactly 0.5 on the mask's border.
    field, radius, centre = _lesion_field(rng, xx, yy, h, w)
    mask = field >= 0
    softness = np.maximum(rng.uniform(0.4, 3.5) * scale * np.exp(0.6 * _noise(rng, h, w, max(4.0, radius / 2))), 0.35)
    alpha = 0.5 + 0.5 * np.tanh(field / (2 * softness))  # a logistic ramp that cannot overflow
    opacity = rng.uniform(0.75, 1.0) * alpha
    image += (_lesion_colour(rng, field, radius, skin, scale) * light - image) * opacity

    _draw_hairs(rng, image, centre, radius, scale)
    if rng.random() < 0.15:
        _draw_bubbles(rng, image, scale)
    if rng.random() < 0.10:
        _draw_ruler(rng, image, scale)

    if rng.random() < 0.8:  # the dermoscope's circular field of view; the mask ends where the view does
        fov_r = rng.uniform(0.75, 0.97) * np.hypot(h, w) / 2
        fx, fy = (float(v) for v in rng.normal(0.5, 0.02, 2) * [w, h])
        dist = np.sqrt(np.square(xx - fx) + np.square(yy - fy))
        fov = np.clip((fov_r - dist) * (1 / (rng.uniform(0.01, 0.06) * fov_r)) + 0.5, 0, 1)
        outside = (rng.uniform(2, 25) + 5 * (rng.random((h, w), dtype=np.float32) - 0.5)) * (1 - fov)
        image *= fov
        image += outside
        mask &= fov >= 0.5
    sensor = rng.uniform(1, 8)  # uniform sensor noise of this peak-to-peak amplitude
    image += sensor * (rng.random(image.shape, dtype=np.float32) - 0.5)
    if rng.random() < 0.3:  # slight defocus
        sigma = rng.uniform(0.4, 0.9) * scale + 0.1
        image = np.stack([cv2.GaussianBlur(channel, (0, 0), sigma) for channel in image])
    pixels = np.clip(image + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(pixels.transpose(1, 2, 0)), mask.astype(np.uint8)


def materialize(root: str | Path, spec: SyntheticSpec) -> Path:
    """Write the data set once as images/SYN_xxxxx.png and masks/SYN_xxxxx_segmentation.png; return its folder.

    A complete folder (marker written last) is reused. Otherwise the set is written into a temporary
    sibling and renamed into place, so a crash never leaves a complete-looking half set, and of two
    racing processes one rename wins and the other uses the winner's folder.
    """
    root = Path(root)
    target = root / f"synthetic-n{spec.n}-size{spec.size}-seed{spec.seed}"
    if (target / COMPLETE).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
    try:
        from lesion.progress import bar

        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        for i in bar(range(spec.n), "synthetic data", enabled=spec.n >= PROGRESS_FROM, unit="images"):
            image, mask = generate_one(i, spec.size, spec.seed)
            # Fast compression: 4x quicker than the default for ~10% bigger files (the skin noise barely compresses).
            Image.fromarray(image).save(tmp / "images" / f"SYN_{i:05d}.png", compress_level=1)
            Image.fromarray(mask * 255).save(tmp / "masks" / f"SYN_{i:05d}_segmentation.png", compress_level=1)
        (tmp / COMPLETE).write_text(f"{spec}\n")
        if target.exists() and not (target / COMPLETE).is_file():
            shutil.rmtree(target, ignore_errors=True)  # its marker was removed: not to be trusted
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race: use its folder
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not (target / COMPLETE).is_file():
        raise DataError(f"could not write the synthetic data set to {target}; "
                        "check that the cache folder is writable, or set --cache_dir / LESION_CACHE_DIR")
    return target
