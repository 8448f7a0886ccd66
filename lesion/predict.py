"""The predict stage: masks and overlay pictures for an image or a folder of images, in batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from lesion.config import PredictConfig
from lesion.data.datasets import ImageDataset
from lesion.data.io import IMAGE_SUFFIXES, read_image
from lesion.errors import DataError, LesionError
from lesion.inference import predict_probabilities
from lesion.metrics import resize_probabilities
from lesion.models.io import load_model
from lesion.plots import overlay
from lesion.progress import bar

PREVIEW_SIDE = 1024  # overlays are for looking at: keep them screen-sized


DERIVED_SUFFIXES = ("_segmentation", "_superpixels", "_overlay", "_mask", "_lesion")  # masks and our own outputs


def _is_derived(path: Path, root: Path) -> bool:
    """A mask, a superpixel map or an earlier prediction, not a dermoscopy image."""
    folders = [p.lower() for p in path.relative_to(root).parts[:-1]]
    return (path.stem.lower().endswith(DERIVED_SUFFIXES)
            or any(f == "masks" or "groundtruth" in f or f.endswith("_lesion") for f in folders))


def list_images(source: str, out: str | Path | None = None) -> tuple[list[Path], int]:
    """The images to predict (a file, or a folder searched recursively) and how many other files were passed over."""
    path = Path(source)
    if not source:
        raise DataError("no input given; pass --input IMAGE or --input FOLDER")
    if path.is_file():
        return [path], 0
    if path.is_dir():
        out_dir = Path(out).resolve() if out else None
        candidates = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                            and not (out_dir and p.resolve().is_relative_to(out_dir)))
        images = [p for p in candidates if not _is_derived(p, path)]
        if not images:
            raise DataError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) found besides masks and predictions; "
                            "pass a folder of dermoscopy images")
        return images, len(candidates) - len(images)
    raise DataError(f"{path}: no such file or folder; check --input")


def output_stem(image: Path, source: str) -> Path:
    """Where an image's outputs go, relative to out: sub-folders of the input are kept, so names never collide."""
    root = Path(source)
    return image.relative_to(root).with_suffix("") if root.is_dir() else Path(image.stem)


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
    images, passed_over = list_images(cfg.input, cfg.out)
    if passed_over:
        print(f"[lesion] {len(images)} image(s) to predict; passed over {passed_over} mask/prediction file(s) "
              f"({', '.join(DERIVED_SUFFIXES)}, masks/ and GroundTruth folders)")
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
    for batch in bar(loader, "predict", unit="batches"):
        skipped += batch["errors"]
        if batch["image"] is None:
            continue
        probs = predict_probabilities(model, batch["image"].to(device), cfg.tta).cpu()
        for prob, index, hw in zip(probs, batch["index"], batch["size"]):
            stem = output_stem(images[index], cfg.input)
            (out / stem).parent.mkdir(parents=True, exist_ok=True)
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
