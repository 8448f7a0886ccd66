"""Serving: the MLflow pyfunc flavour of a segmenter, images in, masks out (`mlflow models serve`).

Input: a DataFrame with an `image` column of encoded PNG/JPEG bytes (MLflow's
JSON formats carry them as base64). Output: one row per image with the mask
as a base64 PNG at the image's original size (thresholded, then post-processed
as the model was trained to be), its height and width, the lesion fraction and
whether the mask is degenerate (covers most of the frame or touches every
border: check such images); `return_probabilities=True` adds the raw
probability map (base64 PNG, 0..255), before threshold and post-processing;
`postprocess=largest_fill` (or any mode of `lesion predict --postprocess`) overrides the model's own.
"""

from __future__ import annotations

import base64
import io
import json
from importlib import metadata

import mlflow
import mlflow.exceptions
import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError

from lesion.config import INFERENCE_POSTPROCESS, MAX_PIXELS, check_choice
from lesion.errors import ConfigError
from lesion.inference import final_mask, mask_png, mask_report, predict_images
from lesion.models.io import load_model



def pyfunc_signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("binary", "image")]),
        outputs=Schema([ColSpec("string", "mask"), ColSpec("long", "height"), ColSpec("long", "width"),
                        ColSpec("double", "lesion_fraction"), ColSpec("boolean", "degenerate")]),
        params=ParamSchema([ParamSpec("threshold", "double", 0.5), ParamSpec("return_probabilities", "boolean", False),
                            ParamSpec("tta", "boolean", False), ParamSpec("postprocess", "string", "model")]),
    )


def pip_requirements() -> list[str]:
    names = ["torch", "torchvision", "segmentation-models-pytorch", "timm", "safetensors", "numpy", "pillow",
             "opencv-python-headless", "albumentations", "pandas", "mlflow", "tqdm"]
    out = []
    for name in names:
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(name)
    return out


class BadInput(mlflow.exceptions.MlflowException):
    """A 400 whose body is this one line: the scoring server prepends the whole input DataFrame to an
    MlflowException's message (`Failed to predict data '<DataFrame>'`), which would echo the images back."""

    def __init__(self, message: str):
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        # INVALID_PARAMETER_VALUE makes the scoring server answer 400, not 500.
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)
        self.line = message

    def serialize_as_json(self) -> str:
        body = json.loads(super().serialize_as_json())  # MLflow's fields (error_code, ...), lesion's message
        body.pop("stack_trace", None)
        return json.dumps({**body, "message": self.line})


def _bad_input(message: str) -> Exception:
    return BadInput(message)


def _threshold(params: dict) -> float:
    value = params.get("threshold", 0.5)
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        threshold = float("nan")
    if not 0 <= threshold <= 1:  # also NaN
        raise _bad_input(f"params: threshold={value!r} must be a probability in [0, 1] (default 0.5)")
    return threshold


def _postprocess(params: dict, model_mode: str) -> str:
    """The mode asked for, checked like `lesion predict --postprocess`; 'model' is the model's own."""
    value = params.get("postprocess", "model")
    try:
        check_choice("postprocess", value, INFERENCE_POSTPROCESS)  # None too, which a config would take
    except ConfigError as err:
        raise _bad_input(f"params: {err}") from None
    return model_mode if value == "model" else value


def decode_image(data: bytes | str, row: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    if isinstance(data, str):
        try:
            data = base64.b64decode(data, validate=True)
        except ValueError:
            raise _bad_input(f"row {row}: 'image' is not base64; send base64-encoded PNG or JPEG bytes") from None
    if not data:
        raise _bad_input(f"row {row}: 'image' is empty; send base64-encoded PNG or JPEG bytes")
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > max_pixels:
                raise _bad_input(f"row {row}: image is {img.width}x{img.height}, above the {max_pixels}-pixel limit; "
                                 "send a smaller image")
            img = ImageOps.exif_transpose(img)
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
        raise _bad_input(f"row {row}: 'image' is not a readable image ({err}); send PNG or JPEG bytes") from None


class LesionPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        self.model, self.meta = load_model(context.artifacts["model_dir"])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        params = params or {}
        threshold = _threshold(params)  # before any image is decoded
        postprocess = _postprocess(params, self.model.config.postprocess)
        if not isinstance(model_input, pd.DataFrame) or "image" not in model_input.columns or len(model_input) == 0:
            raise _bad_input("input must have an 'image' column with at least one base64-encoded PNG or JPEG")
        images = [decode_image(v, i) for i, v in enumerate(model_input["image"].tolist())]
        probs = predict_images(self.model, images, int(self.meta["image_size"]), tta=bool(params.get("tta", False)),
                               color_constancy=self.model.config.color_constancy)  # the model's, from model.json
        rows = []
        for prob in probs:
            mask = final_mask(prob, threshold, postprocess)
            row = {"mask": base64.b64encode(mask_png(mask)).decode(), "height": mask.shape[0],
                   "width": mask.shape[1], **mask_report(mask)}
            if params.get("return_probabilities"):
                buf = io.BytesIO()
                Image.fromarray((prob * 255).round().astype(np.uint8), mode="L").save(buf, format="PNG")
                row["probabilities"] = base64.b64encode(buf.getvalue()).decode()
            rows.append(row)
        return pd.DataFrame(rows)
