"""Batched inference shared by evaluate, predict, pseudo-labelling and serving.

Predictions are made at the model's working resolution and resized back to
each image's original size, as the ISIC metrics require.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from lesion.data.cache import resize_image
from lesion.data.color import apply_color_constancy
from lesion.data.transforms import normalize
from lesion.metrics import confusion, resize_probabilities
from lesion.postprocess import is_degenerate, postprocess_mask


@torch.inference_mode()
def predict_probabilities(model: torch.nn.Module, images: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """(B, 3, S, S) normalized images -> (B, 1, S, S) lesion probabilities; tta averages over flips."""
    probs = torch.sigmoid(model(images).float())
    if tta:
        for dims in ((3,), (2,)):
            probs = probs + torch.sigmoid(model(images.flip(dims)).float()).flip(dims)
        probs = probs / 3
    return probs


def network_input(image: np.ndarray, size: int, color_constancy: str = "none") -> np.ndarray:
    """uint8 (H, W, 3) of any size -> (3, size, size) float32: resize, colour constancy, normalise.

    The one preprocessing of every inference path (ImageDataset spells the same steps over the cache).
    """
    return normalize(apply_color_constancy(resize_image(image, size), color_constancy))


def final_mask(prob: np.ndarray | torch.Tensor, threshold: float = 0.5, postprocess: str = "none") -> np.ndarray:
    """Probabilities at the original size -> the bool mask a user gets: threshold, then post-processing."""
    prob = prob.numpy() if isinstance(prob, torch.Tensor) else prob
    return postprocess_mask(prob >= threshold, postprocess)


def mask_report(mask: np.ndarray) -> dict[str, float | bool]:
    """What predict and serving say of each mask: its lesion fraction and whether it is degenerate."""
    return {"lesion_fraction": float(mask.mean()), "degenerate": is_degenerate(mask)}


def score_prediction(prob: torch.Tensor, truth: np.ndarray, postprocess: str = "none") -> np.ndarray:
    """(h, w) working-size probabilities vs. the (H, W) bool truth -> [tp, fp, fn, tn, degenerate].

    The mask is the one a user gets (threshold 0.5 and post-processing at the original size), so
    validation scores what evaluate, predict and serving hand out.
    """
    mask = final_mask(resize_probabilities(prob.float().cpu(), truth.shape), 0.5, postprocess)
    return np.append(confusion(mask, truth), int(is_degenerate(mask)))


def predict_images(model: torch.nn.Module, images: list[np.ndarray], size: int, batch_size: int = 8,
                   tta: bool = False, device: str | torch.device = "cpu",
                   color_constancy: str = "none") -> list[np.ndarray]:
    """uint8 (H, W, 3) images of any size -> float32 (H, W) probabilities at each image's own size."""
    out: list[np.ndarray] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        batch = torch.from_numpy(np.stack([network_input(im, size, color_constancy) for im in chunk])).to(device)
        probs = predict_probabilities(model, batch, tta).cpu()
        for im, p in zip(chunk, probs):
            out.append(resize_probabilities(p[0], im.shape[:2]).numpy())
    return out


def mask_png(mask: np.ndarray) -> bytes:
    """Bool (H, W) -> 0/255 PNG bytes (ISIC submission format)."""
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def image_png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()
