"""`lesion data inspect DATA`: what is in a data set, and every problem with it, before any training.

Every file is decoded once (two threads). Errors make the data unusable
(exit 1) unless skip_bad is set and usable pairs remain; warnings and notes
are reported but do not stop a run.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from lesion.data.io import load_pair
from lesion.data.sources import Record, default_cache_dir, discover, discover_unlabeled
from lesion.errors import DataError

ODD_MODES = {"L": "grayscale", "LA": "grayscale+alpha", "RGBA": "RGBA", "CMYK": "CMYK", "P": "palette",
             "I;16": "16-bit", "I;16B": "16-bit", "I;16L": "16-bit", "I": "32-bit", "1": "1-bit"}


@dataclass
class InspectReport:
    data: str
    layout: str
    root: str
    counts: Counter = field(default_factory=Counter)  # (split, "labelled"|"unlabelled") -> n
    sizes: list[tuple[int, int]] = field(default_factory=list)
    areas: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skip_bad: bool = False
    usable: int = 0

    @property
    def ok(self) -> bool:
        return self.usable > 0 and (not self.errors or self.skip_bad)

    def format(self) -> str:
        lines = [f"data: {self.data}", f"format: {self.layout}  root: {self.root}", "", "split       labelled  unlabelled"]
        for split in ("train", "val", "test", "unlabeled"):
            lab, unl = self.counts[(split, "labelled")], self.counts[(split, "unlabelled")]
            if lab or unl:
                lines.append(f"{split:10s}  {lab:8d}  {unl:10d}")
        if self.sizes:
            hs, ws = zip(*self.sizes)
            pixels = [h * w for h, w in self.sizes]
            small, large = self.sizes[int(np.argmin(pixels))], self.sizes[int(np.argmax(pixels))]
            lines += ["", f"image sizes (HxW): {small[0]}x{small[1]} .. {large[0]}x{large[1]}, "
                      f"{len(set(self.sizes))} distinct; heights {min(hs)}..{max(hs)}, widths {min(ws)}..{max(ws)}"]
        if self.areas:
            a = np.array(self.areas)
            q = np.percentile(a, [0, 5, 50, 95, 100])
            lines += ["", "lesion area (fraction of image): "
                      f"min {q[0]:.3f}  p5 {q[1]:.3f}  median {q[2]:.3f}  p95 {q[3]:.3f}  max {q[4]:.3f}"]
            hist, edges = np.histogram(a, bins=10, range=(0, 1))
            for n, lo in zip(hist, edges[:-1]):
                lines.append(f"  {lo:.1f}-{lo + 0.1:.1f} {'#' * int(round(40 * n / max(1, hist.max()))):40s} {n}")
        for title, items in (("errors", self.errors), ("warnings", self.warnings), ("notes", self.notes)):
            if items:
                lines += ["", f"{title} ({len(items)}):"] + [f"  - {item}" for item in items]
        verdict = "usable" if self.ok else "NOT usable"
        extra = f" ({len(self.errors)} bad file(s) will be skipped)" if self.errors and self.skip_bad else ""
        lines += ["", f"verdict: {verdict}: {self.usable} usable image(s){extra}"]
        return "\n".join(lines)


def _header_notes(path: str) -> tuple[str | None, bool]:
    try:
        with Image.open(path) as img:
            rotated = img.getexif().get(0x0112, 1) not in (1, None)
            return ODD_MODES.get(img.mode), rotated
    except Exception:  # unreadable files are reported by the decode step
        return None, False


def inspect_data(data: str, unlabeled: str = "", cache_dir: str | Path | None = None,
                 max_pixels: int = 150_000_000, skip_bad: bool = False) -> InspectReport:
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    found = discover(data, cache_dir, skip_bad=True)  # collect every discovery problem, decide below
    records: list[Record] = list(found.records)
    report = InspectReport(data, found.format, found.root, skip_bad=skip_bad)
    report.errors += found.skipped
    if unlabeled:
        pool = discover_unlabeled(unlabeled, skip_bad=True)
        report.errors += pool.skipped
        records += [Record(r.id, r.image, None, "unlabeled", r.source) for r in pool.records]

    def check(record: Record):
        try:
            image, mask, nonbinary = load_pair(record.image, record.mask, max_pixels)
        except DataError as err:
            return record, err, None, 0
        area = float(mask.mean()) if mask is not None else None
        return record, None, (image.shape[0], image.shape[1], area), nonbinary

    modes: Counter = Counter()
    rotated = nonbinary_masks = empty_masks = 0
    with ThreadPoolExecutor(2) as pool:
        for record, err, info, nonbinary in tqdm(pool.map(check, records), total=len(records), desc="inspect",
                                                 leave=False):
            if err is not None:
                report.errors.append(str(err))
                continue
            report.usable += 1
            h, w, area = info
            report.sizes.append((h, w))
            split = record.split or "unsplit"
            report.counts[(split if split != "unsplit" else "train", "labelled" if record.mask else "unlabelled")] += 1
            if area is not None:
                report.areas.append(area)
                empty_masks += area == 0
            nonbinary_masks += nonbinary > 0
            for path in filter(None, (record.image, record.mask if record.mask else None)):
                mode, turned = _header_notes(path)
                if mode and path == record.image:
                    modes[mode] += 1
                rotated += turned
    if found.format in ("folder", "synthetic", "ph2"):
        report.notes.append("no official split: training uses a seeded split (val_fraction, test_fraction)")
    if nonbinary_masks:
        report.warnings.append(f"{nonbinary_masks} mask(s) are not binary (JPEG-compressed?); they are thresholded at 128")
    if empty_masks:
        report.warnings.append(f"{empty_masks} mask(s) are empty (no lesion)")
    for mode, n in sorted(modes.items()):
        report.notes.append(f"{n} {mode} image(s) are converted to RGB")
    if rotated:
        report.notes.append(f"{rotated} file(s) carry an EXIF rotation, which is applied")
    return report
