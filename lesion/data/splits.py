"""Splits and the data manifest.

A manifest is the list of rows a run actually used: id, image path, mask path,
split and whether the mask is used as a label. Every stage writes it as CSV and
logs it, so any number can be traced back to the exact images behind it.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from lesion.data.sources import Record
from lesion.errors import ConfigError, DataError

SPLITS = ("train", "val", "test", "unlabeled")


@dataclass(frozen=True)
class Row:
    id: str
    image: str
    mask: str  # "" when there is none
    split: str  # train | val | test | unlabeled
    labelled: bool  # False for unlabelled images and for training masks held back by label_fraction
    source: str


def _seeded_order(ids: list[str], seed: int, salt: str) -> list[int]:
    # Order by a seeded permutation of the sorted ids, so a split depends only on (ids, seed).
    rng = np.random.default_rng([seed, sum(map(ord, salt))])
    return list(rng.permutation(len(ids)))


def make_split(
    records: list[Record],
    *,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    label_fraction: float = 1.0,
    labels: int = 0,
    seed: int = 0,
    unlabeled: list[Record] | None = None,
) -> list[Row]:
    """Official splits where the source has them, else a seeded split; then label_fraction."""
    if not 0 < label_fraction <= 1:
        raise ConfigError(f"label_fraction={label_fraction} must be in (0, 1]")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ConfigError(f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in [0, 1) and sum below 1")
    records = sorted(records, key=lambda r: r.id)
    # An official folder counts as a split only with its ground truth: ISIC validation/test inputs are often
    # downloaded without it. Such images stay in their split, unlabelled (never trained on), and the split is
    # carved from the training images instead.
    official = {r.split for r in records if r.split and r.mask}
    split_of: dict[str, str] = {r.id: r.split for r in records if r.split}

    pool = [r for r in records if r.split in (None, "train")]
    carve = []  # (split name, fraction) to cut from the pool
    if "val" not in official:
        carve.append(("val", val_fraction))
    if "test" not in official and not official - {"train"}:
        carve.append(("test", test_fraction))
    if carve:
        labelled_pool = [r for r in pool if r.mask]
        order = [labelled_pool[i] for i in _seeded_order([r.id for r in labelled_pool], seed, "split")]
        start = 0
        for name, fraction in carve:
            count = int(round(fraction * len(order)))
            if fraction > 0 and count == 0 and len(order) > 1:
                count = 1
            for r in order[start:start + count]:
                split_of[r.id] = name
            start += count
    for r in pool:
        split_of.setdefault(r.id, "train")

    train_labelled = [r for r in records if split_of[r.id] == "train" and r.mask]
    if labels > len(train_labelled):
        raise ConfigError(f"labels={labels} but the training split has only {len(train_labelled)} image(s) with masks; "
                          f"pass labels={len(train_labelled)} or fewer, or label_fraction instead")
    if labels > 0:
        keep_count = labels
    else:
        keep_count = max(1, int(round(label_fraction * len(train_labelled)))) if train_labelled else 0
    order = _seeded_order([r.id for r in train_labelled], seed, "labels")
    kept = {train_labelled[i].id for i in order[:keep_count]}

    rows = []
    for r in records:
        split = split_of[r.id]
        labelled = bool(r.mask) and (split != "train" or r.id in kept)
        rows.append(Row(r.id, r.image, r.mask or "", split, labelled, r.source))
    seen = {r.id for r in rows}
    for r in unlabeled or []:
        if r.id in seen:
            raise DataError(f"{r.image}: id {r.id} appears both in data and in unlabeled; remove one of the two copies")
        seen.add(r.id)
        rows.append(Row(r.id, r.image, "", "unlabeled", False, r.source))
    return rows


def select(rows: list[Row], split: str, labelled: bool | None = None) -> list[Row]:
    return [r for r in rows if r.split == split and (labelled is None or r.labelled == labelled)]


def unlabelled_pool(rows: list[Row]) -> list[Row]:
    """Images whose masks may not be used: held-back training images plus the unlabeled folders."""
    return [r for r in rows if r.split in ("train", "unlabeled") and not r.labelled]


def counts(rows: list[Row]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        key = f"{r.split}_{'labelled' if r.labelled else 'unlabelled'}"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


def write_manifest(rows: list[Row], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[f.name for f in fields(Row)])
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))
    tmp.replace(path)
    return path


def read_manifest(path: str | Path) -> list[Row]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest not found; run the stage that writes it first")
    with open(path, newline="") as fh:
        return [replace(Row(**{**row, "labelled": False}), labelled=row["labelled"] == "True") for row in csv.DictReader(fh)]
