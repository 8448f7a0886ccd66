"""The evaluate stage: score a model on a split with ISIC metrics and write ISIC submission masks.

Masks are written as `<id>_segmentation.png` (0/255, original size), so the
official `isic-challenge-scoring` package can score the same folder.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from PIL import Image
from torch.utils.data import DataLoader

from lesion.config import DataConfig, EvaluateConfig, data_config
from lesion.data.datasets import SegmentationDataset
from lesion.errors import ConfigError
from lesion.inference import final_mask, predict_probabilities
from lesion.metrics import METRIC_NAMES, per_image_scores, resize_probabilities
from lesion.outputs import check_out_dir, make_out_dir, save_png_inside, write_json
from lesion.progress import bar
from lesion.registry import load_model
from lesion.stage import stage
from lesion.train.segmentation import evaluate


def _write_masks(model: torch.nn.Module, ds: SegmentationDataset, out: Path, batch_size: int, tta: bool,
                 device: torch.device, progress: bool, postprocess: str) -> None:
    make_out_dir(out)
    loader = DataLoader(ds, batch_size, shuffle=False)
    for batch in bar(loader, "write masks", enabled=progress, unit="batches"):
        probs = predict_probabilities(model, batch["image"].to(device), tta).cpu()
        for prob, index in zip(probs, batch["index"].tolist()):
            row = ds.rows[index]
            h, w = ds.cache.load(row.image, row.mask or None).original_size
            mask = final_mask(resize_probabilities(prob[0], (h, w)), 0.5, postprocess)
            save_png_inside(out, f"{row.id}_segmentation.png", Image.fromarray(mask.astype(np.uint8) * 255, mode="L"))


def run_evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    if cfg.out:
        check_out_dir(cfg.out)  # before hours of scoring
    loaded: dict[str, Any] = {}

    def load_source() -> tuple[DataConfig, dict[str, str]]:
        loaded["model"], meta = load_model(cfg.model)
        size = cfg.infer.image_size or int(meta["image_size"])
        return data_config(cfg.data, image_size=size), {"lesion.model": cfg.model,
                                                         "lesion.model_run": str(meta.get("run_id", ""))}

    # stage's fresh_workdir: masks of an older, unfinished attempt must not mix in.
    with stage("evaluate", cfg, setup=load_source, accelerator=Accelerator(cpu=not torch.cuda.is_available())) as ctx:
        accelerator, tracker, workdir, data, main = ctx.accelerator, ctx.tracker, ctx.workdir, ctx.data, ctx.main
        model = loaded["model"]
        rows = [r for r in data.rows if r.mask and (cfg.split == "all" or r.split == cfg.split)]
        if not rows:
            found = sorted({r.split for r in data.rows if r.mask})
            raise ConfigError(f"{cfg.data.data}: no images with masks in split {cfg.split!r}; splits with masks: {found}")
        # Every image with a mask counts here, also training images held back as unlabelled elsewhere.
        rows = [replace(r, labelled=True) for r in rows]
        prefix = "ph2" if data.format == "ph2" else cfg.split  # metrics say what they were measured on
        ds = SegmentationDataset(rows, data.cache, color_constancy=model.config.color_constancy)
        postprocess = model.config.postprocess if cfg.infer.postprocess == "model" else cfg.infer.postprocess
        loader = DataLoader(ds, cfg.infer.batch_size, shuffle=False)
        model, loader = accelerator.prepare(model, loader)
        result = evaluate(model, loader, rows, data.cache, accelerator, prefix=prefix, tta=cfg.infer.tta,
                          postprocess=postprocess, heartbeat=True)
        metrics, counts, index = result.metrics, result.counts, result.index
        metrics[f"{prefix}/images"] = float(len(counts))  # scored once each: no padding duplicates, none dropped
        out: dict[str, Any] = {"metrics": metrics, "images": len(rows), "run_id": tracker.run_id}
        if main:
            tracker.log_metrics(metrics, step=0)
            scores = per_image_scores(counts)
            table = workdir / "per_image.csv"
            with open(table, "w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(["id", *METRIC_NAMES, "degenerate"])
                for j, i in enumerate(index):
                    writer.writerow([rows[i].id, *(f"{scores[m][j]:.6f}" for m in METRIC_NAMES),
                                     int(result.degenerate[j])])
            tracker.log_artifact(table, "evaluation")
            masks_dir = Path(cfg.out) if cfg.out else workdir / "masks"
            _write_masks(accelerator.unwrap_model(model), ds, masks_dir, cfg.infer.batch_size, cfg.infer.tta, accelerator.device,
                         progress=True, postprocess=postprocess)
            out["masks"] = str(masks_dir)
            write_json(workdir / "metrics.json", out)
            tracker.log_artifact(workdir / "metrics.json", "evaluation")
            print("[lesion] " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if not k.endswith("/images"))
                  + f"  ({len(counts)} images)")
            if result.degenerate.any():
                flagged = [rows[i].id for i, bad in zip(index, result.degenerate) if bad]
                print(f"[lesion] {len(flagged)} degenerate mask(s) (covering most of the frame or touching every "
                      f"border), e.g. {', '.join(flagged[:5])}; see {table.name}")
            print(f"[lesion] ISIC-format masks: {masks_dir}")
    return out
