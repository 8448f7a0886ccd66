"""One preprocessing and one post-processing for every inference path: predict (torch), the MLflow pyfunc
(serving) and ONNX give the same mask for the same image, and it is the mask the model was validated with."""

from __future__ import annotations

import base64
import io

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lesion.config import ExportConfig, FinetuneConfig, PredictConfig, from_flat
from lesion.export import run_export
from lesion.registry import load_model
from lesion.predict import run_predict
from lesion.finetune import run_finetune


@pytest.fixture
def champion(tmp_path, tracking):
    cfg = from_flat(FinetuneConfig, {"data": "synthetic:n=20,size=64,seed=7", "epochs": 1, "batch_size": 8,
                                     "output_dir": str(tmp_path / "out"), "run_name": "parity",
                                     "color_constancy": "shades_of_gray"})  # and the default postprocess
    return run_finetune(cfg)


def cast_images(folder) -> list:
    """Synthetic lesions under a strong colour cast, at sizes other than the model's."""
    from lesion.data.synthetic import generate_one

    folder.mkdir()
    paths = []
    for i, width in enumerate((96, 130)):
        image = generate_one(i, 96, 3)[0][:, :width].astype(float) * np.array([1.0, 0.75, 0.5])
        path = folder / f"cast{i}.png"
        Image.fromarray(image.round().astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def read_mask(path) -> np.ndarray:
    return np.asarray(Image.open(path)) > 127


@pytest.mark.slow
def test_predict_pyfunc_and_onnx_give_the_same_mask(champion, tmp_path):
    model, meta = load_model("models:/lesion-segmenter@champion")
    assert (meta["color_constancy"], meta["postprocess"]) == ("shades_of_gray", "central_fill"), "the defaults, saved with the model"
    paths = cast_images(tmp_path / "images")

    run_predict(from_flat(PredictConfig, {"model": "models:/lesion-segmenter@champion", "input": str(tmp_path / "images"),
                                          "out": str(tmp_path / "torch"), "probabilities": True}))
    onnx = run_export(from_flat(ExportConfig, {"model": "models:/lesion-segmenter@champion",
                                               "out": str(tmp_path / "champion.onnx")}))["onnx"]
    run_predict(from_flat(PredictConfig, {"model": onnx, "input": str(tmp_path / "images"), "out": str(tmp_path / "onnx"),
                                          "probabilities": True}))
    served = mlflow.pyfunc.load_model("models:/lesion-segmenter@champion").predict(
        pd.DataFrame({"image": [p.read_bytes() for p in paths]}), params={"return_probabilities": True})

    for path, (_, answer) in zip(paths, served.iterrows()):
        by_torch = read_mask(tmp_path / "torch" / f"{path.stem}_segmentation.png")
        by_onnx = read_mask(tmp_path / "onnx" / f"{path.stem}_segmentation.png")
        by_pyfunc = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["mask"])))) > 127
        assert by_torch.shape == Image.open(path).size[::-1]
        # The raw probabilities first: any difference in resizing, colour constancy or normalisation shows here.
        p_torch = np.asarray(Image.open(tmp_path / "torch" / f"{path.stem}_probability.png")).astype(int)
        p_onnx = np.asarray(Image.open(tmp_path / "onnx" / f"{path.stem}_probability.png")).astype(int)
        p_pyfunc = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["probabilities"])))).astype(int)
        assert np.abs(p_torch - p_pyfunc).max() <= 1, f"{path.name}: predict and serving see other inputs"
        assert np.abs(p_torch - p_onnx).max() <= 1, f"{path.name}: predict and ONNX see other inputs"
        assert p_torch.std() > 0, "a constant map would prove nothing"
        assert np.array_equal(by_torch, by_pyfunc), f"{path.name}: predict and serving differ"
        assert (by_torch != by_onnx).mean() < 1e-3, f"{path.name}: predict and ONNX differ"
        assert answer["degenerate"] in (True, False)


@pytest.mark.slow
def test_the_colour_constancy_reaches_the_network(champion, tmp_path):
    """Switching it off changes what the network sees, so the setting is used, not just stored."""
    from lesion.inference import network_input

    image = np.asarray(Image.open(cast_images(tmp_path / "images")[0]))
    assert not np.allclose(network_input(image, 64, "shades_of_gray"), network_input(image, 64, "none"))
    model, meta = load_model("models:/lesion-segmenter@champion")
    assert model.config.color_constancy == "shades_of_gray"


@pytest.mark.slow
def test_serving_takes_a_postprocess_override_like_predict(champion, tmp_path):
    """`params={"postprocess": ...}` gives predict's mask for the same mode, and a bad mode is one line."""
    from lesion.serving import BadInput

    paths = cast_images(tmp_path / "images")
    served = mlflow.pyfunc.load_model("models:/lesion-segmenter@champion")
    images = pd.DataFrame({"image": [p.read_bytes() for p in paths]})
    served_masks = {}
    for mode in ("none", "largest_fill"):
        run_predict(from_flat(PredictConfig, {"model": "models:/lesion-segmenter@champion", "input": str(tmp_path / "images"),
                                              "out": str(tmp_path / mode), "postprocess": mode}))
        answers = served.predict(images, params={"postprocess": mode})
        for path, (_, answer) in zip(paths, answers.iterrows()):
            by_pyfunc = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["mask"])))) > 127
            assert np.array_equal(read_mask(tmp_path / mode / f"{path.stem}_segmentation.png"), by_pyfunc), (mode, path.name)
            served_masks.setdefault(mode, []).append(by_pyfunc)
    assert any(not np.array_equal(a, b) for a, b in zip(*served_masks.values())), "the modes must differ to prove the override"
    for bad in ("biggest", "", None):  # None: a config would take it as "unset"; here it must not pass
        with pytest.raises(BadInput, match=rf"^params: parameter postprocess={bad!r} must be one of model, ") as err:
            served.predict(images, params={"postprocess": bad})
        assert "\n" not in str(err.value)
