"""Colour constancy: every image seen under the same (neutral) illuminant, whatever camera and light took it.

Shades of Gray (Finlayson & Trezzi 2004) estimates the illuminant of each
channel as its Minkowski p-norm mean and scales the channels so that the
estimate becomes grey; p=6 is the standard in dermoscopy pipelines (Barata et
al. 2015; the ISIC 2017/2018 winners). It is applied to the working-size image
(after the resize, before augmentation and normalisation), identically in
training, pseudo-labelling, evaluate, predict, serving and the ONNX path: all
of them call `apply_color_constancy` with the setting saved in the model's
model.json. A neutral image is left as it is, and applying it twice changes
nothing more (up to rounding).
"""

from __future__ import annotations

import numpy as np

METHODS = ("shades_of_gray", "none")
MINKOWSKI_P = 6


def shades_of_gray(image: np.ndarray, p: int = MINKOWSKI_P) -> np.ndarray:
    """(H, W, 3) uint8 -> the same image with its p-norm illuminant made grey (uint8)."""
    x = image.astype(np.float32)
    # The p-norm mean of each channel; the max keeps a black image (or channel) from dividing by zero.
    illuminant = np.power(np.mean(np.power(x / 255.0, p), axis=(0, 1)), 1.0 / p)
    illuminant = np.maximum(illuminant, 1e-6)
    gains = np.linalg.norm(illuminant) / (illuminant * np.sqrt(3.0))
    return np.clip(np.rint(x * gains), 0, 255).astype(np.uint8)


def apply_color_constancy(image: np.ndarray, method: str) -> np.ndarray:
    if method == "shades_of_gray":
        return shades_of_gray(image)
    if method in ("none", ""):
        return image
    raise ValueError(f"unknown colour constancy {method!r}; use one of {', '.join(METHODS)}")
