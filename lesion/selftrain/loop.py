"""Noisy Student self-training as a sequence of resumable stages.

    teacher = fit(labelled)
    for round in 1..iterations:
        pseudo  = pseudo_label(teacher, unlabelled pool)
        student = fit(labelled + pseudo, noise on)      # strong augmentation, dropout, stochastic depth
        teacher = student

One parent MLflow run; each stage (teacher, pseudo1, student1, pseudo2, ...)
is a nested run tagged with its stage name. A re-run with the same run_name
finds the finished stages by those tags and skips them, and the stage in
flight resumes from its last epoch checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from lesion.config import (FinetuneConfig, NoiseConfig, PseudoConfig, SelftrainConfig, load_params_file, replace_flat,
                           to_flat)
from lesion.data.datasets import SegmentationDataset
from lesion.data.prepare import PreparedData, prepare_data
from lesion.data.splits import Row, select, unlabelled_pool
from lesion.errors import ConfigError
from lesion.models.io import artifact_dir, load_model
from lesion.selftrain.pseudo import (DECISIONS, PseudoStats, mean_valid_fraction, pseudo_label, read_stats,
                                    select_pseudo_labels)
from lesion.tracking import SEGMENTER, Tracker, finished_stage, set_alias, write_json
from lesion.train.engine import make_accelerator
from lesion.train.finetune import (claim_run, finish_run, fresh_workdir, promote_champion, shared_run_name,
                                   train_segmenter)

ENTRY = "selftrain"
STAGE_FILE = "stage.json"


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


def stage_configs(cfg: SelftrainConfig) -> tuple[FinetuneConfig, FinetuneConfig]:
    """Teacher: plain augmentation, no dropout. Student: the noise policy, dropout, stochastic depth; its encoder,
    epochs and lr are the teacher's where student_encoder, student_epochs, student_lr are None."""
    pseudo = cfg.pseudo
    teacher = FinetuneConfig(data=cfg.data, model=cfg.model, train=cfg.train, noise=NoiseConfig(noise=0.0), run=cfg.run)
    student_model = replace(cfg.model, dropout=pseudo.student_dropout, drop_path=pseudo.student_drop_path,
                            encoder=cfg.model.encoder if pseudo.student_encoder is None else pseudo.student_encoder)
    student_train = replace(cfg.train, epochs=cfg.train.epochs if pseudo.student_epochs is None else pseudo.student_epochs,
                            lr=cfg.train.lr if pseudo.student_lr is None else pseudo.student_lr)
    student = FinetuneConfig(data=cfg.data, model=student_model, train=student_train, noise=cfg.noise, run=cfg.run)
    return teacher, student


def student_for(student: FinetuneConfig, pseudo: PseudoConfig, teacher_dir: str) -> FinetuneConfig:
    """The student config of one round: with student_init=teacher it starts from its teacher's weights."""
    if pseudo.student_init != "teacher":
        return student
    return replace(student, model=replace(student.model, encoder_init=teacher_dir))


def check_student(cfg: SelftrainConfig) -> None:
    if cfg.pseudo.student_init == "teacher" and cfg.pseudo.student_encoder not in (None, cfg.model.encoder):
        raise ConfigError(f"student_init=teacher needs the teacher's encoder ({cfg.model.encoder}) in the student, not "
                          f"student_encoder={cfg.pseudo.student_encoder}; drop student_encoder or use "
                          "student_init=encoder_init")


def sampler_weights(n_labelled: int, n_pseudo: int, pseudo_ratio: float) -> torch.Tensor:
    """Per-item weights so that batches hold pseudo_ratio pseudo-labelled images per labelled one."""
    labelled_share = 1.0 / (1.0 + pseudo_ratio)
    w_l = labelled_share / max(1, n_labelled)
    w_p = (1 - labelled_share) / max(1, n_pseudo)
    return torch.tensor([w_l] * n_labelled + [w_p] * n_pseudo, dtype=torch.double)


@dataclass
class StageRecord:
    name: str
    outputs: dict[str, Any]


class Stages:
    """Runs each stage once as a nested run; a finished stage is read back instead of re-run."""

    def __init__(self, accelerator: Accelerator, tracker: Tracker, run_name: str, workdir: Path):
        self.accelerator, self.tracker, self.run_name, self.workdir = accelerator, tracker, run_name, workdir
        self.parent_run_id = tracker.run_id

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
                import shutil

                shutil.rmtree(self.workdir / name)  # leftovers of this run's stage from before it was restarted
            self.accelerator.wait_for_everyone()
            outputs = work(self.workdir / name)
            if self.accelerator.is_main_process:
                outputs["run_id"] = self.tracker.run_id
                write_json(stage_file, outputs)
        self.accelerator.wait_for_everyone()
        return outputs


def _train_stage(cfg: FinetuneConfig, accelerator: Accelerator, tracker: Tracker, data: PreparedData, role: str,
                 round_: int, extra_tags: dict[str, Any], train_rows: list[Row] | None = None,
                 pseudo: dict[str, str] | None = None, threshold: float = 0.0,
                 weights: torch.Tensor | None = None, epoch_draws: int = 0):
    def work(folder: Path) -> dict[str, Any]:
        tracker.log_artifact(data.manifest, "data")
        stage = train_segmenter(cfg, accelerator, tracker, folder, role, data, train_rows=train_rows, pseudo=pseudo,
                                pseudo_threshold=threshold, sampler_weights=weights, epoch_draws=epoch_draws,
                                extra_tags={"round": round_, **extra_tags})
        last = stage.fit.history[-1] if stage.fit.history else {}
        best = next((h for h in stage.fit.history if h["epoch"] == stage.fit.best_epoch), last)
        return {"best_dir": str(stage.fit.best_dir), "version": stage.version, "model_uri": stage.model_uri,
                "val_jaccard": stage.fit.best_score, "val_dice": best.get("val/dice", float("nan")),
                "val_miou2": best.get("val/miou2", float("nan")),
                "val_threshold_jaccard": best.get("val/threshold_jaccard", float("nan")),
                "test_jaccard": (stage.test or {}).get("jaccard"), "test_dice": (stage.test or {}).get("dice"),
                "external_jaccard": (stage.external or {}).get("jaccard"),
                "external_dice": (stage.external or {}).get("dice"),
                "external_degenerate": (stage.external or {}).get("degenerate"),
                "external_poor": (stage.external or {}).get("jaccard_below_half"),
                "external_low_specificity": (stage.external or {}).get("specificity_below_half"),
                "train_images": len(train_rows or [])}
    return work


def run_selftrain(cfg: SelftrainConfig) -> dict[str, Any]:
    cfg = apply_params(cfg)
    check_student(cfg)
    accelerator = make_accelerator(cfg.train)
    main = accelerator.is_main_process
    tracker = Tracker(enabled=main)
    run_name = shared_run_name(accelerator, cfg.run.run_name, "selftrain")
    teacher_cfg, student_cfg = stage_configs(cfg)
    with claim_run(accelerator, cfg.run.output_dir, ENTRY, run_name) as workdir, \
            tracker.run(ENTRY, run_name, cfg.run.experiment, params=to_flat(cfg),
                        tags={"lesion.num_processes": accelerator.num_processes}):
        fresh_workdir(accelerator, tracker, workdir)
        data = prepare_data(cfg.data, cfg.run.seed, workdir, main, accelerator.wait_for_everyone)
        tracker.log_artifact(data.manifest, "data")
        tracker.log_params({f"data.{k}": v for k, v in data.summary().items()})
        labelled = select(data.rows, "train", labelled=True)
        pool = unlabelled_pool(data.rows)
        if not pool:
            raise ConfigError(f"{cfg.data.data}: no unlabelled images to pseudo-label; lower label_fraction or pass unlabeled=FOLDER")
        stages = Stages(accelerator, tracker, run_name, workdir)
        history: list[StageRecord] = []

        teacher = stages.run("teacher", to_flat(teacher_cfg),
                             _train_stage(teacher_cfg, accelerator, tracker, data, "teacher", 0, {}))
        history.append(StageRecord("teacher", teacher))
        if main and teacher.get("version"):
            set_alias(SEGMENTER, "teacher", teacher["version"])
            promote_champion(teacher["version"], teacher["val_jaccard"], tracker, data, accelerator.device, "teacher")

        for round_ in range(1, cfg.pseudo.iterations + 1):
            previous = history[-1].outputs

            def label(folder: Path, previous=previous) -> dict[str, Any]:
                model, _ = load_model(previous["best_dir"])
                model.to(accelerator.device)
                pseudo_label(model, pool, data.cache, accelerator, folder, cfg.train.batch_size, cfg.pseudo.tta)
                out: dict[str, Any] = {"folder": str(folder)}
                if main:
                    stats = read_stats(folder)
                    selection = select_pseudo_labels(stats, cfg.pseudo.min_confidence,
                                                     cfg.pseudo.min_area, folder / DECISIONS)
                    summary = {**selection.summary(), "pool": len(pool),
                               "valid_pixel_fraction": mean_valid_fraction(selection, cfg.pseudo.threshold)}
                    tracker.log_metrics({f"pseudo/{k}": v for k, v in summary.items()}, step=round_)
                    tracker.log_artifact(folder / DECISIONS, "pseudo_labels")
                    tracker.log_artifact(folder / "probabilities", "pseudo_labels/probabilities")
                    picture = _pseudo_picture(stats, selection, data)
                    if picture is not None:
                        tracker.log_image(picture, f"pictures/pseudo_labels_round{round_}.png")
                    out.update(summary, artifact=f"runs:/{tracker.run_id}/pseudo_labels")
                    print(f"[lesion] round {round_}: kept {summary['kept']} of {len(pool)} pseudo-labels "
                          f"({summary['valid_pixel_fraction']:.1%} of their pixels above threshold {cfg.pseudo.threshold})")
                return out

            pseudo_stage = stages.run(f"pseudo{round_}", {"teacher_version": previous.get("version"), **to_flat(cfg.pseudo)},
                                      label)
            stats = read_stats(pseudo_stage["folder"])
            decisions = select_pseudo_labels(stats, cfg.pseudo.min_confidence, cfg.pseudo.min_area)
            by_id = {r.id: r for r in pool}
            pseudo_rows = [by_id[s.id] for s in decisions.kept]
            if not pseudo_rows:
                best = max((s.mean_confidence for s in stats), default=0.0)
                raise ConfigError(f"round {round_}: every pseudo-label was filtered out (the most confident image has "
                                  f"mean confidence {best:.3f}); lower min_confidence ({cfg.pseudo.min_confidence}) "
                                  f"or min_area ({cfg.pseudo.min_area}), or train the teacher longer")
            name = "student" + "*" * (round_ - 1) if round_ <= 3 else f"student{round_}"
            round_cfg = student_for(student_cfg, cfg.pseudo, previous["best_dir"])
            student = stages.run(f"student{round_}", {**to_flat(round_cfg), "role": name}, _train_stage(
                round_cfg, accelerator, tracker, data, "student", round_,
                {"teacher_version": previous.get("version"), "pseudo_labels": pseudo_stage.get("artifact"),
                 "stage_name": name},
                train_rows=labelled + pseudo_rows, pseudo={s.id: s.file for s in decisions.kept},
                threshold=cfg.pseudo.threshold,
                weights=sampler_weights(len(labelled), len(pseudo_rows), cfg.pseudo.pseudo_ratio),
                epoch_draws=cfg.pseudo.student_epoch_images), title=name)
            history.append(StageRecord(name, student))
            if main and student.get("version"):
                set_alias(SEGMENTER, "student", student["version"])
                promote_champion(student["version"], student["val_jaccard"], tracker, data, accelerator.device, name)

        summary = {r.name: {k: r.outputs.get(k) for k in ("val_jaccard", "val_dice", "val_threshold_jaccard", "val_miou2",
                                                           "test_jaccard", "test_dice", "external_jaccard",
                                                           "external_dice", "external_degenerate", "external_poor",
                                                           "external_low_specificity", "version")}
                   for r in history}
        if main:
            for i, r in enumerate(history):
                tracker.log_metrics({"stage/val_jaccard": r.outputs["val_jaccard"],
                                     "stage/val_dice": r.outputs["val_dice"],
                                     **{f"stage/{k}": r.outputs[k] for k in ("test_jaccard", "test_dice",
                                                                             "external_jaccard", "external_degenerate")
                                        if r.outputs.get(k) is not None}}, step=i)
            _log_comparison(history, data, tracker)
            write_json(workdir / "selftrain.json", summary)
            tracker.log_artifact(workdir / "selftrain.json", "selftrain")
            for name, s in summary.items():
                test = "".join(f"{split}/jaccard {s[split + '_jaccard']:.4f}  {split}/dice {s[split + '_dice']:.4f}  "
                               for split in ("test", "external") if s.get(split + "_jaccard") is not None)
                print(f"[lesion] {name:10s} val/jaccard {s['val_jaccard']:.4f}  val/dice {s['val_dice']:.4f}  {test}"
                      f"lesion-segmenter v{s['version']}")
        finish_run(accelerator, tracker, workdir, run_name)
    return {"run_id": tracker.run_id, "run_name": run_name, "stages": summary, "workdir": str(workdir)}


def _pseudo_picture(stats: list[PseudoStats], selection, data: PreparedData, count: int = 4) -> np.ndarray | None:
    """Image | pseudo-label | the teacher's probability, kept ones first, then dropped ones, each with its decision.

    A pseudo-label is the teacher's guess, not ground truth: it is drawn as a prediction (red).
    """
    from lesion.data.datasets import load_pseudo_label
    from lesion.plots import overlay, titled_grid

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
    from lesion.inference import predict_images
    from lesion.plots import overlay, stage_comparison, titled_grid

    names = [r.name for r in history]
    figure = stage_comparison(names, {"val/jaccard": [r.outputs["val_jaccard"] for r in history],
                                      "val/dice": [r.outputs["val_dice"] for r in history]})
    tracker.log_figure(figure, "plots/stage_comparison.png")
    val = select(data.rows, "val", labelled=True)[:count]
    images = [data.cache.load(r.image, r.mask).image for r in val]
    truths = [data.cache.load(r.image, r.mask).mask.astype(bool) for r in val]
    columns = [[overlay(im, truth=t) for im, t in zip(images, truths)]]
    for r in history:
        model, _ = load_model(r.outputs["best_dir"])
        probs = predict_images(model, images, data.image_size, color_constancy=model.config.color_constancy)
        columns.append([overlay(im, pred=p >= 0.5, truth=t) for im, p, t in zip(images, probs, truths)])
    grid = titled_grid(columns, ["truth", *names], [r.id for r in val])
    tracker.log_image(grid, "pictures/stages_" + "_".join(n.replace("*", "star") for n in ["truth", *names]) + ".png")
