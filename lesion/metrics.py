"""ISIC-conformant segmentation metrics at the mask's original resolution.

Per image: a confusion matrix (tp, fp, fn, tn) of the prediction resized back
to the ground truth's size, then the metrics, then the macro average over
images, exactly as the official `isic-challenge-scoring` 5.6.0 does
(segmentation.py / metrics.py there): an empty denominator scores 1.0 for
jaccard, dice, sensitivity and specificity ("freebie"), and thresholded
Jaccard is 0 below 0.65. `miou2` (mean of lesion and background IoU per
image) is for comparison with the Noisy Student segmentation papers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lesion.errors import DataError

METRIC_NAMES = ("jaccard", "threshold_jaccard", "dice", "sensitivity", "specificity", "accuracy", "miou2")
ISIC_JACCARD_THRESHOLD = 0.65


def confusion(pred, truth) -> np.ndarray:
    """Bool (H, W) arrays (numpy or torch) -> int64 [tp, fp, fn, tn]."""
    pred = torch.as_tensor(pred).bool()
    truth = torch.as_tensor(truth).bool()
    return confusion_batch(pred[None], truth[None])[0].numpy()


def confusion_batch(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool -> (B, 4) int64 [tp, fp, fn, tn], on the tensors' device."""
    pred, truth = pred.bool().flatten(1), truth.bool().flatten(1)
    tp = (pred & truth).sum(1)
    fp = (pred & ~truth).sum(1)
    fn = (~pred & truth).sum(1)
    tn = pred.shape[1] - tp - fp - fn
    return torch.stack([tp, fp, fn, tn], 1).long()


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    # The official scorer's convention: an undefined ratio is a perfect score.
    return np.where(den == 0, 1.0, num / np.maximum(den, 1))


def per_image_scores(counts) -> dict[str, np.ndarray]:
    c = np.asarray(counts, dtype=np.float64).reshape(-1, 4)
    tp, fp, fn, tn = c.T
    jaccard = _ratio(tp, tp + fp + fn)
    background_iou = _ratio(tn, tn + fp + fn)
    return {
        "jaccard": jaccard,
        "threshold_jaccard": np.where(jaccard >= ISIC_JACCARD_THRESHOLD, jaccard, 0.0),
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "accuracy": (tp + tn) / np.maximum(tp + fp + fn + tn, 1),
        "miou2": (jaccard + background_iou) / 2,
    }


def summarize(counts) -> dict[str, float]:
    """Macro averages over images, in METRIC_NAMES order."""
    scores = per_image_scores(counts)
    return {name: float(scores[name].mean()) if len(scores[name]) else float("nan") for name in METRIC_NAMES}


def resize_probabilities(prob: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(h, w) or (B, 1, h, w) probabilities -> the same layout at size (H, W), bilinear."""
    if tuple(prob.shape[-2:]) == tuple(size):
        return prob
    x = prob[None, None] if prob.ndim == 2 else prob
    out = F.interpolate(x.float(), size=tuple(size), mode="bilinear", align_corners=False)
    return out[0, 0] if prob.ndim == 2 else out


def score_image(prediction, truth, threshold: float = 0.5) -> np.ndarray:
    """Confusion counts of a prediction at any resolution against a full-size bool truth.

    Float probabilities are resized to the truth's size, then `>= threshold` is lesion;
    bool masks of another size are resized by nearest neighbour.
    """
    truth = torch.as_tensor(np.asarray(truth)).bool()
    pred = torch.as_tensor(prediction)
    if pred.dtype == torch.bool:
        if pred.shape != truth.shape:
            pred = F.interpolate(pred[None, None].float(), size=tuple(truth.shape), mode="nearest")[0, 0] > 0.5
    else:
        pred = resize_probabilities(pred.float(), tuple(truth.shape)) >= threshold
    return confusion(pred, truth)


def _read_binary(path: Path) -> np.ndarray:
    # As the official scorer: 8-bit grey, > 128 is lesion.
    with Image.open(path) as img:
        return np.asarray(img.convert("L")) > 128


def _truth_files(truth_dir: Path) -> dict[str, Path]:
    files = {}
    for p in sorted(truth_dir.glob("*.png")):
        for suffix in ("_segmentation", "_Segmentation"):
            if p.stem.endswith(suffix):
                files[p.stem[: -len(suffix)]] = p
    return files


def score_folders(pred_dir: str | Path, truth_dir: str | Path) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Score ISIC submission folders (<id>_segmentation.png, 0/255, original size)."""
    pred_dir, truth_dir = Path(pred_dir), Path(truth_dir)
    truths = _truth_files(truth_dir)
    if not truths:
        raise DataError(f"{truth_dir}: no <id>_segmentation.png ground-truth masks; pass the ground-truth folder")
    preds = {p.stem.removesuffix("_segmentation"): p for p in pred_dir.glob("*_segmentation.png")}
    extra = sorted(set(preds) - set(truths))
    if extra:
        raise DataError(f"{preds[extra[0]]}: prediction without ground truth ({len(extra)} such files); "
                        "remove it or score against the matching ground-truth folder")
    per_image, counts = {}, []
    for image_id, truth_path in truths.items():
        if image_id not in preds:
            raise DataError(f"{pred_dir / (image_id + '_segmentation.png')}: prediction missing for {truth_path.name}; "
                            "predict every image of the split")
        pred, truth = _read_binary(preds[image_id]), _read_binary(truth_path)
        if pred.shape != truth.shape:
            raise DataError(f"{preds[image_id]}: prediction is {pred.shape[1]}x{pred.shape[0]} but ground truth is "
                            f"{truth.shape[1]}x{truth.shape[0]}; write masks at the original image size")
        c = confusion(pred, truth)
        counts.append(c)
        per_image[image_id] = {k: float(v[0]) for k, v in per_image_scores(c).items()}
    return per_image, summarize(np.stack(counts))
