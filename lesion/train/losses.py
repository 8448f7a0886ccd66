"""Segmentation losses that honour a per-pixel validity map.

`valid` is 1 where the target may be trusted: everywhere for real masks,
only at confident pixels for pseudo-labels. Targets may be soft.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_bce(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (per_pixel * valid).sum() / valid.sum().clamp_min(1.0)


def masked_dice(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, eps: float = 1.0,
                per_image: bool = True) -> torch.Tensor:
    """1 - soft Dice over valid pixels: per image and averaged over the batch, or over the whole batch at once
    (smp's DiceLoss; large lesions weigh more)."""
    prob = torch.sigmoid(logits) * valid
    target = target * valid
    dims = tuple(range(1, logits.ndim)) if per_image else tuple(range(logits.ndim))
    inter = (prob * target).sum(dims)
    denom = prob.sum(dims) + target.sum(dims)
    return (1 - (2 * inter + eps) / (denom + eps)).mean()


def segmentation_loss(kind: str, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    logits = logits.float()  # losses in fp32 under bf16 autocast
    if kind == "bce":
        return masked_bce(logits, target, valid)
    if kind == "dice":
        return masked_dice(logits, target, valid)
    if kind == "bce+batch_dice":
        return masked_bce(logits, target, valid) + masked_dice(logits, target, valid, per_image=False)
    return masked_bce(logits, target, valid) + masked_dice(logits, target, valid)
