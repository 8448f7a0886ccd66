"""Pseudo-labelling: the teacher's soft predictions for the unlabelled pool.

Inference streams batch by batch (torch.inference_mode); Accelerate splits the
pool across processes and the main process writes each batch as it arrives,
so memory stays flat however large the pool. Every probability map is kept
(8-bit PNG at the working size, about 5-20 KB each); the image-level filters
(min_confidence, min_area) and the pixel threshold are applied afterwards, so
tuning them never needs the teacher again.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from lesion.data.cache import PreprocessCache
from lesion.data.datasets import ImageDataset, load_pseudo_label
from lesion.data.splits import Row
from lesion.inference import predict_probabilities
from lesion.progress import bar

STATS = "stats.csv"
DECISIONS = "pseudo_labels.csv"


@dataclass
class PseudoStats:
    id: str
    image: str
    file: str  # the probability PNG
    mean_confidence: float  # mean over pixels of max(p, 1 - p)
    lesion_area: float  # fraction of pixels with p >= 0.5


def write_probability(path: Path, prob_uint8: np.ndarray) -> None:
    tmp = path.with_suffix(".tmp.png")
    cv2.imwrite(str(tmp), prob_uint8)
    tmp.replace(path)


def pseudo_label(model: torch.nn.Module, rows: list[Row], cache: PreprocessCache, accelerator: Accelerator,
                 out_dir: str | Path, batch_size: int = 8, tta: bool = True) -> list[PseudoStats]:
    """Predict every row, write `<id>.png` probabilities and stats.csv into out_dir (main process)."""
    out_dir = Path(out_dir)
    main = accelerator.is_main_process
    if main:
        (out_dir / "probabilities").mkdir(parents=True, exist_ok=True)
    ds = ImageDataset([r.image for r in rows], cache.size, cache, cache.max_pixels,
                      color_constancy=model.config.color_constancy)
    loader = accelerator.prepare(DataLoader(ds, batch_size, shuffle=False))
    model.eval()
    stats: list[PseudoStats] = []
    for batch in bar(loader, "pseudo-label", enabled=main, unit="batches"):
        probs = predict_probabilities(model, batch["image"], tta)[:, 0]
        confidence = torch.maximum(probs, 1 - probs).mean((1, 2))
        area = (probs >= 0.5).float().mean((1, 2))
        quantised = (probs * 255).round().to(torch.uint8)
        quantised, confidence, area, index = accelerator.gather_for_metrics((quantised, confidence, area,
                                                                             batch["index"]))
        if not main:
            continue
        for q, c, a, i in zip(quantised.cpu().numpy(), confidence.tolist(), area.tolist(), index.tolist()):
            row = rows[i]
            path = out_dir / "probabilities" / f"{row.id}.png"
            write_probability(path, q)
            stats.append(PseudoStats(row.id, row.image, str(path), c, a))
    if main:
        with open(out_dir / STATS, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["id", "image", "file", "mean_confidence", "lesion_area"])
            for s in stats:
                writer.writerow([s.id, s.image, s.file, f"{s.mean_confidence:.6f}", f"{s.lesion_area:.6f}"])
    accelerator.wait_for_everyone()
    return stats


def read_stats(out_dir: str | Path) -> list[PseudoStats]:
    with open(Path(out_dir) / STATS, newline="") as fh:
        return [PseudoStats(r["id"], r["image"], r["file"], float(r["mean_confidence"]), float(r["lesion_area"]))
                for r in csv.DictReader(fh)]


@dataclass
class Selection:
    kept: list[PseudoStats]
    dropped: dict[str, list[str]]  # reason -> ids

    def summary(self) -> dict[str, int]:
        return {"kept": len(self.kept), **{f"dropped_{k}": len(v) for k, v in self.dropped.items()}}


def select_pseudo_labels(stats: list[PseudoStats], min_confidence: float, min_area: float,
                         decisions_csv: str | Path | None = None) -> Selection:
    """Image-level filter; writes one line per image with the decision and its reason."""
    kept, dropped = [], {"low_confidence": [], "small_area": []}
    decisions = []
    for s in stats:
        reason = ""
        if s.mean_confidence < min_confidence:
            reason = "low_confidence"
        elif s.lesion_area < min_area:
            reason = "small_area"
        if reason:
            dropped[reason].append(s.id)
        else:
            kept.append(s)
        decisions.append((s.id, s.file, f"{s.mean_confidence:.6f}", f"{s.lesion_area:.6f}",
                          "kept" if not reason else "dropped", reason))
    if decisions_csv is not None:
        with open(decisions_csv, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["id", "file", "mean_confidence", "lesion_area", "decision", "reason"])
            writer.writerows(decisions)
    return Selection(kept, dropped)


def mean_valid_fraction(selection: Selection, threshold: float, limit: int = 200) -> float:
    """Share of pixels the student's loss will see at this pixel threshold (on up to `limit` kept images)."""
    if not selection.kept:
        return 0.0
    fractions = []
    for s in selection.kept[:limit]:
        p = load_pseudo_label(s.file)
        fractions.append(float((np.maximum(p, 1 - p) >= threshold).mean()))
    return float(np.mean(fractions))
