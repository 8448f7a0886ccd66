"""`lesion data inspect DATA`: what a data set holds, and every problem with it, before any training.

Every file is decoded once, in two threads (headers are read again for the
mode and EXIF notes, which costs nothing). Problems come in four levels, one
line each: errors (the data cannot be used as it is), bad files (errors that
skip_bad turns into skips), warnings and notes (reported, never blocking).
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lesion.config import MAX_PIXELS
from lesion.data.io import LESION_ABOVE, load_pair, read_header
from lesion.data.sources import Record, default_cache_dir, discover, discover_unlabeled
from lesion.errors import DataError
from lesion.progress import bar

MODE_NAMES = {"L": "grayscale", "LA": "grayscale+alpha", "1": "1-bit", "P": "palette", "PA": "palette+alpha",
              "RGBA": "RGBA", "CMYK": "CMYK", "YCbCr": "YCbCr", "LAB": "Lab", "HSV": "HSV",
              "I;16": "16-bit", "I;16L": "16-bit", "I;16B": "16-bit", "I;16N": "16-bit", "I": "32-bit", "F": "float"}
GROUPS = {"train": "train", "val": "val", "test": "test", None: "(no split)", "pool": "unlabeled pool"}
EXAMPLES = 3


@dataclass
class InspectReport:
    data: str
    layout: str                     # the detected format
    root: str
    skip_bad: bool = False
    # (split, None when the source has none, or "pool"; "labelled" | "unlabelled") -> usable images
    counts: Counter = field(default_factory=Counter)
    sizes: Counter = field(default_factory=Counter)   # (H, W) -> images
    areas: list[float] = field(default_factory=list)  # lesion fraction of each usable mask
    errors: list[str] = field(default_factory=list)   # the data cannot be used, skip_bad or not
    bad: list[str] = field(default_factory=list)      # unusable files or pairs: errors, or skips with skip_bad
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    images: int = 0                 # files decoded
    masks: int = 0
    seconds: float = 0.0

    @property
    def usable(self) -> int:
        return sum(self.counts.values())

    @property
    def ok(self) -> bool:
        return self.usable > 0 and not self.errors and (self.skip_bad or not self.bad)

    def format(self) -> str:
        lines = [f"data: {self.data}", f"format: {self.layout}   root: {self.root}",
                 f"checked {self.images} images and {self.masks} masks in {self.seconds:.1f} s", "",
                 f"{'split':16s}{'labelled':>10s}{'unlabelled':>12s}"]
        for group, name in GROUPS.items():
            labelled, unlabelled = self.counts[(group, "labelled")], self.counts[(group, "unlabelled")]
            if labelled or unlabelled:
                lines.append(f"{name:16s}{labelled:10d}{unlabelled:12d}")
        total = sum(n for (_, kind), n in self.counts.items() if kind == "labelled")
        lines.append(f"{'total':16s}{total:10d}{self.usable - total:12d}")
        lines += self._sizes() + self._areas()
        rows = ([("ERROR", e) for e in self.errors] + [("SKIPPED" if self.skip_bad else "ERROR", b) for b in self.bad]
                + [("WARNING", w) for w in self.warnings] + [("NOTE", n) for n in self.notes])
        lines += ["", f"problems ({len(rows)}):" if rows else "problems: none"]
        lines += [f"  {level:8s}{text}" for level, text in rows]
        lines += ["", self._verdict()]
        return "\n".join(lines)

    def _sizes(self) -> list[str]:
        if not self.sizes:
            return []
        by_pixels = sorted(self.sizes, key=lambda hw: (hw[0] * hw[1], hw))
        heights, widths = [h for h, _ in self.sizes], [w for _, w in self.sizes]
        (h0, w0), (h1, w1) = by_pixels[0], by_pixels[-1]
        return ["", f"image size (HxW): {h0}x{w0} .. {h1}x{w1} (fewest .. most pixels); "
                    f"heights {min(heights)}..{max(heights)}, widths {min(widths)}..{max(widths)}; "
                    f"{len(self.sizes)} distinct size(s)"]

    def _areas(self) -> list[str]:
        if not self.areas:
            return []
        q = np.percentile(self.areas, [0, 5, 50, 95, 100])
        lines = ["", f"lesion area (fraction of the image, {len(self.areas)} masks): min {q[0]:.3f}  p5 {q[1]:.3f}  "
                     f"median {q[2]:.3f}  p95 {q[3]:.3f}  max {q[4]:.3f}"]
        hist, edges = np.histogram(self.areas, bins=10, range=(0.0, 1.0))
        for n, low, high in zip(hist, edges[:-1], edges[1:]):
            lines.append(f"  {low:.1f}-{high:.1f} |{'#' * int(np.ceil(40 * n / hist.max())):40s} {n}")
        return lines

    def _verdict(self) -> str:
        if self.ok:
            skipped = f"; {len(self.bad)} bad file(s) or pair(s) will be skipped" if self.bad else ""
            return f"verdict: usable: {self.usable} image(s){skipped}"
        if self.errors:
            return f"verdict: NOT usable: {len(self.errors)} error(s) to fix (skip_bad does not help with them)"
        if self.bad and not self.skip_bad:
            return (f"verdict: NOT usable: {len(self.bad)} bad file(s) or pair(s); fix them, or pass --skip_bad "
                    f"(skip_bad=true in a run) to leave them out")
        return "verdict: NOT usable: no usable image left"


@dataclass
class _Checked:
    """What decoding one record found."""

    error: str | None = None
    size: tuple[int, int] = (0, 0)
    area: float | None = None       # lesion fraction; None when unlabelled
    nonbinary: int = 0
    image_mode: str = "RGB"
    mask_mode: str | None = None
    rotated: tuple[str, ...] = ()   # files whose EXIF orientation was applied


def _check(record: Record, max_pixels: int) -> _Checked:
    try:
        image, mask, nonbinary = load_pair(record.image, record.mask, max_pixels)
    except DataError as err:
        return _Checked(error=str(err))
    image_header = read_header(record.image, max_pixels)
    mask_header = read_header(record.mask, max_pixels) if record.mask else None
    rotated = tuple(path for path, header in ((record.image, image_header), (record.mask, mask_header))
                    if header and header.rotated)
    area = np.count_nonzero(mask) / mask.size if mask is not None else None
    return _Checked(size=image.shape[:2], area=area, nonbinary=nonbinary, image_mode=image_header.mode,
                    mask_mode=mask_header.mode if mask_header else None, rotated=rotated)


def _examples(names: list[str]) -> str:
    more = f" (+{len(names) - EXAMPLES} more)" if len(names) > EXAMPLES else ""
    return ", ".join(names[:EXAMPLES]) + more


def _mode_counts(modes: Counter) -> str:
    return ", ".join(f"{n} {name}" for name, n in sorted(modes.items()))


def inspect_data(data: str, unlabeled: str = "", cache_dir: str | Path | None = None,
                 max_pixels: int = MAX_PIXELS, skip_bad: bool = False) -> InspectReport:
    """Discover and decode everything once; see InspectReport.format() for the report."""
    start = time.perf_counter()
    # Discovery with skip_bad=True collects every problem rather than stopping at the first.
    found = discover(data, cache_dir if cache_dir else default_cache_dir(), skip_bad=True)
    report = InspectReport(data, found.format, found.root, skip_bad, bad=list(found.skipped))
    jobs: list[tuple[Record, str | None]] = [(r, r.split) for r in found.records]
    if unlabeled:
        pool = discover_unlabeled(unlabeled, skip_bad=True)
        report.bad += pool.skipped
        in_data = {r.id: r.image for r in found.records}
        # Training refuses these: a pool image that is also a val/test image would leak into self-training.
        report.errors += [f"{r.image}: id {r.id} is also in the data ({in_data[r.id]}); "
                          "remove it from the unlabeled pool" for r in pool.records if r.id in in_data]
        jobs += [(r, "pool") for r in pool.records]
    if found.format in ("folder", "ph2", "synthetic", "unlabeled"):
        report.notes.append(f"{found.format} data has no official split: training draws a seeded one "
                            f"(val_fraction, test_fraction)")

    nonbinary, empty, full, rotated = [], [], [], []
    image_modes, mask_modes = Counter(), Counter()
    with ThreadPoolExecutor(2) as threads:
        results = threads.map(lambda job: _check(job[0], max_pixels), jobs)
        for (record, group), checked in bar(zip(jobs, results), "inspect", total=len(jobs), unit="images"):
            report.images += 1
            report.masks += record.mask is not None
            if checked.error:
                report.bad.append(checked.error)
                continue
            report.counts[(group, "labelled" if record.mask else "unlabelled")] += 1
            report.sizes[checked.size] += 1
            rotated += checked.rotated
            if checked.image_mode != "RGB":
                image_modes[MODE_NAMES.get(checked.image_mode, checked.image_mode)] += 1
            if checked.area is None:
                continue
            report.areas.append(checked.area)
            if checked.mask_mode not in ("L", "1"):
                mask_modes[MODE_NAMES.get(checked.mask_mode, checked.mask_mode)] += 1
            if checked.nonbinary:
                nonbinary.append(Path(record.mask).name)
            if checked.area == 0:
                empty.append(record.mask)
            elif checked.area == 1:
                full.append(record.mask)

    if empty and len(empty) == len(report.areas):
        report.errors.append(f"all {len(empty)} masks are empty (no lesion pixel), e.g. {_examples(empty)}: a model "
                             "would learn nothing; check how the masks are encoded (lesion is the one non-zero value "
                             "of a label mask, or > 128 of 255)")
    else:
        report.warnings += [f"{mask}: mask is empty (no lesion); check it, or it trains as a lesion-free image"
                            for mask in empty]
    report.warnings += [f"{mask}: mask covers the whole image (inverted?); check it" for mask in full]
    if nonbinary:
        report.warnings.append(f"{len(nonbinary)} mask(s) were not binary (JPEG?) and were thresholded at 128 "
                               f"(> {LESION_ABOVE} is lesion): {_examples(nonbinary)}")
    if image_modes:
        report.notes.append(f"{sum(image_modes.values())} image(s) converted to RGB: {_mode_counts(image_modes)}")
    if mask_modes:
        report.notes.append(f"{sum(mask_modes.values())} mask(s) reduced to one channel: {_mode_counts(mask_modes)}")
    if rotated:
        report.notes.append(f"{len(rotated)} file(s) carry an EXIF orientation, applied when reading: "
                            f"{_examples([Path(p).name for p in rotated])}")
    report.seconds = time.perf_counter() - start
    return report
