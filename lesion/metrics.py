"""ISIC Task 1 segmentation metrics at the mask's original resolution.

Per image: the prediction is resized back to the ground truth's size, counted
into a confusion matrix (tp, fp, fn, tn), scored, and the scores are
macro-averaged over images. Conventions match the official
`isic-challenge-scoring` 5.6.0 (segmentation.py, metrics.py, load_image.py):

- jaccard, dice, sensitivity and specificity score 1.0 when their denominator
  is 0 (the official "freebie"); accuracy's denominator is the pixel count;
- threshold_jaccard is jaccard where jaccard >= 0.65, else 0;
- a PNG mask must be 8-bit greyscale (or 1-bit) and a pixel > 128 is lesion;
- the summary is the plain mean over images.

`miou2`, the mean of lesion IoU and background IoU per image (background IoU
under the same empty-denominator convention), is for comparison with the
Noisy Student segmentation papers; the official scorer does not report it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from lesion.errors import DataError
from lesion.postprocess import postprocess_mask

METRIC_NAMES = ("jaccard", "threshold_jaccard", "dice", "sensitivity", "specificity", "accuracy", "miou2")
ISIC_JACCARD_THRESHOLD = 0.65
PNG_LESION_ABOVE = 128  # official load: `image > 128`, so 128 itself is background
TRUTH_SUFFIXES = ("_segmentation.png", "_Segmentation.png")  # 2016 used the capitalised form
PRED_SUFFIX = "_segmentation.png"


def _tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    # torch.as_tensor rejects numpy views with negative strides (np.flip, [::-1]).
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))


def confusion(pred: torch.Tensor | np.ndarray, truth: torch.Tensor | np.ndarray) -> np.ndarray:
    """Bool (H, W) arrays, numpy or torch -> int64 [tp, fp, fn, tn]."""
    return confusion_batch(_tensor(pred)[None], _tensor(truth)[None])[0].cpu().numpy()


def confusion_batch(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool tensors -> (B, 4) int64 [tp, fp, fn, tn], on the tensors' device."""
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and truth {tuple(truth.shape)} differ in shape")
    pred, truth = pred.bool().flatten(1), truth.bool().flatten(1)
    tp = (pred & truth).sum(1)
    fp = pred.sum(1) - tp
    fn = truth.sum(1) - tp
    tn = pred.shape[1] - tp - fp - fn
    return torch.stack([tp, fp, fn, tn], 1).long()


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    # Official convention: an undefined ratio (0 / 0) is a perfect score.
    return np.where(den == 0, 1.0, num / np.where(den == 0, 1.0, den))


def per_image_scores(counts: np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
    """(N, 4) or (4,) counts [tp, fp, fn, tn] -> {metric: (N,) float64}, in METRIC_NAMES order."""
    tp, fp, fn, tn = np.asarray(counts, dtype=np.float64).reshape(-1, 4).T
    jaccard = _ratio(tp, tp + fp + fn)
    scores = {
        "jaccard": jaccard,
        "threshold_jaccard": np.where(jaccard >= ISIC_JACCARD_THRESHOLD, jaccard, 0.0),
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "accuracy": (tp + tn) / (tp + fp + fn + tn),  # never 0: a mask has pixels
        "miou2": (jaccard + _ratio(tn, tn + fp + fn)) / 2,
    }
    return {name: scores[name] for name in METRIC_NAMES}


def summarize(counts: np.ndarray | torch.Tensor) -> dict[str, float]:
    """(N, 4) counts -> macro averages over images (NaN for no images), in METRIC_NAMES order."""
    scores = per_image_scores(counts)
    return {name: float(v.mean()) if v.size else float("nan") for name, v in scores.items()}


def resize_probabilities(prob: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(h, w) or (B, 1, h, w) probabilities -> float32 in the same layout at size (H, W).

    Bilinear with align_corners=False: how working-resolution predictions go back
    to the original mask size everywhere in lesion (evaluate, predict, the engine).
    """
    if prob.ndim not in (2, 4):
        raise ValueError(f"expected (h, w) or (B, 1, h, w) probabilities, got shape {tuple(prob.shape)}")
    size = (int(size[0]), int(size[1]))
    if tuple(prob.shape[-2:]) == size:
        return prob.float()
    x = prob.float()[None, None] if prob.ndim == 2 else prob.float()
    out = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return out[0, 0] if prob.ndim == 2 else out


def score_image(prediction: torch.Tensor | np.ndarray, truth: torch.Tensor | np.ndarray,
                threshold: float = 0.5, postprocess: str = "none") -> np.ndarray:
    """(h, w) prediction at any resolution vs. (H, W) bool truth -> confusion counts [4].

    Float probabilities are resized to the truth's size and `prob >= threshold` is
    lesion (as predict and evaluate write masks). A bool mask of the truth's size
    passes through; one of another size is resized as 0/1 probabilities and cut
    at 0.5, which upsamples smoothly instead of in blocks.
    """
    truth_t = _tensor(truth).bool()
    pred = _tensor(prediction).to(truth_t.device)
    if pred.dtype == torch.bool:
        if pred.shape != truth_t.shape:
            pred = resize_probabilities(pred, tuple(truth_t.shape)) >= 0.5
    elif pred.is_floating_point():
        pred = resize_probabilities(pred, tuple(truth_t.shape)) >= threshold
    else:
        raise TypeError(f"prediction must be bool or float probabilities, got {pred.dtype}")
    if postprocess not in ("none", ""):  # as the user gets the mask (lesion.postprocess), at the original size
        pred = torch.from_numpy(postprocess_mask(pred.cpu().numpy(), postprocess)).to(truth_t.device)
    return confusion(pred, truth_t)


def _read_png_mask(path: Path) -> np.ndarray:
    """An ISIC mask PNG -> (H, W) bool, read exactly as the official scorer reads it."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode == "1":
                img = img.convert("L")
            if img.mode != "L":
                raise DataError(f"{path}: mask is mode {img.mode}, not 8-bit greyscale; "
                                "save it as a single-channel 0/255 PNG")
            return np.asarray(img) > PNG_LESION_ABOVE
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{path}: cannot read the mask ({err.__class__.__name__}); re-export it as a 0/255 PNG") from None


def _truth_files(truth_dir: Path) -> dict[str, Path]:
    # Anything else in the folder (ATTRIBUTION.txt, LICENSE.txt, images) is not ground truth.
    files = {}
    for p in sorted(truth_dir.iterdir()):
        for suffix in TRUTH_SUFFIXES:
            if p.name.endswith(suffix) and p.is_file():
                files[p.name.removesuffix(suffix)] = p
    return files


def score_folders(pred_dir: str | Path, truth_dir: str | Path) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Score ISIC submission folders: pred <id>_segmentation.png against truth <id>_segmentation.png.

    Masks are 0/255 PNGs at the original size (truth may use 2016's <id>_Segmentation.png).
    Returns ({id: {metric: value}}, macro averages). A missing or extra prediction,
    an unreadable or non-greyscale mask, or a size mismatch raises DataError.
    """
    pred_dir, truth_dir = Path(pred_dir), Path(truth_dir)
    for folder, what in ((truth_dir, "ground-truth"), (pred_dir, "prediction")):
        if not folder.is_dir():
            raise DataError(f"{folder}: {what} folder not found; pass the folder of <id>_segmentation.png masks")
    truths = _truth_files(truth_dir)
    if not truths:
        raise DataError(f"{truth_dir}: no <id>_segmentation.png ground-truth masks; pass the ground-truth folder")
    expected = {image_id + PRED_SUFFIX for image_id in truths}
    # Hidden files (.DS_Store) are a file manager's, not a submission's.
    extra = sorted(p for p in pred_dir.iterdir() if p.name not in expected and not p.name.startswith("."))
    if extra:
        raise DataError(f"{extra[0]}: not the prediction of any ground-truth mask ({len(extra)} such files); "
                        "remove it, or name predictions <id>_segmentation.png after the ground truth")
    per_image: dict[str, dict[str, float]] = {}
    counts = []
    for image_id, truth_path in truths.items():
        pred_path = pred_dir / (image_id + PRED_SUFFIX)
        if not pred_path.is_file():
            raise DataError(f"{pred_path}: prediction missing for {truth_path.name}; predict every image of the split")
        pred, truth = _read_png_mask(pred_path), _read_png_mask(truth_path)
        if pred.shape != truth.shape:
            raise DataError(f"{pred_path}: prediction is {pred.shape[1]}x{pred.shape[0]} but ground truth is "
                            f"{truth.shape[1]}x{truth.shape[0]}; write masks at the original image size")
        c = confusion(pred, truth)
        counts.append(c)
        per_image[image_id] = {name: float(v[0]) for name, v in per_image_scores(c).items()}
    return per_image, summarize(np.stack(counts))
