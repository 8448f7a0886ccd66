"""Small fake data trees in the real folder layouts, written by the tests."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from lesion.data.sources import ISIC_LAYOUTS


def blob(h: int = 24, w: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(150, 230, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 255
    image[mask > 0] //= 3
    return image, mask


def save(array: np.ndarray, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def isic_tree(root: Path, year: str, n: int = 3, with_truth: bool = True) -> Path:
    suffix = "_Segmentation" if year == "isic2016" else "_segmentation"
    for k, (data_dir, truth_dir, split) in enumerate(ISIC_LAYOUTS[year]):
        for i in range(n):
            image_id = f"ISIC_{k * 100 + i:07d}"
            image, mask = blob(seed=i)
            save(image, root / data_dir / f"{image_id}.jpg", quality=95)
            save(mask, root / data_dir / f"{image_id}_superpixels.png")  # must be ignored
            if with_truth:
                save(mask, root / truth_dir / f"{image_id}{suffix}.png")
        (root / data_dir / "ISIC-2017_metadata.csv").write_text("image_id,age\n")
        (root / data_dir / "LICENSE.txt").write_text("CC-0\n")
    return root


def ph2_tree(root: Path, n: int = 3) -> Path:
    base = root / "PH2 Dataset images"
    for i in range(n):
        case = f"IMD{i + 2:03d}"
        image, mask = blob(seed=i)
        save(image, base / case / f"{case}_Dermoscopic_Image" / f"{case}.bmp")
        save(mask, base / case / f"{case}_lesion" / f"{case}_lesion.bmp")
        save(mask, base / case / f"{case}_roi" / f"{case}_R1_Label4.bmp")
    (root / "PH2_dataset.txt").write_text("ignored\n")
    return root


def folder_tree(root: Path, n: int = 4, suffix: str = "_mask") -> Path:
    for i in range(n):
        image, mask = blob(seed=i)
        save(image, root / "images" / f"case{i}.png")
        save(mask, root / "masks" / f"case{i}{suffix}.png")
    return root


def truncated_jpeg(path: Path) -> Path:
    buf = io.BytesIO()
    Image.fromarray(blob(64, 64)[0]).save(buf, format="JPEG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path
