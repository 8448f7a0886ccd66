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

from lesion.config import DataConfig, EvaluateConfig, to_flat
from lesion.data.datasets import SegmentationDataset
from lesion.data.prepare import prepare_data
from lesion.errors import ConfigError
from lesion.inference import predict_probabilities
from lesion.metrics import METRIC_NAMES, per_image_scores, resize_probabilities
from lesion.models.io import load_model
from lesion.progress import bar
from lesion.tracking import Tracker, write_json
from lesion.train.engine import evaluate
from lesion.train.finetune import shared_run_name


def _write_masks(model: torch.nn.Module, ds: SegmentationDataset, out: Path, batch_size: int, tta: bool,
                 device: torch.device, progress: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    loader = DataLoader(ds, batch_size, shuffle=False)
    for batch in bar(loader, "write masks", enabled=progress, unit="batches"):
        probs = predict_probabilities(model, batch["image"].to(device), tta).cpu()
        for prob, index in zip(probs, batch["index"].tolist()):
            row = ds.rows[index]
            h, w = ds.cache.load(row.image, row.mask or None).original_size
            mask = resize_probabilities(prob[0], (h, w)).numpy() >= 0.5
            Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(out / f"{row.id}_segmentation.png")


def run_evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    main = accelerator.is_main_process
    tracker = Tracker(enabled=main)
    model, meta = load_model(cfg.model)
    size = cfg.image_size or int(meta["image_size"])
    run_name = shared_run_name(accelerator, cfg.run.run_name, "evaluate")
    workdir = Path(cfg.run.output_dir) / "evaluate" / run_name
    data_cfg = DataConfig(data=cfg.data, image_size=size, cache_dir=cfg.cache_dir, max_pixels=cfg.max_pixels,
                          skip_bad=cfg.skip_bad, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction)
    tags = {"lesion.model": cfg.model, "lesion.model_run": str(meta.get("run_id", ""))}
    with tracker.run("evaluate", run_name, cfg.run.experiment, params=to_flat(cfg), tags=tags):
        data = prepare_data(data_cfg, cfg.run.seed, workdir, main, accelerator.wait_for_everyone)
        rows = [r for r in data.rows if r.mask and (cfg.split == "all" or r.split == cfg.split)]
        if not rows:
            found = sorted({r.split for r in data.rows if r.mask})
            raise ConfigError(f"{cfg.data}: no images with masks in split {cfg.split!r}; splits with masks: {found}")
        # Every image with a mask counts here, also training images held back as unlabelled elsewhere.
        rows = [replace(r, labelled=True) for r in rows]
        prefix = "ph2" if data.format == "ph2" else cfg.split  # metrics say what they were measured on
        ds = SegmentationDataset(rows, data.cache)
        loader = DataLoader(ds, cfg.batch_size, shuffle=False)
        model, loader = accelerator.prepare(model, loader)
        metrics, counts, index = evaluate(model, loader, rows, data.cache, accelerator, prefix=prefix, tta=cfg.tta,
                                           heartbeat=True)
        metrics[f"{prefix}/images"] = float(len(counts))  # scored once each: no padding duplicates, none dropped
        out: dict[str, Any] = {"metrics": metrics, "images": len(rows), "run_id": tracker.run_id}
        if main:
            tracker.log_artifact(data.manifest, "data")
            tracker.log_metrics(metrics, step=0)
            scores = per_image_scores(counts)
            table = workdir / "per_image.csv"
            with open(table, "w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(["id", *METRIC_NAMES])
                for j, i in enumerate(index):
                    writer.writerow([rows[i].id, *(f"{scores[m][j]:.6f}" for m in METRIC_NAMES)])
            tracker.log_artifact(table, "evaluation")
            masks_dir = Path(cfg.out) if cfg.out else workdir / "masks"
            _write_masks(accelerator.unwrap_model(model), ds, masks_dir, cfg.batch_size, cfg.tta, accelerator.device,
                         progress=True)
            out["masks"] = str(masks_dir)
            write_json(workdir / "metrics.json", out)
            tracker.log_artifact(workdir / "metrics.json", "evaluation")
            print("[lesion] " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if not k.endswith("/images"))
                  + f"  ({len(counts)} images)")
            print(f"[lesion] ISIC-format masks: {masks_dir}")
        accelerator.wait_for_everyone()
    return out
