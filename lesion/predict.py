"""The predict stage: masks and overlay pictures for an image or a folder of images, in batches."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from lesion.config import PredictConfig
from lesion.data.datasets import ImageDataset
from lesion.data.io import IMAGE_SUFFIXES, read_image
from lesion.errors import ConfigError, DataError, LesionError
from lesion.inference import final_mask, mask_report, predict_probabilities
from lesion.metrics import resize_probabilities
from lesion.models.io import model_config_from_meta
from lesion.outputs import check_out_dir, make_out_dir, save_png_inside, save_text_inside
from lesion.plots import overlay
from lesion.progress import bar
from lesion.registry import load_model

PREVIEW_SIDE = 1024  # overlays are for looking at: keep them screen-sized


DERIVED_SUFFIXES = ("_segmentation", "_probability", "_superpixels", "_overlay", "_mask", "_lesion")  # masks and our own outputs


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
    """Where an image's outputs go, relative to out: sub-folders of the input are kept."""
    root = Path(source)
    return image.relative_to(root).with_suffix("") if root.is_dir() else Path(image.stem)


def check_unique_outputs(images: list[Path], source: str) -> list[Path]:
    """Each image's output stem; two images with one stem (a.jpg, a.png) would write one mask: refused."""
    stems = [output_stem(p, source) for p in images]
    seen: dict[str, Path] = {}
    for image, stem in zip(images, stems):
        key = str(stem).casefold()  # a.jpg and A.png collide on a case-insensitive file system
        if key in seen:
            raise DataError(f"{seen[key]} and {image} would both be written as {stem}_segmentation.png; rename one "
                            "of them or predict them separately (outputs are named after the file name without its "
                            "extension)")
        seen[key] = image
    return stems


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
    out = check_out_dir(cfg.out)
    images, passed_over = list_images(cfg.input, cfg.out)
    stems = check_unique_outputs(images, cfg.input)
    if passed_over:
        print(f"[lesion] {len(images)} image(s) to predict; passed over {passed_over} mask/prediction file(s) "
              f"({', '.join(DERIVED_SUFFIXES)}, masks/ and GroundTruth folders)")
    if cfg.model.endswith(".onnx"):
        from lesion.export import OnnxSegmenter

        model, device = OnnxSegmenter(cfg.model), torch.device("cpu")
        size, meta = cfg.infer.image_size or model.image_size, model.meta
        if size <= 0:
            raise ConfigError(f"{cfg.model} does not say its working resolution (not exported by lesion export?); "
                              "pass image_size")
    else:
        model, meta = load_model(cfg.model, map_location=str(device))
        model.to(device)
        size = cfg.infer.image_size or int(meta["image_size"])
    # The model's own input and output conventions (model.json, or the ONNX file's metadata).
    conventions = model_config_from_meta(meta)
    postprocess = conventions.postprocess if cfg.infer.postprocess == "model" else cfg.infer.postprocess
    make_out_dir(out)
    ds = _SafeImages([str(p) for p in images], size, None, cfg.max_pixels, skip_bad=cfg.skip_bad,
                     color_constancy=conventions.color_constancy)
    loader = DataLoader(ds, cfg.infer.batch_size, shuffle=False, collate_fn=_collate)
    written, skipped, reports = 0, [], []
    for batch in bar(loader, "predict", unit="batches"):
        skipped += batch["errors"]
        if batch["image"] is None:
            continue
        probs = predict_probabilities(model, batch["image"].to(device), cfg.infer.tta).cpu()
        for prob, index, hw in zip(probs, batch["index"], batch["size"]):
            stem = stems[index]
            full = resize_probabilities(prob[0], hw)
            mask = final_mask(full, cfg.threshold, postprocess)
            if cfg.probabilities:
                save_png_inside(out, f"{stem}_probability.png",
                                Image.fromarray((full.numpy() * 255).round().astype(np.uint8), mode="L"))
            save_png_inside(out, f"{stem}_segmentation.png", Image.fromarray(mask.astype(np.uint8) * 255, mode="L"))
            reports.append({"image": str(images[index]), "mask": f"{stem}_segmentation.png", **mask_report(mask)})
            original = read_image(images[index], cfg.max_pixels)
            scale = min(1.0, PREVIEW_SIDE / max(hw))
            preview = (int(round(hw[1] * scale)), int(round(hw[0] * scale)))
            small = np.asarray(Image.fromarray(original).resize(preview, Image.BILINEAR))
            small_mask = np.asarray(Image.fromarray(mask.astype(np.uint8)).resize(preview, Image.NEAREST)).astype(bool)
            save_png_inside(out, f"{stem}_overlay.png", Image.fromarray(overlay(small, pred=small_mask)))
            written += 1
    for line in skipped:
        print(f"[lesion] skipped: {line}")
    degenerate = [r for r in reports if r["degenerate"]]
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=["image", "mask", "lesion_fraction", "degenerate"])
    writer.writeheader()
    writer.writerows({**r, "lesion_fraction": f"{r['lesion_fraction']:.6f}", "degenerate": int(r["degenerate"])}
                     for r in reports)
    save_text_inside(out, "predictions.csv", table.getvalue())
    print(f"[lesion] wrote {written} mask(s) and overlay(s) to {out}" + (f"; skipped {len(skipped)}" if skipped else ""))
    if degenerate:
        print(f"[lesion] {len(degenerate)} of {written} mask(s) are degenerate (they cover most of the frame or touch "
              f"every border), e.g. {Path(degenerate[0]['image']).name}: check them; see {out / 'predictions.csv'}")
    return {"written": written, "skipped": len(skipped), "degenerate": len(degenerate), "out": str(out)}
