"""The finetune stage: data -> model -> fit -> logged, registered segmenter."""

from __future__ import annotations

import shutil
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed

from lesion.config import DataConfig, FinetuneConfig, to_flat
from lesion.data.cache import PreprocessCache
from lesion.data.datasets import SegmentationDataset
from lesion.data.prepare import PreparedData, prepare_data, resolve_cache_dir
from lesion.data.sources import discover
from lesion.data.splits import Row, select
from lesion.errors import ConfigError, LesionError
from lesion.inference import image_png
from lesion.models import build_model
from lesion.models.io import init_encoder, load_model
from lesion.runs import check_not_finished, default_run_name, mark_finished, run_lock, stage_dir
from lesion.tracking import (SEGMENTER, Tracker, alias_version, log_segmenter, register, set_alias, share_logged_copy,
                             write_json)
from lesion.train.engine import (FitResult, fit, make_accelerator, resolve_mixed_precision, resolve_workers,
                                 score_rows)


def shared_run_name(accelerator: Accelerator, given: str, prefix: str) -> str:
    """The given run_name, or one fresh unique name agreed by all processes."""
    name = [given or default_run_name(prefix)]
    if accelerator.num_processes > 1:
        broadcast_object_list(name)
    return name[0]


@contextmanager
def claim_run(accelerator: Accelerator, output_dir: str, stage: str, run_name: str) -> Iterator[Path]:
    """The run's folder output_dir/<stage>/<run_name>, owned by this run for the with-block.

    Enter it before the MLflow run starts: the main process takes the run's lock
    (another live process with this run_name is refused) and refuses a run_name
    whose folder holds a finished run, so neither ever reaches MLflow or the folder.
    """
    workdir = stage_dir(output_dir, stage, run_name)
    with ExitStack() as stack:
        error: list[str | None] = [None]
        if accelerator.is_main_process:
            try:
                stack.enter_context(run_lock(output_dir, stage, run_name))
                check_not_finished(workdir, run_name)
            except LesionError as err:
                if accelerator.num_processes == 1:
                    raise
                error[0] = str(err)
        if accelerator.num_processes > 1:  # every rank stops, none waits for a main process that left
            broadcast_object_list(error)
            if error[0] is not None:
                raise ConfigError(error[0])
        yield workdir


def fresh_workdir(accelerator: Accelerator, tracker: Tracker, workdir: Path) -> None:
    """A resumed run keeps its checkpoints; a new run clears what an unfinished run of its name left, nothing else.

    claim_run has refused a finished run's folder, and workdir is output_dir/<stage>/<run_name>.
    """
    resumed = [tracker.resumed]
    if accelerator.num_processes > 1:
        broadcast_object_list(resumed)
    if accelerator.is_main_process and not resumed[0] and workdir.exists():
        print(f"[lesion] {workdir}: removing the leftovers of an unfinished run with this name (no unfinished "
              "MLflow run to resume it in this experiment)")
        shutil.rmtree(workdir)
    accelerator.wait_for_everyone()


def finish_run(accelerator: Accelerator, tracker: Tracker, workdir: Path, run_name: str) -> None:
    """The run's last step: its folder is marked finished and is never cleaned or reused after this."""
    if accelerator.is_main_process:
        mark_finished(workdir, run_name, tracker.run_id)
    accelerator.wait_for_everyone()


def build_initialised_model(cfg: FinetuneConfig, tracker: Tracker) -> torch.nn.Module:
    init = cfg.model.encoder_init
    model = build_model(cfg.model, pretrained_imagenet=init == "imagenet")
    if init not in ("random", "imagenet"):
        info = init_encoder(model, init)
        tracker.set_tags({f"lesion.init.{k}": v for k, v in info.items()})
    return model


@dataclass
class StageResult:
    fit: FitResult
    model_uri: str | None
    version: str | None
    data: PreparedData
    test: dict[str, float] | None = None  # the best model's ISIC metrics on the labelled test split, if any
    external: dict[str, float] | None = None  # ... and on the external set (DataConfig.external), if any


def score_test_split(best_dir: Path, data: PreparedData, batch_size: int,
                     device: torch.device | str) -> dict[str, float] | None:
    """The best checkpoint on the held-out test split (official where the source has one): reported, never selected on."""
    test_rows = select(data.rows, "test", labelled=True)
    if not test_rows:
        return None
    model, _ = load_model(str(best_dir))
    return score_rows(model.to(device), test_rows, data.cache, batch_size, device)


def external_rows(cfg: DataConfig, image_size: int) -> tuple[list[Row], PreprocessCache]:
    """Every image with a mask in cfg.external (another source or clinic), cached at the working size."""
    cache_dir = resolve_cache_dir(cfg.cache_dir)
    found = discover(cfg.external, cache_dir, skip_bad=cfg.skip_bad)
    rows = [Row(r.id, r.image, r.mask, "external", True, r.source) for r in found.records if r.mask]
    if not rows:
        raise ConfigError(f"external={cfg.external}: no images with masks; pass a labelled folder "
                          "(images/ + masks/, ISIC or PH2) or leave external empty")
    cache = PreprocessCache(cache_dir, image_size, cfg.max_pixels)
    usable, skipped, _ = cache.warm([(r.image, r.mask) for r in rows], skip_bad=cfg.skip_bad,
                                    desc=f"external: decode+resize to {image_size}px")
    if skipped:
        print(f"[lesion] external: skipped {len(skipped)} unusable file(s) (skip_bad=true)")
    return [rows[i] for i in usable], cache


def score_external(best_dir: Path, cfg: DataConfig, image_size: int, batch_size: int,
                   device: torch.device | str) -> dict[str, float] | None:
    """The best checkpoint on the external set: how it generalises to another source; reported, never selected on."""
    if not cfg.external:
        return None
    rows, cache = external_rows(cfg, image_size)
    model, _ = load_model(str(best_dir))
    return score_rows(model.to(device), rows, cache, batch_size, device)


def train_segmenter(cfg: FinetuneConfig, accelerator: Accelerator, tracker: Tracker, workdir: Path, role: str,
                    data: PreparedData, model: torch.nn.Module | None = None, train_rows=None,
                    pseudo: dict[str, str] | None = None, pseudo_threshold: float = 0.0,
                    sampler_weights: torch.Tensor | None = None, extra_tags: dict[str, Any] | None = None,
                    epoch_callback=None, epoch_draws: int = 0) -> StageResult:
    """Fit a segmenter on data (labelled rows, or given train_rows with pseudo-labels), then log and register it."""
    train_rows = train_rows if train_rows is not None else select(data.rows, "train", labelled=True)
    val_rows = select(data.rows, "val", labelled=True)
    if not val_rows:
        raise ConfigError(f"{cfg.data.data}: no labelled validation images; set val_fraction > 0 or add a validation folder")
    if model is None:
        set_seed(cfg.run.seed, deterministic=not torch.cuda.is_available())  # the same initial weights every run
        model = build_initialised_model(cfg, tracker)
    cc = cfg.model.color_constancy
    train_ds = SegmentationDataset(train_rows, data.cache, cfg.noise, train=True, seed=cfg.run.seed,
                                   pseudo=pseudo, pseudo_threshold=pseudo_threshold, color_constancy=cc)
    val_ds = SegmentationDataset(val_rows, data.cache, color_constancy=cc)
    if accelerator.is_main_process:
        write_json(workdir / "plan.json", {
            **to_flat(cfg), "image_size": data.image_size, "num_processes": accelerator.num_processes,
            "mixed_precision": resolve_mixed_precision(cfg.train.mixed_precision),
            "num_workers": resolve_workers(cfg.data.num_workers), "device": str(accelerator.device),
            "train_images": len(train_rows), "val_images": len(val_rows), "role": role, "data_summary": data.summary(),
        })
        tracker.log_artifact(workdir / "plan.json", "plan")
    result = fit(model, train_ds, val_ds, data.cache, cfg.train, accelerator, tracker, workdir, data.image_size,
                 seed=cfg.run.seed, num_workers=resolve_workers(cfg.data.num_workers), stage=role,
                 sampler_weights=sampler_weights, epoch_draws=epoch_draws, epoch_callback=epoch_callback)
    model_uri = version = test = external = None
    if accelerator.is_main_process and tracker.active and result.history:
        test = score_test_split(result.best_dir, data, cfg.train.batch_size, accelerator.device)
        done = tracker.tags()
        if "lesion.model_uri" in done:  # logged before a crash: never twice
            model_uri, version = done["lesion.model_uri"], done.get("lesion.model_version")
        else:
            example = val_ds.cache.load(val_rows[0].image, None).image
            model_uri = log_segmenter(result.best_dir, image_png(example), tracker)
            tracker.set_tags({"lesion.model_uri": model_uri})
            share_logged_copy(result.best_dir, model_uri)  # a local store holds the weights once, not twice
            if cfg.run.register:
                tags = {"role": role, "label_fraction": cfg.data.label_fraction, "data": cfg.data.data,
                        "parent_run": done.get("mlflow.parentRunId", tracker.run_id),  # selftrain: its parent
                        "val_jaccard": f"{result.best_score:.6f}",
                        "arch": cfg.model.arch, "encoder": cfg.model.encoder, **(extra_tags or {})}
                if test:
                    tags["test_jaccard"] = f"{test['jaccard']:.6f}"
                version = register(model_uri, SEGMENTER, tags)
                tracker.set_tags({"lesion.model_version": version})
        external = score_external(result.best_dir, cfg.data, data.image_size, cfg.train.batch_size,
                                  accelerator.device)
        best = next((h for h in result.history if h["epoch"] == result.best_epoch), result.history[-1])
        tracker.log_metrics({"best/val_jaccard": result.best_score, "best/val_dice": best["val/dice"],
                             **{f"best/test_{k}": v for k, v in (test or {}).items()},
                             **{f"best/external_{k}": v for k, v in (external or {}).items()}},
                            step=max(0, result.best_epoch))
        for name, scores in (("test", test), ("external", external)):
            if scores:
                print(f"[lesion] {role} best checkpoint on the {scores['images']} {name} images: "
                      f"{name}/jaccard {scores['jaccard']:.4f} {name}/dice {scores['dice']:.4f} "
                      f"{name}/degenerate {scores['degenerate']:.1%}")
    return StageResult(result, model_uri, version, data, test, external)


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


def run_finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    if cfg.data.unlabeled:  # nothing to learn from without masks here: do not decode them for nothing
        print(f"[lesion] finetune trains on labelled images only: unlabeled={cfg.data.unlabeled} is for pretrain "
              "and selftrain, and is ignored here")
        cfg = replace(cfg, data=replace(cfg.data, unlabeled=""))
    accelerator = make_accelerator(cfg.train)
    tracker = Tracker(enabled=accelerator.is_main_process)
    run_name = shared_run_name(accelerator, cfg.run.run_name, "finetune")
    tags = {"lesion.num_processes": accelerator.num_processes}
    with claim_run(accelerator, cfg.run.output_dir, "finetune", run_name) as workdir, \
            tracker.run("finetune", run_name, cfg.run.experiment, params=to_flat(cfg), tags=tags):
        fresh_workdir(accelerator, tracker, workdir)
        data = prepare_data(cfg.data, cfg.run.seed, workdir, accelerator.is_main_process,
                            accelerator.wait_for_everyone)
        tracker.log_artifact(data.manifest, "data")
        tracker.log_params({f"data.{k}": v for k, v in data.summary().items()})
        stage = train_segmenter(cfg, accelerator, tracker, workdir, "supervised", data)
        out = {"run_id": tracker.run_id, "run_name": run_name, "best_val_jaccard": stage.fit.best_score,
               "best_epoch": stage.fit.best_epoch, "test": stage.test, "external": stage.external, "model_uri": stage.model_uri, "version": stage.version,
               "history": stage.fit.history, "num_processes": accelerator.num_processes, "workdir": str(workdir)}
        if accelerator.is_main_process and stage.version:
            out["champion"] = promote_champion(stage.version, stage.fit.best_score, tracker, data, accelerator.device)
        if accelerator.is_main_process:
            write_json(workdir / "result.json", out)
        finish_run(accelerator, tracker, workdir, run_name)
    return out
