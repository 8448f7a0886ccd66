"""Noisy Student self-training as a sequence of resumable stages.

    teacher = fit(labelled)
    for round in 1..iterations:
        pseudo  = pseudo_label(teacher, unlabelled pool)
        student = fit(labelled + pseudo, noise on)      # strong augmentation, dropout, stochastic depth
        teacher = student

One parent MLflow run; each stage (teacher, pseudo1, student1, pseudo2, ...)
is a nested run tagged with its stage name. A re-run with the same run_name
finds the finished stages by those tags and skips them, and the stage in
flight resumes from its last epoch checkpoint. The steps themselves are in
lesion/selftrain/rounds.py (tune runs the same ones).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from accelerate.utils import broadcast_object_list

from lesion.config import SEGMENTER, SelftrainConfig, load_params_file, replace_flat, to_flat
from lesion.data.datasets import load_pseudo_label
from lesion.data.prepare import PreparedData
from lesion.data.splits import Row, select, unlabelled_pool
from lesion.errors import ConfigError
from lesion.finetune import StageResult
from lesion.inference import predict_images
from lesion.models.io import load_model
from lesion.outputs import write_json
from lesion.plots import overlay, stage_comparison, titled_grid
from lesion.registry import artifact_dir, promote_champion, set_alias
from lesion.selftrain.pseudo import (DECISIONS, PseudoStats, Selection, mean_valid_fraction, read_stats,
                                    select_pseudo_labels)
from lesion.selftrain.rounds import (check_student, pseudo_round, stage_configs, student_for, train_student,
                                     train_teacher)
from lesion.stage import StageContext, stage
from lesion.tracking import Tracker, finished_stage

ENTRY = "selftrain"
STAGE_FILE = "stage.json"
SUMMARY_KEYS = ("epoch", "val_jaccard", "val_dice", "val_threshold_jaccard", "val_miou2", "test_jaccard", "test_dice",
                "external_jaccard", "external_dice", "external_degenerate", "external_poor", "external_low_specificity",
                "version")


def apply_params(cfg: SelftrainConfig) -> SelftrainConfig:
    """Overlay tuned parameters (a JSON path, or a runs:/ URI of tune's best_params.json)."""
    if not cfg.pseudo.params:
        return cfg
    source = cfg.pseudo.params
    if Path(source).is_file():
        values = load_params_file(source)
    else:
        with artifact_dir(source) as folder:
            path = folder if folder.is_file() else next(iter(sorted(folder.rglob("*.json"))), folder)
            values = load_params_file(str(path))
    print(f"[lesion] applying {len(values)} tuned parameter(s) from {source}: {values}")
    return replace_flat(cfg, **values)


@dataclass
class StageRecord:
    name: str
    outputs: dict[str, Any]


class Stages:
    """Runs each stage once as a nested run; a finished stage is read back instead of re-run."""

    def __init__(self, ctx: StageContext):
        self.accelerator, self.tracker, self.run_name, self.workdir = ctx.accelerator, ctx.tracker, ctx.run_name, ctx.workdir
        self.parent_run_id = ctx.tracker.run_id

    def run(self, name: str, params: dict[str, Any], work, title: str = "") -> dict[str, Any]:
        """Run stage name once; title is its run's name in the MLflow UI (default: name)."""
        stage_file = self.workdir / name / STAGE_FILE
        done = [None]
        if self.accelerator.is_main_process:
            finished = finished_stage(ENTRY, self.run_name, name, self.parent_run_id)
            if finished is not None and stage_file.is_file():
                done[0] = json.loads(stage_file.read_text())
                print(f"[lesion] stage {name}: finished in run {finished.info.run_id}, skipped")
        if self.accelerator.num_processes > 1:
            broadcast_object_list(done)
        if done[0] is not None:
            return done[0]
        with self.tracker.run(ENTRY, self.run_name, params=params, nested=True, stage=name, title=title or name):
            if self.accelerator.is_main_process and not self.tracker.resumed and (self.workdir / name).exists():
                shutil.rmtree(self.workdir / name)  # leftovers of this run's stage from before it was restarted
            self.accelerator.wait_for_everyone()
            outputs = work(self.workdir / name)
            if self.accelerator.is_main_process:
                outputs["run_id"] = self.tracker.run_id
                write_json(stage_file, outputs)
        self.accelerator.wait_for_everyone()
        return outputs


def stage_outputs(result: StageResult, train_images: int) -> dict[str, Any]:
    """What a training stage leaves for the stages after it and for the summary (stage.json): its kept weights."""
    kept = result.kept.record
    test, external = result.test or {}, result.external or {}
    return {"model_dir": str(result.kept.dir), "epoch": result.kept.epoch + 1, "version": result.version,
            "model_uri": result.model_uri, "val_jaccard": kept.get("val/jaccard", float("nan")),
            "val_dice": kept.get("val/dice", float("nan")), "val_miou2": kept.get("val/miou2", float("nan")),
            "val_threshold_jaccard": kept.get("val/threshold_jaccard", float("nan")),
            "test_jaccard": test.get("jaccard"), "test_dice": test.get("dice"),
            "external_jaccard": external.get("jaccard"), "external_dice": external.get("dice"),
            "external_degenerate": external.get("degenerate"), "external_poor": external.get("jaccard_below_half"),
            "external_low_specificity": external.get("specificity_below_half"), "train_images": train_images}


def model_dir(outputs: dict[str, Any]) -> str:
    """A finished stage's kept weights (stage.json of a run started before `keep` said best_dir)."""
    return outputs.get("model_dir") or outputs["best_dir"]


def student_name(round_: int) -> str:
    """student, student*, student**, then student4, ...: the paper's names."""
    return "student" + "*" * (round_ - 1) if round_ <= 3 else f"student{round_}"


def promote(ctx: StageContext, outputs: dict[str, Any], alias: str, name: str) -> None:
    """Point alias at the stage's version; champion only through the gate."""
    if ctx.main and outputs.get("version"):
        set_alias(SEGMENTER, alias, outputs["version"])
        promote_champion(outputs["version"], outputs["val_jaccard"], ctx.tracker, ctx.data, ctx.accelerator.device,
                         name)


def label_pool(cfg: SelftrainConfig, ctx: StageContext, teacher: dict[str, Any], pool: list[Row], round_: int,
               folder: Path) -> dict[str, Any]:
    """The pseudo stage: the teacher labels the pool; the main process logs what the filters keep."""
    pseudo_round(cfg, model_dir(teacher), pool, ctx.data, ctx.accelerator, folder)
    out: dict[str, Any] = {"folder": str(folder)}
    if ctx.main:
        stats = read_stats(folder)
        selection = select_pseudo_labels(stats, cfg.pseudo.min_confidence, cfg.pseudo.min_area, folder / DECISIONS)
        summary = {**selection.summary(), "pool": len(pool),
                   "valid_pixel_fraction": mean_valid_fraction(selection, cfg.pseudo.threshold)}
        ctx.tracker.log_metrics({f"pseudo/{k}": v for k, v in summary.items()}, step=round_)
        ctx.tracker.log_artifact(folder / DECISIONS, "pseudo_labels")
        ctx.tracker.log_artifact(folder / "probabilities", "pseudo_labels/probabilities")
        picture = _pseudo_picture(stats, selection, ctx.data)
        if picture is not None:
            ctx.tracker.log_image(picture, f"pictures/pseudo_labels_round{round_}.png")
        out.update(summary, artifact=f"runs:/{ctx.tracker.run_id}/pseudo_labels")
        print(f"[lesion] round {round_}: kept {summary['kept']} of {len(pool)} pseudo-labels "
              f"({summary['valid_pixel_fraction']:.1%} of their pixels above threshold {cfg.pseudo.threshold})")
    return out


def kept_selection(cfg: SelftrainConfig, folder: str, round_: int) -> Selection:
    """The pseudo-labels the filters keep (the same on every rank); none kept is an error that says what to change."""
    stats = read_stats(folder)
    selection = select_pseudo_labels(stats, cfg.pseudo.min_confidence, cfg.pseudo.min_area)
    if not selection.kept:
        best = max((s.mean_confidence for s in stats), default=0.0)
        raise ConfigError(f"round {round_}: every pseudo-label was filtered out (the most confident image has "
                          f"mean confidence {best:.3f}); lower min_confidence ({cfg.pseudo.min_confidence}) "
                          f"or min_area ({cfg.pseudo.min_area}), or train the teacher longer")
    return selection


def run_selftrain(cfg: SelftrainConfig) -> dict[str, Any]:
    cfg = apply_params(cfg)
    check_student(cfg)
    teacher_cfg, student_cfg = stage_configs(cfg)
    with stage(ENTRY, cfg) as ctx:
        pool = unlabelled_pool(ctx.data.rows)
        if not pool:
            raise ConfigError(f"{cfg.data.data}: no unlabelled images to pseudo-label; lower label_fraction or pass unlabeled=FOLDER")
        stages = Stages(ctx)

        def teacher(folder: Path) -> dict[str, Any]:
            ctx.tracker.log_artifact(ctx.data.manifest, "data")
            return stage_outputs(train_teacher(cfg, ctx.accelerator, ctx.tracker, folder, ctx.data, {"round": 0}), 0)

        history = [StageRecord("teacher", stages.run("teacher", to_flat(teacher_cfg), teacher))]
        promote(ctx, history[-1].outputs, "teacher", "teacher")
        for round_ in range(1, cfg.pseudo.iterations + 1):
            previous, name = history[-1].outputs, student_name(round_)
            pseudo = stages.run(f"pseudo{round_}", {"teacher_version": previous.get("version"), **to_flat(cfg.pseudo)},
                                lambda folder: label_pool(cfg, ctx, previous, pool, round_, folder))
            selection = kept_selection(cfg, pseudo["folder"], round_)
            round_cfg = student_for(student_cfg, cfg.pseudo, model_dir(previous))
            tags = {"round": round_, "teacher_version": previous.get("version"), "pseudo_labels": pseudo.get("artifact"),
                    "stage_name": name}

            def student(folder: Path) -> dict[str, Any]:
                ctx.tracker.log_artifact(ctx.data.manifest, "data")
                result = train_student(cfg, round_cfg, ctx.accelerator, ctx.tracker, folder, ctx.data, selection,
                                       pool, tags)
                return stage_outputs(result, len(select(ctx.data.rows, "train", labelled=True)) + len(selection.kept))

            history.append(StageRecord(name, stages.run(f"student{round_}", {**to_flat(round_cfg), "role": name},
                                                        student, title=name)))
            promote(ctx, history[-1].outputs, "student", name)
        summary = {r.name: {k: r.outputs.get(k) for k in SUMMARY_KEYS} for r in history}
        if ctx.main:
            report(history, summary, ctx)
    return {"run_id": ctx.tracker.run_id, "run_name": ctx.run_name, "stages": summary, "workdir": str(ctx.workdir)}


def report(history: list[StageRecord], summary: dict[str, dict[str, Any]], ctx: StageContext) -> None:
    """Per-stage metrics, the comparison pictures, selftrain.json and one line per stage (main process)."""
    for i, r in enumerate(history):
        ctx.tracker.log_metrics({"stage/val_jaccard": r.outputs["val_jaccard"], "stage/val_dice": r.outputs["val_dice"],
                                 **{f"stage/{k}": r.outputs[k] for k in ("test_jaccard", "test_dice",
                                                                         "external_jaccard", "external_degenerate")
                                    if r.outputs.get(k) is not None}}, step=i)
    _log_comparison(history, ctx.data, ctx.tracker)
    write_json(ctx.workdir / "selftrain.json", summary)
    ctx.tracker.log_artifact(ctx.workdir / "selftrain.json", "selftrain")
    for name, s in summary.items():
        test = "".join(f"{split}/jaccard {s[split + '_jaccard']:.4f}  {split}/dice {s[split + '_dice']:.4f}  "
                       for split in ("test", "external") if s.get(split + "_jaccard") is not None)
        print(f"[lesion] {name:10s} epoch {s.get('epoch', '?')}  val/jaccard {s['val_jaccard']:.4f}  "
              f"val/dice {s['val_dice']:.4f}  {test}"
              + (f"lesion-segmenter v{s['version']}" if s.get("version") is not None else "(not registered)"))


def _pseudo_picture(stats: list[PseudoStats], selection, data: PreparedData, count: int = 4) -> np.ndarray | None:
    """Image | pseudo-label | the teacher's probability, kept ones first, then dropped ones, each with its decision.

    A pseudo-label is the teacher's guess, not ground truth: it is drawn as a prediction (red).
    """
    kept = {s.id for s in selection.kept}
    shown = sorted(stats, key=lambda s: s.id not in kept)[:count]
    if not shown:
        return None
    images = [data.cache.load(s.image, None).image for s in shown]
    probs = [load_pseudo_label(s.file) for s in shown]
    grey = [np.repeat((p * 255).round().astype(np.uint8)[..., None], 3, axis=2) for p in probs]
    return titled_grid([images, [overlay(im, pred=p >= 0.5) for im, p in zip(images, probs)], grey],
                       ["image", "pseudo-label", "probability"],
                       [f"{s.id} {'kept' if s.id in kept else 'dropped'} conf {s.mean_confidence:.2f}" for s in shown])


def _log_comparison(history: list[StageRecord], data: PreparedData, tracker: Tracker, count: int = 4) -> None:
    """Bars of val Jaccard/Dice per stage, and the same validation images across the stages."""
    names = [r.name for r in history]
    figure = stage_comparison(names, {"val/jaccard": [r.outputs["val_jaccard"] for r in history],
                                      "val/dice": [r.outputs["val_dice"] for r in history]})
    tracker.log_figure(figure, "plots/stage_comparison.png")
    val = select(data.rows, "val", labelled=True)[:count]
    images = [data.cache.load(r.image, r.mask).image for r in val]
    truths = [data.cache.load(r.image, r.mask).mask.astype(bool) for r in val]
    columns = [[overlay(im, truth=t) for im, t in zip(images, truths)]]
    for r in history:
        model, _ = load_model(model_dir(r.outputs))
        probs = predict_images(model, images, data.image_size, color_constancy=model.config.color_constancy)
        columns.append([overlay(im, pred=p >= 0.5, truth=t) for im, p, t in zip(images, probs, truths)])
    grid = titled_grid(columns, ["truth", *names], [r.id for r in val])
    tracker.log_image(grid, "pictures/stages_" + "_".join(n.replace("*", "star") for n in ["truth", *names]) + ".png")
