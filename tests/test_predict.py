"""predict on folders as users have them: sub-folders, masks and earlier predictions beside the images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lesion.config import ModelConfig, PredictConfig, from_flat
from lesion.errors import DataError
from lesion.models import build_model
from lesion.models.io import save_model
from lesion.predict import list_images, run_predict


def write(path: Path, size: tuple[int, int] = (40, 48)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def messy_folder(tmp_path) -> Path:
    root = tmp_path / "input"
    for name in ("a/x.jpg", "b/x.jpg", "z.png",  # images; two share a name in different folders
                 "masks/x.png", "y_segmentation.png", "y_overlay.png", "IMD002_lesion/IMD002_lesion.bmp",
                 "ISIC-2017_Training_Part1_GroundTruth/ISIC_0000000.png"):
        write(root / name)
    (root / "notes.txt").write_text("not an image")
    return root


def test_masks_and_earlier_predictions_are_passed_over(messy_folder):
    images, passed_over = list_images(str(messy_folder))
    assert [p.relative_to(messy_folder).as_posix() for p in images] == ["a/x.jpg", "b/x.jpg", "z.png"]
    assert passed_over == 5
    only_outputs = messy_folder.parent / "outputs"
    write(only_outputs / "y_segmentation.png")
    with pytest.raises(DataError, match="no images .* besides masks and predictions"):
        list_images(str(only_outputs))


def test_predict_keeps_sub_folders_so_names_never_collide(messy_folder, tmp_path):
    model = tmp_path / "model"
    save_model(build_model(ModelConfig()), model, 64)
    out = messy_folder / "predictions"  # inside the input: must not be read back as input next time
    for _ in range(2):
        result = run_predict(from_flat(PredictConfig, {"model": str(model), "input": str(messy_folder),
                                                       "out": str(out), "tta": "false"}))
        assert result["written"] == 3
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*_segmentation.png"))
    assert written == ["a/x_segmentation.png", "b/x_segmentation.png", "z_segmentation.png"]
    assert Image.open(out / "a" / "x_segmentation.png").size == (48, 40), "original size"
