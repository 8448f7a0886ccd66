"""A model that calls the whole frame lesion is caught: evaluate and predict flag each such mask and count them."""

from __future__ import annotations

import csv
import json

import numpy as np
import torch
from PIL import Image

from lesion.config import EvaluateConfig, ModelConfig, PredictConfig, from_flat
from lesion.evaluate import run_evaluate
from lesion.models import build_model
from lesion.models.io import save_model
from lesion.predict import run_predict


def whole_frame_model(folder, lesion_everywhere: bool = True):
    """A segmenter whose head ignores the image: lesion everywhere (or nowhere)."""
    model = build_model(ModelConfig())
    head = model.net.segmentation_head[0]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(20.0 if lesion_everywhere else -20.0)
    return save_model(model, folder, 64)


def test_predict_flags_and_counts_degenerate_masks(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(images / f"{i}.png")
    result = run_predict(from_flat(PredictConfig, {"model": str(whole_frame_model(tmp_path / "m")),
                                                   "input": str(images), "out": str(tmp_path / "pred")}))
    assert result["degenerate"] == 3
    with open(tmp_path / "pred" / "predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["degenerate"] for r in rows] == ["1", "1", "1"]
    assert float(rows[0]["lesion_fraction"]) == 1.0
    assert "3 of 3 mask(s) are degenerate" in capsys.readouterr().out

    calm = run_predict(from_flat(PredictConfig, {"model": str(whole_frame_model(tmp_path / "n", False)),
                                                 "input": str(images), "out": str(tmp_path / "pred2")}))
    assert calm["degenerate"] == 0


def test_evaluate_reports_the_share_of_degenerate_masks(tmp_path, tracking):
    out = run_evaluate(from_flat(EvaluateConfig, {"model": str(whole_frame_model(tmp_path / "m")),
                                                  "data": "synthetic:n=20,size=64,seed=3", "split": "val",
                                                  "output_dir": str(tmp_path / "out"), "run_name": "degenerate"}))
    assert out["metrics"]["val/degenerate"] == 1.0
    assert out["metrics"]["val/sensitivity"] == 1.0 and out["metrics"]["val/specificity"] < 0.5
    table = next((tmp_path / "out").rglob("per_image.csv"))
    with open(table) as fh:
        assert {r["degenerate"] for r in csv.DictReader(fh)} == {"1"}
    logged = json.loads(next((tmp_path / "out").rglob("metrics.json")).read_text())["metrics"]
    assert logged["val/degenerate"] == 1.0
