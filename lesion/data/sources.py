"""Sources: one `data` string -> (image, mask?) records.

    synthetic | synthetic:n=200,size=128,seed=0     the built-in generator
    PATH                                            layout detected (ISIC 2016/2017/2018, PH2, images/+masks/)
    FORMAT:PATH                                     forced: isic, isic2016, isic2017, isic2018, ph2, folder, unlabeled

Records carry the official split where the source has one. Files that are
not images (superpixels, CSV, LICENSE, ...) are ignored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from lesion.data.io import IMAGE_SUFFIXES
from lesion.errors import DataError

SPLIT_ORDER = {"train": 0, "val": 1, "test": 2, None: 3}
SKIP_HINT = "or pass skip_bad=true to skip it"

# (input folder, ground-truth folder, split) per ISIC year, as in the official extracted zips.
ISIC_LAYOUTS: dict[str, list[tuple[str, str, str]]] = {
    "isic2016": [
        ("ISBI2016_ISIC_Part1_Training_Data", "ISBI2016_ISIC_Part1_Training_GroundTruth", "train"),
        ("ISBI2016_ISIC_Part1_Test_Data", "ISBI2016_ISIC_Part1_Test_GroundTruth", "test"),
    ],
    "isic2017": [
        ("ISIC-2017_Training_Data", "ISIC-2017_Training_Part1_GroundTruth", "train"),
        ("ISIC-2017_Validation_Data", "ISIC-2017_Validation_Part1_GroundTruth", "val"),
        ("ISIC-2017_Test_v2_Data", "ISIC-2017_Test_v2_Part1_GroundTruth", "test"),
    ],
    "isic2018": [
        ("ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth", "train"),
        ("ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Validation_GroundTruth", "val"),
        ("ISIC2018_Task1-2_Test_Input", "ISIC2018_Task1_Test_GroundTruth", "test"),
    ],
}
MASK_SUFFIXES = ("_segmentation", "_Segmentation", "_mask", "_lesion", "")
FORMATS = ("isic", "isic2016", "isic2017", "isic2018", "ph2", "folder", "unlabeled")
PH2_ROOT = "PH2 Dataset images"
LAYOUTS_LOOKED_FOR = ("ISIC 2016/2017/2018 official folders (e.g. ISIC-2017_Training_Data), "
                      f"PH2 ('{PH2_ROOT}/IMDxxx/...'), images/ + masks/")


@dataclass(frozen=True)
class Record:
    id: str
    image: str
    mask: str | None
    split: str | None
    source: str


@dataclass
class Discovery:
    records: list[Record]
    format: str
    root: str
    skipped: list[str] = field(default_factory=list)


def default_cache_dir() -> Path:
    return Path(os.environ.get("LESION_CACHE_DIR") or Path.home() / ".cache" / "lesion")


def _images(folder: Path, recursive: bool = False) -> list[Path]:
    files = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in files if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith(".") and "_superpixels" not in p.stem)


def _contents(folder: Path, limit: int = 5) -> str:
    names = sorted(p.name for p in folder.iterdir())[:limit]
    return ", ".join(names) + (", ..." if len(names) == limit else "") if names else "nothing"


class _Collector:
    """Gathers records; a problem raises, or is counted when skip_bad is set."""

    def __init__(self, skip_bad: bool):
        self.skip_bad = skip_bad
        self.records: list[Record] = []
        self.skipped: list[str] = []
        self.seen: dict[str, str] = {}

    def problem(self, message: str) -> None:
        if not self.skip_bad:
            raise DataError(message)
        self.skipped.append(message)

    def add(self, record: Record) -> None:
        if record.id in self.seen:
            self.problem(f"{record.image}: duplicate id {record.id} (also {self.seen[record.id]}); "
                         f"remove one of the two files, {SKIP_HINT}")
            return
        self.seen[record.id] = record.image
        self.records.append(record)

    def pair(self, images: list[Path], masks: dict[str, Path], split: str | None, source: str,
             mask_folder: Path | None, mask_name: str) -> None:
        used = set()
        for image in images:
            mask = masks.get(image.stem)
            if mask_folder is not None and mask is None:
                self.problem(f"{image}: no mask {mask_name.format(id=image.stem)} in {mask_folder}; add it, {SKIP_HINT}")
                continue
            if mask is not None:
                used.add(image.stem)
            self.add(Record(image.stem, str(image.resolve()), str(mask.resolve()) if mask else None, split, source))
        for stem, mask in sorted(masks.items()):
            if stem not in used and stem not in {i.stem for i in images}:
                self.problem(f"{mask}: mask without an image {stem}.jpg; add the image or remove the mask, {SKIP_HINT}")


def _mask_index(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    index = {}
    for mask in _images(folder):
        stem = mask.stem
        for suffix in suffixes:
            if suffix and stem.endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        index[stem] = mask
    return index


def _isic(root: Path, years: list[str], c: _Collector) -> bool:
    found = False
    for year in years:
        for data_dir, truth_dir, split in ISIC_LAYOUTS[year]:
            data, truth = root / data_dir, root / truth_dir
            if not data.is_dir():
                continue
            found = True
            suffix = "_Segmentation" if year == "isic2016" else "_segmentation"
            masks = _mask_index(truth, (suffix,)) if truth.is_dir() else {}
            c.pair(_images(data), masks, split, year, truth if truth.is_dir() else None, "{id}" + suffix + ".png")
    return found


def _ph2(root: Path, c: _Collector) -> bool:
    base = root if root.name == PH2_ROOT else root / PH2_ROOT
    if not base.is_dir():
        return False
    for case in sorted(p for p in base.iterdir() if p.is_dir()):
        image = case / f"{case.name}_Dermoscopic_Image" / f"{case.name}.bmp"
        mask = case / f"{case.name}_lesion" / f"{case.name}_lesion.bmp"
        if not image.is_file():
            c.problem(f"{case}: no {image.relative_to(case)}; restore the PH2 case folder, {SKIP_HINT}")
            continue
        if not mask.is_file():
            c.problem(f"{image}: no mask {mask.relative_to(case)}; restore the PH2 case folder, {SKIP_HINT}")
            continue
        c.add(Record(case.name, str(image.resolve()), str(mask.resolve()), None, "ph2"))
    return True


def _folder(root: Path, c: _Collector, source: str = "folder") -> bool:
    images = root / "images"
    if not images.is_dir():
        return False
    masks = root / "masks"
    index = _mask_index(masks, MASK_SUFFIXES) if masks.is_dir() else {}
    c.pair(_images(images), index, None, source, masks if masks.is_dir() else None, "{id}[_segmentation|_mask].png")
    return True


def _unlabeled(root: Path, c: _Collector) -> bool:
    images = [p for p in _images(root, recursive=True)
              if not any(part.lower() in ("masks", "mask") or "groundtruth" in part.lower()
                         for part in p.relative_to(root).parts[:-1])
              and not p.stem.endswith(("_segmentation", "_Segmentation", "_mask"))]
    for image in images:
        c.add(Record(image.stem, str(image.resolve()), None, None, "unlabeled"))
    return bool(images)


def _split_spec(data: str) -> tuple[str | None, str]:
    head, sep, tail = data.partition(":")
    if sep and head in FORMATS:
        return head, tail
    if sep and head.isalpha() and len(head) > 1 and not Path(data).exists():
        raise DataError(f"data format {head!r} is unknown; use synthetic, {', '.join(FORMATS)} (e.g. isic:PATH) or a plain path")
    return None, data


def discover(data: str, cache_dir: str | Path, skip_bad: bool = False) -> Discovery:
    """Records for a `data` string (see the module docstring)."""
    if data == "synthetic" or data.startswith("synthetic:"):
        from lesion.data.synthetic import materialize, parse_spec

        folder = materialize(Path(cache_dir) / "synthetic", parse_spec(data.partition(":")[2]))
        c = _Collector(skip_bad)
        _folder(folder, c, source="synthetic")
        return Discovery(sorted(c.records, key=_order), "synthetic", str(folder), c.skipped)
    fmt, path_text = _split_spec(data)
    root = Path(path_text).expanduser()
    if not root.exists():
        raise DataError(f"{root}: no such folder; check the data path (looked for {LAYOUTS_LOOKED_FOR})")
    if not root.is_dir():
        raise DataError(f"{root}: is a file; pass the folder that holds the data ({LAYOUTS_LOOKED_FOR})")
    c = _Collector(skip_bad)
    detected = None
    if fmt in (None, "isic", "isic2016", "isic2017", "isic2018"):
        years = [fmt] if fmt not in (None, "isic") else list(ISIC_LAYOUTS)
        if _isic(root, years, c):
            years_found = {r.source for r in c.records}
            detected = years_found.pop() if len(years_found) == 1 else "isic"
    if detected is None and fmt in (None, "ph2") and _ph2(root, c):
        detected = "ph2"
    if detected is None and fmt in (None, "folder") and _folder(root, c):
        detected = "folder"
    if detected is None and fmt == "unlabeled" and _unlabeled(root, c):
        detected = "unlabeled"
    if detected is None:
        wanted = LAYOUTS_LOOKED_FOR if fmt is None else f"the {fmt} layout"
        raise DataError(f"{root}: no data found; looked for {wanted}, found {_contents(root)}")
    if not c.records:
        raise DataError(f"{root}: {detected} layout found but no usable images in it; check the folders")
    return Discovery(sorted(c.records, key=_order), detected, str(root), c.skipped)


def discover_unlabeled(spec: str, skip_bad: bool = False) -> Discovery:
    """Images of comma-separated folders (recursive); masks None, split None."""
    c = _Collector(skip_bad)
    roots = [Path(p.strip()).expanduser() for p in spec.split(",") if p.strip()]
    for root in roots:
        if not root.is_dir():
            raise DataError(f"{root}: unlabeled folder not found; pass existing folders of images, comma-separated")
        if not _unlabeled(root, c):
            raise DataError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in this unlabeled folder; found {_contents(root)}")
    return Discovery(sorted(c.records, key=_order), "unlabeled", ",".join(map(str, roots)), c.skipped)


def _order(record: Record) -> tuple[int, str]:
    return SPLIT_ORDER[record.split], record.id
