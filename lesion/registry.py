"""The MLflow model registry: logged models, versions, aliases and the champion gate, for segmenters and encoders.

    lesion-segmenter   versions of fine-tuned segmenters (aliases teacher, student, champion)
    lesion-encoder     versions of SSL encoders (alias ssl)

Also where a model URI (models:/NAME@ALIAS, runs:/ID/PATH, ...) becomes a local
folder: models/ reads folders only and knows nothing of MLflow.
"""

from __future__ import annotations

import filecmp
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import mlflow
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.file_utils import local_file_uri_to_path

from lesion.config import ENCODER, SEGMENTER
from lesion.data.prepare import PreparedData
from lesion.data.splits import select
from lesion.errors import ConfigError, LesionError
from lesion.models import io as model_io
from lesion.models.registry import LesionSegmenter
from lesion.serving import pip_requirements, pyfunc_signature
from lesion.tracking import Tracker, configure_tracking
from lesion.train.segmentation import score_rows

URI_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/", "s3://", "gs://", "file://")


# ---------------------------------------------------------------- URIs to folders


def resolve_artifact_dir(source: str, dst: str | Path | None = None) -> Path:
    """A local folder for a model URI (models:/name@alias, runs:/id/path, ...), downloaded into dst, or a path."""
    if source.startswith(URI_SCHEMES):
        configure_tracking()
        try:
            return Path(mlflow.artifacts.download_artifacts(
                artifact_uri=source, dst_path=str(dst or tempfile.mkdtemp(prefix="lesion-"))))
        except Exception as err:  # MLflow raises many types; the user needs one line
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"cannot load {source}: {first.rstrip('.')}; check the name/alias with `mlflow ui` or pass a "
                              "local folder") from None
    path = Path(source)
    if not path.exists():
        raise ConfigError(f"{source}: no such model folder or URI; pass models:/NAME@ALIAS, runs:/RUN_ID/PATH or a folder")
    return path


@contextmanager
def artifact_dir(source: str) -> Iterator[Path]:
    """resolve_artifact_dir for reading once: a downloaded copy is deleted on exit (no temp folder left behind)."""
    if not source.startswith(URI_SCHEMES):
        yield resolve_artifact_dir(source)
        return
    with tempfile.TemporaryDirectory(prefix="lesion-") as tmp:
        yield resolve_artifact_dir(source, tmp)


def load_model(source: str, map_location: str = "cpu") -> tuple[LesionSegmenter, dict[str, Any]]:
    """A segmenter and its meta from a model URI or a folder (models.io.load_model, after the download)."""
    with artifact_dir(source) as folder:
        return model_io.load_model(folder, map_location, name=source)


def init_encoder(model: LesionSegmenter, encoder_init: str) -> dict[str, Any]:
    """Initialise model in place from an SSL encoder or segmenter URI or folder; returns what was loaded."""
    with artifact_dir(encoder_init) as folder:
        return model_io.init_encoder(model, folder, name=encoder_init)


# ---------------------------------------------------------------- logged models and versions


def log_segmenter(model_dir: str | Path, example_png: bytes, tracker: Tracker, name: str = "model") -> str | None:
    """Log a saved segmenter folder as an MLflow pyfunc (images in, masks out); returns its URI."""
    if not tracker.active:
        return None

    info = mlflow.pyfunc.log_model(
        name=name,
        python_model=str(Path(__file__).resolve().parent / "serving_model.py"),
        artifacts={"model_dir": str(model_dir)},
        signature=pyfunc_signature(),
        input_example=pd.DataFrame({"image": [example_png]}),
        pip_requirements=pip_requirements(),
        code_paths=[str(Path(__file__).resolve().parent)],
    )
    return info.model_uri


def logged_location(uri: str) -> str | None:
    """Where the artifacts of a logged model (models:/m-...) or of a run (runs:/ID[/path]) are stored, or None."""
    try:
        if uri.startswith("models:/m-"):
            return MlflowClient().get_logged_model(uri.removeprefix("models:/")).artifact_location
        if uri.startswith("runs:/"):
            run_id, _, path = uri.removeprefix("runs:/").partition("/")
            return MlflowClient().get_run(run_id).info.artifact_uri.rstrip("/") + (f"/{path}" if path else "")
    except MlflowException:
        return None
    return None


def share_logged_copy(folder: str | Path, uri: str, min_bytes: int = 1 << 20) -> int:
    """Hard-link folder's large files to their byte-identical copies logged at uri; returns the bytes saved.

    With a local artifact store (the default ./mlruns next to sqlite:///mlflow.db) MLflow
    copies every logged model: without this, each stage's weights sit twice on one disk.
    Nothing writes these files in place afterwards (save_model writes a new file and
    renames it), so the shared bytes are never changed under the registry. A remote
    store, another disk or a different file leaves the folder as it is.
    """
    location = logged_location(uri)
    if location is None or ("://" in location and not location.startswith("file:")):
        return 0
    root = Path(local_file_uri_to_path(location))
    saved = 0
    for ours in Path(folder).iterdir():
        if not ours.is_file() or ours.stat().st_size < min_bytes:
            continue
        for theirs in root.rglob(ours.name):
            if os.path.samefile(ours, theirs):
                break
            if filecmp.cmp(ours, theirs, shallow=False):
                tmp = ours.with_name(f".{ours.name}.link")
                try:
                    tmp.unlink(missing_ok=True)
                    os.link(theirs, tmp)
                    os.replace(tmp, ours)
                except OSError:  # another file system, or links not allowed: keep the copy
                    tmp.unlink(missing_ok=True)
                    break
                saved += ours.stat().st_size
                break
    return saved


def register(model_uri: str, name: str, tags: dict[str, Any]) -> str:
    """Register model_uri as a new version of name (created on first use) with tags; returns the version."""
    return str(mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in tags.items()}).version)


def set_alias(name: str, alias: str, version: str) -> None:
    MlflowClient().set_registered_model_alias(name, alias, version)


def alias_version(name: str, alias: str):
    """The ModelVersion under alias, or None when the model or the alias does not exist (other errors raise)."""
    try:
        return MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(err):
            return None
        raise


# ---------------------------------------------------------------- the champion gate and SSL encoders


def promote_champion(version: str, score: float, tracker: Tracker, data: PreparedData,
                     device: torch.device | str = "cpu", stage: str = "supervised") -> dict[str, Any]:
    """Move `champion` to version only if its val/jaccard beats the current champion's on the same images; log why.

    The champion is re-scored on this run's validation images: a score it got on
    other data (the synthetic demo, another split or size) says nothing about these.
    Each stage's decision is its own artifact, registry/champion_gate_<stage>.json.
    """
    current = alias_version(SEGMENTER, "champion")
    val_rows = select(data.rows, "val", labelled=True)
    decision: dict[str, Any] = {"stage": stage, "candidate_version": version, "candidate_val_jaccard": score,
                                "val_images": len(val_rows), "champion_version": None, "champion_val_jaccard": None}
    key = stage.replace("*", "star")
    if f"lesion.champion_gate.{key}" in tracker.tags():  # decided before a crash: the resumed run does not ask again
        return {**decision, "promoted": None, "reason": "decided before the run was resumed"}
    if current is not None and str(current.version) == str(version):
        return {**decision, "champion_version": version, "promoted": True, "reason": "already the champion"}
    if current is None:
        promoted, reason = True, "no champion yet"
    else:
        decision["champion_version"] = str(current.version)
        decision["champion_registered_val_jaccard"] = float(current.tags.get("val_jaccard", "nan"))
        try:
            model, meta = load_model(f"models:/{SEGMENTER}/{current.version}")
            champion = score_rows(model.to(device), val_rows, data.cache.at_size(int(meta["image_size"])),
                                  device=device)["jaccard"]
        except LesionError as err:
            champion = None
            reason = f"the champion could not be scored on these images ({err})"
        decision["champion_val_jaccard"] = champion
        if champion is not None:
            promoted = score > champion
            reason = (f"val/jaccard {score:.4f} {'>' if promoted else '<='} champion v{current.version}'s "
                      f"{champion:.4f} on the same {len(val_rows)} validation images")
        else:
            promoted = True
    if promoted:
        set_alias(SEGMENTER, "champion", version)
    decision.update(promoted=promoted, reason=reason)
    tracker.log_dict(decision, f"registry/champion_gate_{key}.json")
    tracker.set_tags({f"lesion.champion_gate.{key}": "promoted" if promoted else "kept"})
    print(f"[lesion] lesion-segmenter v{version}: {'promoted to champion' if promoted else 'champion kept'}: {reason}")
    return decision


def register_encoder(tracker: Tracker, folder: Path, tags: dict[str, Any]) -> str:
    """Log folder under `encoder/`, register runs:/<run>/encoder as a lesion-encoder version, alias it `ssl`.

    MLflow 3's register_model wants a logged model; a plain artifact folder is
    registered with create_model_version, and models:/ URIs download it as is.
    """
    done = tracker.tags()
    if "lesion.encoder_version" in done:  # registered before a crash: never twice
        return done["lesion.encoder_version"]
    tracker.log_artifact(folder, "encoder")
    share_logged_copy(folder, f"runs:/{tracker.run_id}/encoder")  # a local store holds the weights once
    client = MlflowClient()
    try:
        client.create_registered_model(ENCODER)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(ENCODER, source=f"runs:/{tracker.run_id}/encoder", run_id=tracker.run_id,
                                          tags={k: str(v) for k, v in tags.items()}).version
    set_alias(ENCODER, "ssl", str(version))
    tracker.set_tags({"lesion.encoder_version": version})
    return str(version)
