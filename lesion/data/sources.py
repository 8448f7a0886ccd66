"""Sources: one `data` string -> (image, mask?) records.

    synthetic | synthetic:n=200,size=128,seed=0   the built-in generator (written under cache_dir/synthetic)
    PATH                                          layout detected: ISIC 2016/2017/2018, PH2, images/ + masks/
    FORMAT:PATH                                   forced: isic (any year), isic2016, isic2017, isic2018,
                                                  ph2, folder, unlabeled

Records carry the official split where the source has one. Only image files
count: superpixels, CSV, LICENSE, txt, xlsx and hidden files are ignored.
Missing or orphan masks, ambiguous pairs and duplicate ids raise a one-line
DataError, or with skip_bad are left out and listed in Discovery.skipped.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from lesion.data.io import IMAGE_SUFFIXES
from lesion.errors import DataError

SKIP_HINT = "or pass skip_bad=true to skip it"
SPLIT_ORDER = {"train": 0, "val": 1, "test": 2, None: 3}
FORMATS = ("isic", "isic2016", "isic2017", "isic2018", "ph2", "folder", "unlabeled")

# (input folder, ground-truth folder, split) per ISIC year, as the official zips extract.
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
# The year's own spelling first (it is the one error messages suggest); re-zipped archives mix them.
ISIC_MASK_SUFFIXES = {"isic2016": ("_Segmentation", "_segmentation"),
                      "isic2017": ("_segmentation", "_Segmentation"),
                      "isic2018": ("_segmentation", "_Segmentation")}
FOLDER_MASK_SUFFIXES = ("_segmentation", "_Segmentation", "_mask", "_lesion", "")
PH2_IMAGES = "PH2 Dataset images"
# Words that mark a folder of masks, skipped in unlabelled pools (besides any "ground truth").
TRUTH_WORDS = {"gt", "mask", "masks", "label", "labels", "annotation", "annotations", "segmentation",
               "segmentations", "lesion", "roi"}
LOOKED_FOR = {
    None: "ISIC 2016/2017/2018 folders (e.g. ISIC-2017_Training_Data), PH2 ('PH2 Dataset images/IMDxxx/...') "
          "or images/ + masks/",
    "isic": "ISIC 2016/2017/2018 folders (e.g. ISBI2016_ISIC_Part1_Training_Data, ISIC-2017_Training_Data, "
            "ISIC2018_Task1-2_Training_Input)",
    **{year: ", ".join(name for row in rows for name in row[:2]) for year, rows in ISIC_LAYOUTS.items()},
    "ph2": f"'{PH2_IMAGES}/IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp'",
    "folder": "images/ (and masks/)",
    "unlabeled": f"image files ({', '.join(IMAGE_SUFFIXES)}) in it or its subfolders",
}


@dataclass(frozen=True)
class Record:
    id: str              # ISIC_0000000, IMD002, SYN_00000, or the image's stem
    image: str           # absolute path
    mask: str | None     # absolute path; None when unlabelled
    split: str | None    # official split "train" | "val" | "test"; None when the source has none
    source: str          # "isic2016" | "isic2017" | "isic2018" | "ph2" | "folder" | "unlabeled" | "synthetic"


@dataclass
class Discovery:
    records: list[Record]
    format: str
    root: str
    skipped: list[str] = field(default_factory=list)  # one line per skipped item (skip_bad only)


def default_cache_dir() -> Path:
    return Path(os.environ.get("LESION_CACHE_DIR") or Path.home() / ".cache" / "lesion")


def _is_image_file(name: str) -> bool:
    stem, suffix = os.path.splitext(name)
    return suffix.lower() in IMAGE_SUFFIXES and not name.startswith(".") and not stem.endswith("_superpixels")


def _image_files(folder: Path) -> list[Path]:
    """Image files directly in folder, sorted; [] if it does not exist."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _is_image_file(p.name) and p.is_file())


def _contents(folder: Path, limit: int = 5) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if not p.name.startswith("."))
    if not names:
        return "nothing"
    return ", ".join(names[:limit]) + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


class _Found:
    """Records and problems of one discovery: a problem raises, or is listed when skip_bad is set."""

    def __init__(self, skip_bad: bool):
        self.skip_bad = skip_bad
        self.records: list[Record] = []
        self.skipped: list[str] = []
        self._seen: dict[str, Path] = {}

    def problem(self, message: str) -> None:
        if not self.skip_bad:
            raise DataError(message)
        self.skipped.append(message)

    def add(self, image: Path, mask: Path | None, split: str | None, source: str) -> None:
        if image.stem in self._seen:
            self.problem(f"{image}: duplicate id {image.stem}, also {self._seen[image.stem]}; "
                         f"rename or remove one of the two, {SKIP_HINT}")
            return
        self._seen[image.stem] = image
        self.records.append(Record(image.stem, str(image), str(mask) if mask else None, split, source))

    def pair(self, image_dir: Path, images: list[Path], mask_dir: Path | None, suffixes: tuple[str, ...],
             expected: str, split: str | None, source: str) -> None:
        """Give each image the mask <stem><suffix> in mask_dir (None: unlabelled); expected names it in messages."""
        if mask_dir is None:
            for image in images:
                self.add(image, None, split, source)
            return
        masks: dict[str, Path] = {}
        for mask in _image_files(mask_dir):
            if mask.stem in masks:
                self.problem(f"{mask}: two masks named {mask.stem} ({masks[mask.stem].name} and {mask.name}); "
                             f"remove one, {SKIP_HINT}")
            else:
                masks[mask.stem] = mask
        used: set[str] = set()
        for image in images:
            found = [image.stem + s for s in suffixes if image.stem + s in masks]
            used.update(found)
            if not found:
                self.problem(f"{image} has no mask {expected.format(id=image.stem)} in {mask_dir}; "
                             f"add it or pass skip_bad=true to skip it")
            elif len(found) > 1:
                names = ", ".join(masks[stem].name for stem in found)
                self.problem(f"{image} has {len(found)} masks in {mask_dir} ({names}); "
                             f"keep one or pass skip_bad=true to skip it")
            else:
                self.add(image, masks[found[0]], split, source)
        for stem, mask in masks.items():
            if stem not in used:
                self.problem(f"{mask}: mask matches no image in {image_dir} (masks are named "
                             f"{expected.format(id='<id>')}); add the image or remove the mask, {SKIP_HINT}")


def _isic(root: Path, years: list[str], found: _Found) -> list[str]:
    """Pair every ISIC folder present under root; the years that had any."""
    present = []
    for year in years:
        for data_name, truth_name, split in ISIC_LAYOUTS[year]:
            data, truth = root / data_name, root / truth_name
            if not data.is_dir() and not truth.is_dir():
                continue
            if year not in present:
                present.append(year)
            if data.is_dir():
                suffixes = ISIC_MASK_SUFFIXES[year]
                found.pair(data, _image_files(data), truth if truth.is_dir() else None, suffixes,
                           "{id}" + suffixes[0] + ".png", split, year)
            else:
                found.problem(f"{truth}: ground truth without its images folder {data_name}; "
                              f"add {data_name} beside it, or pass skip_bad=true to skip these masks")
    return present


def _ph2_base(root: Path) -> Path | None:
    """The folder holding the IMDxxx case folders: root/'PH2 Dataset images' or root itself."""
    for base in (root / PH2_IMAGES, root):
        if base.is_dir() and any((case / f"{case.name}_Dermoscopic_Image").is_dir() for case in base.iterdir()):
            return base
    return None


def _ph2(base: Path, found: _Found) -> None:
    for case in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))):
        image_dir = case / f"{case.name}_Dermoscopic_Image"
        images = [p for p in _image_files(image_dir) if p.stem == case.name]
        if not images:
            found.problem(f"{case}: no dermoscopic image {image_dir.name}/{case.name}.bmp; "
                          f"restore the case folder, or pass skip_bad=true to skip the case")
            continue
        # The _roi folders and the xlsx/txt files beside the cases are not used.
        found.pair(image_dir, images, case / f"{case.name}_lesion", ("_lesion",), "{id}_lesion.bmp", None, "ph2")


def _folder(root: Path, found: _Found, source: str) -> None:
    images, masks = root / "images", root / "masks"
    found.pair(images, _image_files(images), masks if masks.is_dir() else None, FOLDER_MASK_SUFFIXES,
               "{id}[" + "|".join(filter(None, FOLDER_MASK_SUFFIXES)) + "].png", None, source)


def _is_truth_folder(name: str) -> bool:
    """Folders of masks, ground truth or annotations (PH2's IMDxxx_lesion and IMDxxx_roi too)."""
    words = re.findall(r"[a-z]+", name.lower())
    return "groundtruth" in "".join(words) or not TRUTH_WORDS.isdisjoint(words)


def _unlabeled(root: Path, found: _Found) -> None:
    mask_stem = re.compile(r".*_(segmentation|mask|lesion)$", re.IGNORECASE)
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith(".") and not _is_truth_folder(d))
        for name in sorted(files):
            if _is_image_file(name) and not mask_stem.match(os.path.splitext(name)[0]):
                found.add(Path(folder, name), None, None, "unlabeled")


def _parse(data: str) -> tuple[str | None, str]:
    """(FORMAT or 'synthetic' or None, the rest)."""
    head, sep, rest = data.partition(":")
    if head == "synthetic":
        return "synthetic", rest
    if not data.strip():
        raise DataError(f"data is empty; pass synthetic, a folder, or FORMAT:PATH with FORMAT one of "
                        f"{', '.join(FORMATS)}")
    if sep and head in FORMATS:
        if not rest:
            raise DataError(f"{data}: no path after '{head}:'; pass {head}:PATH")
        return head, rest
    if sep and re.fullmatch(r"[A-Za-z][\w-]*", head) and not Path(data).expanduser().exists():
        raise DataError(f"{data}: unknown data format {head!r}; use synthetic[:OPTIONS], FORMAT:PATH with FORMAT "
                        f"one of {', '.join(FORMATS)}, or a plain path")
    return None, data


def _folder_path(text: str, what: str) -> Path:
    path = Path(text.strip()).expanduser().resolve()  # absolute, without ".." (manifests and messages name real paths)
    if not path.exists():
        raise DataError(f"{path}: no such folder; check the {what} path")
    if not path.is_dir():
        raise DataError(f"{path}: is a file, not a folder; pass the folder that holds the {what}")
    return path


def _hint(root: Path) -> str:
    """Where the data probably is, when root is a level too deep or too high."""
    if any(root.name in row[:2] for rows in ISIC_LAYOUTS.values() for row in rows):
        return f"; {root.name} is an ISIC folder: pass the folder that contains it, {root.parent}"
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        if any((child / row[0]).is_dir() for rows in ISIC_LAYOUTS.values() for row in rows) \
                or (child / PH2_IMAGES).is_dir() or (child / "images").is_dir():
            return f"; the data seems to be one level down: pass {child}"
    if _image_files(root):
        return f"; for a plain folder of images without masks pass unlabeled:{root}"
    return ""


def _detect(root: Path, fmt: str | None, found: _Found) -> str | None:
    """Read root in the forced or the first matching layout; the layout's name, None if none matches."""
    if fmt in (None, "isic", *ISIC_LAYOUTS):
        years = _isic(root, list(ISIC_LAYOUTS) if fmt in (None, "isic") else [fmt], found)
        if years:
            return years[0] if len(years) == 1 else "isic"
    if fmt in (None, "ph2") and (base := _ph2_base(root)):
        _ph2(base, found)
        return "ph2"
    if fmt in (None, "folder") and (root / "images").is_dir():
        _folder(root, found, "folder")
        return "folder"
    if fmt == "unlabeled":
        _unlabeled(root, found)
        return "unlabeled"
    return None


def _order(record: Record) -> tuple[int, str]:
    return SPLIT_ORDER[record.split], record.id


def discover(data: str, cache_dir: str | Path, skip_bad: bool = False) -> Discovery:
    """Records of a `data` string (see the module docstring), sorted by (split, id)."""
    fmt, rest = _parse(data)
    found = _Found(skip_bad)
    if fmt == "synthetic":
        from lesion.data.synthetic import materialize, parse_spec  # only when asked: it needs cv2

        root = Path(materialize(Path(cache_dir).expanduser() / "synthetic", parse_spec(rest))).absolute()
        _folder(root, found, "synthetic")
        layout = "synthetic"
    else:
        root = _folder_path(rest, "data")
        layout = _detect(root, fmt, found)
        if layout is None:
            contents = _contents(root)
            what = "folder is empty" if contents == "nothing" else f"no {fmt + ' ' if fmt else ''}data layout found"
            raise DataError(f"{root}: {what}; looked for {LOOKED_FOR[fmt]}; it holds {contents}{_hint(root)}")
    if not found.records and not found.skipped:
        raise DataError(f"{root}: {layout} layout found but it holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                        f"check that the files were extracted there")
    return Discovery(sorted(found.records, key=_order), layout, str(root), found.skipped)


def discover_unlabeled(spec: str, skip_bad: bool = False) -> Discovery:
    """Images of comma-separated folders (recursive, masks and ground-truth folders ignored); no masks, no split."""
    found = _Found(skip_bad)
    roots = []
    for text in filter(str.strip, spec.split(",")):
        root = _folder_path(text, "unlabeled")
        before = len(found.records) + len(found.skipped)
        _unlabeled(root, found)
        if len(found.records) + len(found.skipped) == before:
            raise DataError(f"{root}: no images in this unlabeled folder; looked for {LOOKED_FOR['unlabeled']} "
                            f"(masks and ground-truth folders are ignored); it holds {_contents(root)}")
        roots.append(str(root))
    return Discovery(sorted(found.records, key=_order), "unlabeled", ",".join(roots), found.skipped)
