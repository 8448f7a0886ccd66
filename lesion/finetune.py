"""The finetune entry point: data -> model -> fit -> logged, registered segmenter (and the champion gate).

train_segmenter is the one way a segmenter is trained, logged and registered: finetune,
the teacher and students of selftrain, and tune's trials all call it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from lesion.config import SEGMENTER, DataConfig, FinetuneConfig, to_flat
from lesion.data.cache import PreprocessCache
from lesion.data.datasets import SegmentationDataset
from lesion.data.prepare import PreparedData, resolve_cache_dir
from lesion.data.sources import discover
from lesion.data.splits import Row, select
from lesion.errors import ConfigError
from lesion.inference import image_png
from lesion.interrupts import uninterrupted
from lesion.models import build_model
from lesion.models.io import load_model
from lesion.outputs import write_json
from lesion.registry import init_encoder, log_segmenter, promote_champion, register, share_logged_copy
from lesion.stage import stage
from lesion.tracking import Tracker
from lesion.train.engine import Callback, FitContext, FitResult, Kept, fit, resolve_mixed_precision, resolve_workers
from lesion.train.segmentation import Segmentation, score_rows, segmentation_callbacks, segmentation_loaders


def build_initialised_model(cfg: FinetuneConfig, tracker: Tracker) -> torch.nn.Module:
    init = cfg.model.encoder_init
    model = build_model(cfg.model, pretrained_imagenet=init == "imagenet")
    if init not in ("random", "imagenet"):
        info = init_encoder(model, init)  # an SSL encoder or a segmenter: a URI or a folder
        tracker.set_tags({f"lesion.init.{k}": v for k, v in info.items()})
    return model


@dataclass
class StageResult:
    fit: FitResult
    kept: Kept  # the weights handed on (cfg.train.keep): registered, scored, pseudo-labelling, the next student
    model_uri: str | None
    version: str | None
    data: PreparedData
    test: dict[str, float] | None = None  # the kept weights' ISIC metrics on the labelled test split, if any
    external: dict[str, float] | None = None  # ... and on the external set (DataConfig.external), if any


def score_test_split(model_dir: Path, data: PreparedData, batch_size: int,
                     device: torch.device | str) -> dict[str, float] | None:
    """The kept weights on the held-out test split (official where the source has one): reported, never selected on."""
    test_rows = select(data.rows, "test", labelled=True)
    if not test_rows:
        return None
    model, _ = load_model(str(model_dir))
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


def score_external(model_dir: Path, cfg: DataConfig, image_size: int, batch_size: int,
                   device: torch.device | str) -> dict[str, float] | None:
    """The kept weights on the external set: how they generalise to another source; reported, never selected on."""
    if not cfg.external:
        return None
    rows, cache = external_rows(cfg, image_size)
    model, _ = load_model(str(model_dir))
    return score_rows(model.to(device), rows, cache, batch_size, device)


def train_segmenter(cfg: FinetuneConfig, accelerator: Accelerator, tracker: Tracker, workdir: Path, role: str,
                    data: PreparedData, model: torch.nn.Module | None = None, train_rows=None,
                    pseudo: dict[str, str] | None = None, pseudo_threshold: float = 0.0,
                    sampler_weights: torch.Tensor | None = None, extra_tags: dict[str, Any] | None = None,
                    callbacks: Sequence[Callback] = (), epoch_draws: int = 0) -> StageResult:
    """Fit a segmenter on data (labelled rows, or given train_rows with pseudo-labels), then log and register it.

    callbacks: more of fit()'s callbacks (a tune trial's pruning), after the weights, logging and pictures.
    """
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
    loaders = segmentation_loaders(train_ds, val_ds, cfg.train, cfg.run.seed, resolve_workers(cfg.data.num_workers),
                                   sampler_weights, epoch_draws)
    result = fit(model, Segmentation(cfg.train, val_ds, accelerator), loaders, cfg.train,
                 FitContext(accelerator, workdir, cfg.run.seed, role),
                 segmentation_callbacks(cfg.train, data.image_size, val_ds, tracker, role, callbacks))
    kept = result.kept(cfg.train.keep)
    if accelerator.is_main_process and result.history:
        # Always say which weights go on: with keep=last they may score below the best epoch on validation.
        best = (f"; its best epoch {result.best_epoch + 1}: {result.best_score:.4f}"
                if result.best_epoch != kept.epoch and result.best_epoch >= 0 else "")
        print(f"[lesion] {role} hands on its {cfg.train.keep} weights: epoch {kept.epoch + 1}/{len(result.history)}, "
              f"val/jaccard {kept.record.get('val/jaccard', float('nan')):.4f}{best}")
    model_uri = version = test = external = None
    if accelerator.is_main_process and tracker.active and result.history:
        test = score_test_split(kept.dir, data, cfg.train.batch_size, accelerator.device)
        done = tracker.tags()
        if "lesion.model_uri" in done:  # logged before a crash: never twice
            model_uri, version = done["lesion.model_uri"], done.get("lesion.model_version")
        else:
            example = val_ds.cache.load(val_rows[0].image, None).image
            with uninterrupted():  # logged and registered, or neither: a resume trusts these tags
                model_uri = log_segmenter(kept.dir, image_png(example), tracker)
                tracker.set_tags({"lesion.model_uri": model_uri})
                share_logged_copy(kept.dir, model_uri)  # a local store holds the weights once, not twice
                if cfg.run.register:
                    tags = {"role": role, "label_fraction": cfg.data.label_fraction, "data": cfg.data.data,
                            "parent_run": done.get("mlflow.parentRunId", tracker.run_id),  # selftrain: its parent
                            "val_jaccard": f"{kept.record['val/jaccard']:.6f}", "epoch": kept.epoch + 1,
                            "arch": cfg.model.arch, "encoder": cfg.model.encoder, **(extra_tags or {})}
                    if test:
                        tags["test_jaccard"] = f"{test['jaccard']:.6f}"
                    version = register(model_uri, SEGMENTER, tags)
                    tracker.set_tags({"lesion.model_version": version})
        external = score_external(kept.dir, cfg.data, data.image_size, cfg.train.batch_size, accelerator.device)
        # model/*: the weights this run hands on (keep=best: its best epoch; keep=last: its final one).
        tracker.log_metrics({"model/val_jaccard": kept.record["val/jaccard"], "model/val_dice": kept.record["val/dice"],
                             "model/epoch": kept.epoch + 1,
                             **{f"model/test_{k}": v for k, v in (test or {}).items()},
                             **{f"model/external_{k}": v for k, v in (external or {}).items()}},
                            step=max(0, kept.epoch))
        for name, scores in (("test", test), ("external", external)):
            if scores:
                # Which weights these are, the "hands on" line above says.
                print(f"[lesion] {role} on the {scores['images']} {name} images: "
                      f"{name}/jaccard {scores['jaccard']:.4f} {name}/dice {scores['dice']:.4f} "
                      f"{name}/degenerate {scores['degenerate']:.1%}")
    return StageResult(result, kept, model_uri, version, data, test, external)


def run_finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    if cfg.data.unlabeled:  # nothing to learn from without masks here: do not decode them for nothing
        print(f"[lesion] finetune trains on labelled images only: unlabeled={cfg.data.unlabeled} is for pretrain "
              "and selftrain, and is ignored here")
        cfg = replace(cfg, data=replace(cfg.data, unlabeled=""))
    with stage("finetune", cfg) as ctx:
        result = train_segmenter(cfg, ctx.accelerator, ctx.tracker, ctx.workdir, "supervised", ctx.data)
        out = {"run_id": ctx.tracker.run_id, "run_name": ctx.run_name,
               "val_jaccard": result.kept.record.get("val/jaccard"), "epoch": result.kept.epoch,
               "model_dir": str(result.kept.dir),
               "best_val_jaccard": result.fit.best_score, "best_epoch": result.fit.best_epoch,
               "test": result.test, "external": result.external,
               "model_uri": result.model_uri, "version": result.version, "history": result.fit.history,
               "num_processes": ctx.accelerator.num_processes, "workdir": str(ctx.workdir)}
        if ctx.main and result.version:
            out["champion"] = promote_champion(result.version, out["val_jaccard"], ctx.tracker, ctx.data,
                                               ctx.accelerator.device)
        if ctx.main:
            write_json(ctx.workdir / "result.json", out)
    return out
