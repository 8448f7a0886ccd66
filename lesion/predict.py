"""The predict stage: masks and overlay pictures for an image or a folder of images, in batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from lesion.config import PredictConfig
from lesion.data.datasets import ImageDataset
from lesion.data.io import IMAGE_SUFFIXES, read_image
from lesion.errors import DataError, LesionError
from lesion.inference import predict_probabilities
from lesion.metrics import resize_probabilities
from lesion.models.io import load_model
from lesion.plots import overlay

PREVIEW_SIDE = 1024  # overlays are for looking at: keep them screen-sized


def list_images(source: str) -> list[Path]:
    path = Path(source)
    if not source:
        raise DataError("no input given; pass --input IMAGE or --input FOLDER")
    if path.is_file():
        return [path]
    if path.is_dir():
        images = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                        and "_segmentation" not in p.stem.lower() and "_superpixels" not in p.stem)
        if not images:
            raise DataError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) found; pass a folder of dermoscopy images")
        return images
    raise DataError(f"{path}: no such file or folder; check --input")


class _SafeImages(ImageDataset):
    """Bad files become None items (counted) when skip_bad is set."""

    def __init__(self, *args, skip_bad: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.skip_bad = skip_bad

    def __getitem__(self, index: int):
        try:
            return super().__getitem__(index)
        except LesionError as err:
            if not self.skip_bad:
                raise
            return {"error": str(err), "index": index}


def _collate(items: list[dict]) -> dict[str, Any]:
    good = [it for it in items if "error" not in it]
    return {
        "image": torch.stack([it["image"] for it in good]) if good else None,
        "index": [it["index"] for it in good],
        "size": [(it["height"], it["width"]) for it in good],
        "errors": [it["error"] for it in items if "error" in it],
    }


def run_predict(cfg: PredictConfig) -> dict[str, Any]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    images = list_images(cfg.input)
    if cfg.model.endswith(".onnx"):
        from lesion.export import OnnxSegmenter

        model, device = OnnxSegmenter(cfg.model), torch.device("cpu")
        size = cfg.image_size or model.image_size
    else:
        model, meta = load_model(cfg.model, map_location=str(device))
        model.to(device)
        size = cfg.image_size or int(meta["image_size"])
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = _SafeImages([str(p) for p in images], size, None, cfg.max_pixels, skip_bad=cfg.skip_bad)
    loader = DataLoader(ds, cfg.batch_size, shuffle=False, collate_fn=_collate)
    written, skipped = 0, []
    for batch in tqdm(loader, desc="predict", unit="batch"):
        skipped += batch["errors"]
        if batch["image"] is None:
            continue
        probs = predict_probabilities(model, batch["image"].to(device), cfg.tta).cpu()
        for prob, index, hw in zip(probs, batch["index"], batch["size"]):
            stem = images[index].stem
            mask = resize_probabilities(prob[0], hw).numpy() >= cfg.threshold
            Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(out / f"{stem}_segmentation.png")
            original = read_image(images[index], cfg.max_pixels)
            scale = min(1.0, PREVIEW_SIDE / max(hw))
            preview = (int(round(hw[1] * scale)), int(round(hw[0] * scale)))
            small = np.asarray(Image.fromarray(original).resize(preview, Image.BILINEAR))
            small_mask = np.asarray(Image.fromarray(mask.astype(np.uint8)).resize(preview, Image.NEAREST)).astype(bool)
            Image.fromarray(overlay(small, pred=small_mask)).save(out / f"{stem}_overlay.png")
            written += 1
    for line in skipped:
        print(f"[lesion] skipped: {line}")
    print(f"[lesion] wrote {written} mask(s) and overlay(s) to {out}" + (f"; skipped {len(skipped)}" if skipped else ""))
    return {"written": written, "skipped": len(skipped), "out": str(out)}
