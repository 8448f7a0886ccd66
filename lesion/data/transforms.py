"""Albumentations pipelines: a plain one for teachers and supervised training,
and the Noisy Student "noise" policy whose strength and per-transform knobs
Optuna tunes.

Both hold the camera-and-clinic robustness every stage needs (the teacher
included): photometric jitter (brightness, contrast, gamma, hue, saturation;
`photometric`) and dermoscopy artefacts (a dark vignette circle, hair-like
lines, blur; `artifacts`). Without them a model trained on one archive calls
the whole frame lesion on images from another camera.

Masks (label, pseudo-label probability, pixel-validity map) travel as
albumentations `masks`, so every geometric transform moves them with the
image while photometric noise, artefacts and cut-out leave them untouched: the
student must still find the lesion the teacher saw.
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import cv2
import numpy as np

from lesion.config import NoiseConfig

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


class DermoscopeVignette(A.ImageOnlyTransform):
    """A dark circular field of view, as contact dermoscopes leave in the corners (radius a fraction of the
    diagonal, soft edge, random centre)."""

    def __init__(self, radius: tuple[float, float] = (0.33, 0.5), p: float = 0.5):
        super().__init__(p=p)
        self.radius = radius

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        return {"centre": (w * self.py_random.uniform(0.4, 0.6), h * self.py_random.uniform(0.4, 0.6)),
                "radius": np.hypot(h, w) * self.py_random.uniform(*self.radius),
                "edge": max(1.0, min(h, w) * self.py_random.uniform(0.02, 0.08)),
                "darkness": self.py_random.uniform(0.0, 0.15)}

    def apply(self, img: np.ndarray, centre, radius, edge, darkness, **params) -> np.ndarray:
        h, w = img.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        distance = np.hypot(xx - centre[0], yy - centre[1])
        keep = np.clip((radius - distance) / edge, 0.0, 1.0)[..., None]
        return (img * (keep + (1 - keep) * darkness)).round().astype(np.uint8)


class HairLines(A.ImageOnlyTransform):
    """Dark, thin, curved lines across the image: hairs, the most common dermoscopy occluder."""

    def __init__(self, max_hairs: int = 8, p: float = 0.5):
        super().__init__(p=p)
        self.max_hairs = max_hairs

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        count = self.py_random.randint(1, self.max_hairs)
        # A quadratic Bezier per hair: start, control and end points anywhere in the frame.
        points = self.random_generator.uniform(0, 1, size=(count, 3, 2)) * np.array([w, h])
        shade = self.random_generator.uniform(0, 70, size=(count, 1)) * np.array([[1.0, 0.8, 0.6]])
        width = max(1, round(min(h, w) / 128))
        return {"points": points, "shade": shade, "width": width}

    def apply(self, img: np.ndarray, points, shade, width, **params) -> np.ndarray:
        out = img.copy()
        t = np.linspace(0, 1, 24)[:, None]
        for (p0, p1, p2), colour in zip(points, shade):
            curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2
            cv2.polylines(out, [curve.round().astype(np.int32)], False, tuple(float(c) for c in colour),
                          width, cv2.LINE_AA)
        return out


def photometric(probability: float, m: float = 1.0) -> list[A.BasicTransform]:
    """Camera and illumination: brightness, contrast, gamma, hue and saturation (magnitudes grow with m)."""
    if probability <= 0:
        return []
    return [
        A.RandomBrightnessContrast(brightness_limit=0.2 * m, contrast_limit=0.2 * m, p=probability),
        A.RandomGamma(gamma_limit=(100 - 20 * m, 100 + 20 * m), p=probability),
        A.HueSaturationValue(hue_shift_limit=8 * m, sat_shift_limit=25 * m, val_shift_limit=0, p=probability),
    ]


def zoom(out_probability: float, in_probability: float) -> list[A.BasicTransform]:
    """Lesion size as other clinics frame it, at most one of the two per image:
    - zoom-out shrinks the whole image (lesions to 50-90% of their size, the border replicated): training sets of
      large lesions meet small ones (the ISIC 2017 validation lesions are 4x smaller than its training lesions);
    - zoom-in enlarges it (lesions to 110-150%, the aspect kept, the edges cropped): lesions that fill the frame and
      run off it. Off by default: it did not help HAM10000's images, whose poor masks are faint lesions, not large
      ones (benchmarks/README.md, "Zoom-in")."""
    # zoom-out keeps its x/y scales drawn apart: the default policy's random stream stays the one benchmarked.
    choices = [A.Affine(scale=(0.5, 0.9), border_mode=cv2.BORDER_REPLICATE, p=out_probability),
               A.Affine(scale=(1.1, 1.5), keep_ratio=True, border_mode=cv2.BORDER_REFLECT_101, p=in_probability)]
    chosen = [t for t in choices if t.p > 0]
    if len(chosen) <= 1:
        return chosen
    # OneOf draws a member in proportion to its p, so each zoom keeps its own probability (their sum is <= 1).
    return [A.OneOf(chosen, p=min(1.0, out_probability + in_probability))]


def artifacts(probability: float) -> list[A.BasicTransform]:
    """What dermoscopes and skin put in the picture: a vignette, hairs, a blurred focus."""
    if probability <= 0:
        return []
    return [
        DermoscopeVignette(p=probability),
        HairLines(p=probability),
        A.GaussianBlur(sigma_limit=(0.3, 1.2), p=probability / 2),
    ]


def plain_transform(seed: int | None = None, cfg: NoiseConfig | None = None) -> A.Compose:
    """Flips, rot90 and a mild affine (lesions have no canonical orientation), then the camera/clinic robustness."""
    cfg = cfg or NoiseConfig()
    return A.Compose(
        [
            A.SquareSymmetry(p=1.0),
            A.Affine(scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), rotate=(-15, 15),
                     border_mode=cv2.BORDER_REFLECT_101, p=0.5),
            *zoom(cfg.zoom_out, cfg.zoom_in),
            *photometric(cfg.photometric),
            *artifacts(cfg.artifacts),
        ],
        seed=seed,
    )


def noise_transform(cfg: NoiseConfig, seed: int | None = None) -> A.Compose:
    """The strong student policy; cfg.noise scales every probability and magnitude."""
    s = float(cfg.noise)
    if s <= 0:
        return plain_transform(seed, cfg)

    def p(knob: float) -> float:
        return float(min(1.0, knob * min(s, 1.0)))

    m = min(s, 2.0)  # magnitudes keep growing past 1, probabilities saturate
    return A.Compose(
        [
            A.SquareSymmetry(p=p(cfg.flip_rot90)),
            A.Affine(scale=(1 - 0.25 * m, 1 + 0.25 * m), translate_percent=(-0.1 * m, 0.1 * m),
                     rotate=(-45 * m, 45 * m), shear=(-8 * m, 8 * m),
                     border_mode=cv2.BORDER_REFLECT_101, p=p(cfg.shift_scale_rotate)),
            *zoom(cfg.zoom_out, cfg.zoom_in),
            A.OneOf(
                [
                    A.ElasticTransform(alpha=30 * m, sigma=6, border_mode=cv2.BORDER_REFLECT_101),
                    A.GridDistortion(distort_limit=0.2 * m, border_mode=cv2.BORDER_REFLECT_101),
                    A.OpticalDistortion(distort_limit=0.2 * m, border_mode=cv2.BORDER_REFLECT_101),
                ],
                p=p(cfg.distortion),
            ),
            A.ColorJitter(brightness=0.3 * m, contrast=0.3 * m, saturation=0.3 * m, hue=min(0.5, 0.05 * m),
                          p=p(cfg.color_jitter)),
            A.OneOf(
                [
                    A.GaussianBlur(sigma_limit=(0.3, 1.0 + 1.5 * m)),
                    A.GaussNoise(std_range=(0.02, 0.05 + 0.1 * m)),
                ],
                p=p(cfg.blur_noise),
            ),
            *photometric(cfg.photometric, m),
            *artifacts(cfg.artifacts),
            A.CoarseDropout(num_holes_range=(1, max(1, int(round(6 * m)))), hole_height_range=(0.05, 0.2),
                            hole_width_range=(0.05, 0.2), fill="random_uniform", p=p(cfg.coarse_dropout)),
        ],
        seed=seed,
    )


def build_transform(cfg: NoiseConfig | None, train: bool, seed: int | None = None) -> A.Compose | None:
    if not train:
        return None
    return noise_transform(cfg, seed) if cfg is not None and cfg.noise > 0 else plain_transform(seed, cfg)


_SCALE = (1 / (255 * IMAGENET_STD)).astype(np.float32)
_OFFSET = (-IMAGENET_MEAN / IMAGENET_STD).astype(np.float32)


def normalize(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, H, W) float32, ImageNet statistics (what timm encoders expect).

    One fused multiply-add per channel into the CHW buffer: ~7x faster than the textbook
    expression, which made normalisation the slowest step of a cached data loader.
    """
    out = np.empty((3, *image.shape[:2]), np.float32)
    for c in range(3):
        np.multiply(image[..., c], _SCALE[c], out=out[c], dtype=np.float32)
        out[c] += _OFFSET[c]
    return out


def denormalize(x: np.ndarray) -> np.ndarray:
    """(3, H, W) normalized float -> (H, W, 3) uint8, for pictures."""
    image = x.transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
