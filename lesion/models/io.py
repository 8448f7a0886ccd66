"""Weights on disk: safetensors plus a readable JSON that says what they are.

A segmenter folder holds `model.safetensors` + `model.json` (architecture,
encoder, working image size); an SSL encoder folder holds
`encoder.safetensors` + `encoder.json`. Nothing is ever unpickled. Every
load is checked against the builder's tensor names and shapes, and a
mismatch says what was expected.
"""

from __future__ import annotations

import json
import os
import typing
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lesion.config import ModelConfig
from lesion.errors import ConfigError
from lesion.models.registry import LesionSegmenter, build_model, timm_encoder_name

MODEL_WEIGHTS, MODEL_META = "model.safetensors", "model.json"
ENCODER_WEIGHTS, ENCODER_META = "encoder.safetensors", "encoder.json"


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_model(model: LesionSegmenter, folder: str | Path, image_size: int, **extra: Any) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # Written under a temporary name, then renamed: a crash never leaves torn weights.
    tmp = folder / f".{MODEL_WEIGHTS}.tmp"
    save_file(_state(model), str(tmp), metadata={"format": "lesion-segmenter"})
    os.replace(tmp, folder / MODEL_WEIGHTS)
    meta = {"kind": "lesion-segmenter", "image_size": image_size, **asdict(model.config), **extra}
    meta["encoder"] = timm_encoder_name(model.config.encoder)
    _write_json(folder / MODEL_META, meta)
    return folder


def save_encoder(encoder: nn.Module, encoder_name: str, folder: str | Path, **extra: Any) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(_state(encoder), str(folder / ENCODER_WEIGHTS), metadata={"format": "lesion-encoder"})
    _write_json(folder / ENCODER_META, {"kind": "lesion-encoder", "encoder": timm_encoder_name(encoder_name), **extra})
    return folder


def _find(folder: Path, name: str) -> Path | None:
    if (folder / name).is_file():
        return folder / name
    found = sorted(folder.rglob(name))
    return found[0] if found else None


def _read_meta(path: Path, kind: str) -> dict[str, Any]:
    """A weights folder's JSON, checked: an object whose model fields have the right types (image_size for segmenters)."""
    redo = "re-save the model with lesion or fix the file"
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: not readable JSON ({' '.join(str(err).split())}); {redo}") from None
    if not isinstance(meta, dict):
        raise ConfigError(f"{path} holds a JSON {type(meta).__name__}, not an object of model settings; {redo}")
    for name, typ in typing.get_type_hints(ModelConfig).items():
        value = meta.get(name, typ())
        ok = isinstance(value, str) if typ is str else isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok:
            raise ConfigError(f"{path}: {name}={value!r} is not a {typ.__name__}; {redo}")
    if kind == "segmenter":
        size = meta.get("image_size")
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0 or size % 32:
            what = "has no image_size" if "image_size" not in meta else f"has image_size={size!r}"
            raise ConfigError(f"{path} {what} (the working resolution the model was trained at, a positive "
                              f"multiple of 32); {redo}")
    return meta


def read_weights(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a file that is not one, or is cut short, is one line."""
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError) as err:
        raise ConfigError(f"{path}: not a readable safetensors file ({' '.join(str(err).split())}); the file is "
                          "truncated or not lesion weights: download or save the model again") from None


def find_weights(folder: Path) -> tuple[str, Path, dict[str, Any]]:
    """('segmenter' | 'encoder', weights path, meta) found in folder (searching pyfunc sub-folders)."""
    if not folder.is_dir():
        raise ConfigError(f"{folder}: not a model folder; pass a folder with {MODEL_WEIGHTS} and {MODEL_META} "
                          "(or an exported .onnx file to predict)")
    for kind, weights, meta in (("segmenter", MODEL_WEIGHTS, MODEL_META), ("encoder", ENCODER_WEIGHTS, ENCODER_META)):
        w = _find(folder, weights)
        if w is not None:
            meta_path = w.parent / meta
            if not meta_path.is_file():
                raise ConfigError(f"{w}: weights without {meta}; save models with lesion (save_model/save_encoder)")
            return kind, w, _read_meta(meta_path, kind)
    raise ConfigError(f"{folder}: no {MODEL_WEIGHTS} or {ENCODER_WEIGHTS} found; pass a lesion model or encoder")


def load_checked(module: nn.Module, state: dict[str, torch.Tensor], source: str, allow_extra: bool = False) -> list[str]:
    """Copy state into module after checking names and shapes; returns ignored extra names."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    extra = [k for k in state if k not in expected]
    if missing or wrong or (extra and not allow_extra):
        detail = (f"missing {missing[:3]}" if missing else "") + (f" shape mismatch {wrong[:3]}" if wrong else "") \
            + (f" unexpected {extra[:3]}" if extra and not allow_extra else "")
        raise ConfigError(f"{source}: weights do not fit the model ({detail.strip()}); "
                          "build the model with the arch/encoder these weights were trained with")
    module.load_state_dict({k: state[k] for k in expected}, strict=True)
    return extra


def local_folder(source: str | Path, name: str | None = None) -> Path:
    """source as an existing folder (lesion.registry turns model URIs into folders first)."""
    path = Path(source)
    if not path.exists():
        raise ConfigError(f"{name or source}: no such model folder or URI; pass models:/NAME@ALIAS, runs:/RUN_ID/PATH "
                          "or a folder")
    return path


def init_encoder(model: LesionSegmenter, folder: str | Path, name: str | None = None) -> dict[str, Any]:
    """Initialise model in place from an encoder or segmenter folder (name: what messages call it)."""
    encoder_init = name or str(folder)
    kind, weights, meta = find_weights(local_folder(folder, name))
    state = read_weights(weights)
    wanted = timm_encoder_name(model.config.encoder)
    if meta.get("encoder") != wanted:
        raise ConfigError(
            f"{encoder_init} holds a {meta.get('encoder')} encoder but this model uses {wanted}; "
            f"pass encoder={str(meta.get('encoder', '')).removeprefix('tu-')} or another encoder_init"
        )
    if kind == "segmenter" and meta.get("arch") == model.config.arch:
        load_checked(model, state, encoder_init)
        return {"loaded": "segmenter", "tensors": len(state), "source": encoder_init}
    if kind == "segmenter":
        state = {k.removeprefix("net.encoder."): v for k, v in state.items() if k.startswith("net.encoder.")}
    # Shallower encoders (PSPNet uses 3 stages) take the subset they have.
    extra = load_checked(model.encoder, state, encoder_init, allow_extra=True)
    return {"loaded": "encoder", "tensors": len(state) - len(extra), "ignored": len(extra), "source": encoder_init}


# Models saved before these settings existed were trained and used without them.
UNSET_MEANS = {"color_constancy": "none", "postprocess": "none"}


def model_config_from_meta(meta: dict[str, Any]) -> ModelConfig:
    names = {f.name for f in fields(ModelConfig)}
    return ModelConfig(**{**UNSET_MEANS, **{k: v for k, v in meta.items() if k in names}})


def load_model(folder: str | Path, map_location: str = "cpu", name: str | None = None) -> tuple[LesionSegmenter, dict[str, Any]]:
    """A segmenter and its meta from a folder (name: what messages call it); dropout/drop_path are off for inference.

    For a model URI, use lesion.registry.load_model.
    """
    source = name or str(folder)
    kind, weights, meta = find_weights(local_folder(folder, name))
    state = read_weights(weights, map_location) if kind == "segmenter" else {}
    if kind != "segmenter":
        raise ConfigError(f"{source} is an SSL encoder, not a segmenter; fine-tune it first (encoder_init={source})")
    try:
        config = model_config_from_meta(meta)
    except ConfigError as err:  # e.g. a Hub encoder, which building would download
        raise ConfigError(f"{weights.parent / MODEL_META}: {err}") from None
    config.dropout, config.drop_path = 0.0, 0.0
    model = build_model(config)
    load_checked(model, state, source)
    model.eval()
    return model, meta
