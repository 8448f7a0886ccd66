"""Mask post-processing as the ISIC pipelines do it, and a guard against degenerate masks.

A dermoscopy image holds one lesion: `largest_fill` keeps the largest
connected component of the thresholded mask and fills its holes, which removes
speckles on hairs and bubbles and closes lesions with bright regression areas.
It is applied at the original resolution, after the threshold, in evaluate,
predict, serving and the validation of every training run (the setting lives
in the model's model.json); the probabilities themselves are never changed.

A degenerate mask covers most of the frame or touches every border of it: the
failure of a model on images from an unseen camera (the whole frame called
lesion). evaluate and predict flag each one and report their share as
`<split>/degenerate`, so a user sees it without looking at 200 pictures.
"""

from __future__ import annotations

import cv2
import numpy as np

MODES = ("largest_fill", "largest", "fill", "none")
DEGENERATE_AREA = 0.9  # a lesion mask covering more of the frame than this is suspect


def largest_component(mask: np.ndarray) -> np.ndarray:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 2:  # background only, or one component
        return mask.astype(bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == largest


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Background not reachable from the border becomes lesion."""
    m = mask.astype(np.uint8)
    padded = np.pad(m, 1)  # the border is background, so one flood fill from a corner reaches all outer background
    flood = padded.copy()
    cv2.floodFill(flood, None, (0, 0), 1)
    holes = flood[1:-1, 1:-1] == 0
    return mask.astype(bool) | holes


def postprocess_mask(mask: np.ndarray, mode: str) -> np.ndarray:
    """(H, W) bool -> (H, W) bool."""
    if mode in ("none", ""):
        return mask.astype(bool)
    if mode not in MODES:
        raise ValueError(f"unknown postprocess {mode!r}; use one of {', '.join(MODES)}")
    out = mask.astype(bool)
    if mode in ("largest_fill", "largest"):
        out = largest_component(out)
    if mode in ("largest_fill", "fill"):
        out = fill_holes(out)
    return out


def is_degenerate(mask: np.ndarray, max_area: float = DEGENERATE_AREA) -> bool:
    """Whether a predicted mask covers more than max_area of the frame or touches all four borders."""
    mask = mask.astype(bool)
    if mask.mean() > max_area:
        return True
    return bool(mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any())
