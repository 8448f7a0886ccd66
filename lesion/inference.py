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
from lesion.data.transforms import normalize
from lesion.metrics import resize_probabilities


@torch.inference_mode()
def predict_probabilities(model: torch.nn.Module, images: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """(B, 3, S, S) normalized images -> (B, 1, S, S) lesion probabilities; tta averages over flips."""
    probs = torch.sigmoid(model(images).float())
    if tta:
        for dims in ((3,), (2,)):
            probs = probs + torch.sigmoid(model(images.flip(dims)).float()).flip(dims)
        probs = probs / 3
    return probs


def predict_images(model: torch.nn.Module, images: list[np.ndarray], size: int, batch_size: int = 8,
                   tta: bool = False, device: str | torch.device = "cpu") -> list[np.ndarray]:
    """uint8 (H, W, 3) images of any size -> float32 (H, W) probabilities at each image's own size."""
    out: list[np.ndarray] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        batch = torch.from_numpy(np.stack([normalize(resize_image(im, size)) for im in chunk])).to(device)
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
