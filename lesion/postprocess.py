"""Mask post-processing as the ISIC pipelines do it, and a guard against degenerate masks.

A dermoscopy image holds one lesion, framed near its centre: `central_fill`
keeps one connected component of the thresholded mask, the one with the most
pixels once each pixel is weighted by its closeness to the image centre, and
fills its holes. That removes speckles on hairs and bubbles, closes lesions
with bright regression areas, and drops dark vignette corners that outgrow a
faint central lesion, which `largest_fill` (the plain largest component)
keeps (benchmarks/README.md, "Central or largest component"). For images whose
lesions are not centred (clinical photographs, crops), use `largest_fill`.
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

MODES = ("central_fill", "central", "largest_fill", "largest", "fill", "none")
DEGENERATE_AREA = 0.9  # a lesion mask covering more of the frame than this is suspect
# Width of the centre prior: each pixel of a component counts exp(-(offset / CENTRE_WIDTH)^2), offset being its distance
# from the image centre with the corners at 1: a pixel halfway to a corner counts 13%, one at a corner 0.03%.
CENTRE_WIDTH = 0.35


def largest_component(mask: np.ndarray) -> np.ndarray:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 2:  # background only, or one component
        return mask.astype(bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == largest


def central_component(mask: np.ndarray, width: float = CENTRE_WIDTH) -> np.ndarray:
    """The connected component with the most pixels once each is weighted by its closeness to the image centre.

    Pixels, not centroids, are weighted: a vignette ring or a frame around the image has its centroid at the
    centre but its pixels at the edges. Distances are in pixels, the same along both axes, over the half-diagonal.
    """
    count, labels, _, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 2:
        return mask.astype(bool)
    h, w = mask.shape
    yy, xx = np.ogrid[0:h, 0:w]
    offset = np.hypot(xx - (w - 1) / 2, yy - (h - 1) / 2) / np.hypot(w / 2, h / 2)
    score = np.bincount(labels.ravel(), weights=np.exp(-(offset / width) ** 2).ravel(), minlength=count)
    return labels == 1 + int(np.argmax(score[1:]))


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
    if mode.startswith("central"):
        out = central_component(out)
    elif mode.startswith("largest"):
        out = largest_component(out)
    if mode.endswith("fill"):
        out = fill_holes(out)
    return out


def is_degenerate(mask: np.ndarray, max_area: float = DEGENERATE_AREA) -> bool:
    """Whether a predicted mask covers more than max_area of the frame or touches all four borders."""
    mask = mask.astype(bool)
    if mask.mean() > max_area:
        return True
    return bool(mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any())
