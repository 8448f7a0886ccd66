"""ONNX export: the champion (or any model) as a portable file, proven equal to torch.

The graph takes (batch, 3, H, W) ImageNet-normalised images of any batch size
and size (multiples of 32) and returns logits. It is checked with ONNX Runtime
on sample images at several sizes; the largest probability difference is
reported and must stay below `tolerance`. The file is logged to the model's
MLflow run, and `predict --model FILE.onnx` runs it without torch weights.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mlflow.tracking import MlflowClient

from lesion.config import ExportConfig
from lesion.data.cache import resize_image
from lesion.data.synthetic import generate_one
from lesion.data.transforms import normalize
from lesion.errors import ConfigError, LesionError
from lesion.registry import load_model
from lesion.tracking import configure_tracking


class OnnxSegmenter:
    """An ONNX Runtime session with the segmenter's call signature: normalised images -> logits."""

    def __init__(self, path: str | Path):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ConfigError("ONNX models need onnxruntime; pip install 'lesion[onnx]'") from None
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types
            raise ConfigError(f"{path}: not a readable ONNX model ({str(err).splitlines()[0]}); export it with lesion export") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.image_size = int(meta.get("image_size", 0))
        self.meta = json.loads(meta.get("lesion", "{}"))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"image": images.detach().cpu().numpy()})[0])

    def eval(self) -> "OnnxSegmenter":
        return self


def _check_inputs(image_size: int, count: int) -> list[torch.Tensor]:
    """Batches at the training size and at other sizes, to prove the dynamic axes."""
    sizes = [(image_size, image_size), (image_size, image_size + 64), (image_size + 32, image_size)][:max(1, count)]
    batches = []
    for i, (h, w) in enumerate(sizes):
        images = [resize_image(generate_one(i * 10 + k, max(64, h), 0)[0], h) for k in range(2)]
        x = torch.from_numpy(np.stack([normalize(im) for im in images]))
        batches.append(torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False))
    return batches


def export_onnx(model: torch.nn.Module, meta: dict[str, Any], out: Path, opset: int = 17) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    size = int(meta["image_size"])
    example = torch.zeros(1, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (example,), str(out), dynamo=False, opset_version=opset,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                                        "logits": {0: "batch", 2: "height", 3: "width"}})
    import onnx

    proto = onnx.load(str(out))
    for key, value in (("image_size", str(size)), ("lesion", json.dumps(meta, default=str))):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(out))
    return out


def max_probability_difference(model: torch.nn.Module, onnx_model: OnnxSegmenter, batches: list[torch.Tensor]) -> float:
    worst = 0.0
    with torch.inference_mode():
        for x in batches:
            expected = torch.sigmoid(model(x))
            worst = max(worst, float((torch.sigmoid(onnx_model(x)) - expected).abs().max()))
    return worst


def _model_run_id(source: str) -> str | None:
    """The MLflow run that produced a registered or run-logged model, to log the ONNX file beside it."""
    client = MlflowClient()
    if source.startswith("runs:/"):
        return source.split("/")[1]
    if source.startswith("models:/"):
        name, _, ref = source.removeprefix("models:/").partition("@")
        if ref:
            return client.get_model_version_by_alias(name, ref).run_id
        name, _, version = source.removeprefix("models:/").partition("/")
        if version == "latest":
            return max(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version)).run_id
        return client.get_model_version(name, version).run_id
    return None


def run_export(cfg: ExportConfig) -> dict[str, Any]:
    model, meta = load_model(cfg.model)
    label = cfg.model.replace("models:/", "").replace("runs:/", "").replace("@", "-").replace("/", "-").strip("-")
    out = Path(cfg.out) if cfg.out else Path("outputs") / "export" / f"{Path(label).name or 'model'}.onnx"
    try:
        export_onnx(model, meta, out, cfg.opset)
    except LesionError:
        raise
    except Exception as err:
        raise ConfigError(f"ONNX export of {cfg.model} failed ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    diff = max_probability_difference(model, OnnxSegmenter(out), _check_inputs(int(meta["image_size"]),
                                                                                 cfg.check_images))
    print(f"[lesion] wrote {out}; ONNX Runtime vs torch: max |probability difference| = {diff:.2e} "
          f"(tolerance {cfg.tolerance:.0e})")
    if diff > cfg.tolerance:
        raise ConfigError(f"{out}: ONNX output differs from torch by {diff:.2e} > tolerance {cfg.tolerance:.0e}; "
                          "try another opset")
    result: dict[str, Any] = {"onnx": str(out), "max_abs_diff": diff}
    run_id = None
    if cfg.model.startswith(("models:/", "runs:/")):
        configure_tracking()
        run_id = _model_run_id(cfg.model)
        if run_id:
            client = MlflowClient()
            client.log_artifact(run_id, str(out), "onnx")
            client.log_metric(run_id, "onnx/max_abs_diff", diff)
            print(f"[lesion] logged {out.name} to run {run_id} (artifact onnx/)")
    result["run_id"] = run_id
    return result
