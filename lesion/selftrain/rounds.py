"""Noisy Student's steps, shared by `selftrain` (lesion/selftrain/loop.py) and `tune` (tuning/study.py).

    train_teacher   the teacher on the labelled images: plain augmentation, no model noise
    pseudo_round    the teacher's soft pseudo-labels for the unlabelled pool (kept as probabilities)
    train_student   a noised student on labelled + kept pseudo-labelled images

The configs of both roles come from one SelftrainConfig (stage_configs), so
selftrain and a tune trial train the same teacher and the same student.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import torch
from accelerate import Accelerator

from lesion.config import (FinetuneConfig, NoiseConfig, NoisyStudentConfig, PseudoConfig, SelftrainConfig,
                           SweepConfig)
from lesion.data.prepare import PreparedData
from lesion.data.splits import Row, select
from lesion.errors import ConfigError
from lesion.finetune import StageResult, train_segmenter
from lesion.models.io import load_model
from lesion.models.registry import timm_encoder_name
from lesion.selftrain.pseudo import Selection, pseudo_label
from lesion.tracking import Tracker
from lesion.train.engine import Callback


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


def check_student(cfg: NoisyStudentConfig | SweepConfig) -> None:
    """Before any training (selftrain, tune, sweep): a student that starts from its teacher needs the teacher's
    encoder (resnet18 is tu-resnet18)."""
    student = cfg.pseudo.student_encoder
    if cfg.pseudo.student_init == "teacher" and student is not None and (
            timm_encoder_name(student) != timm_encoder_name(cfg.model.encoder)):
        raise ConfigError(f"student_init=teacher needs the teacher's encoder ({cfg.model.encoder}) in the student, not "
                          f"student_encoder={cfg.pseudo.student_encoder}: a student starts from its teacher by "
                          "default; for a larger student, start it afresh (--student_init encoder_init; "
                          "-P student_init=encoder_init under mlflow run)")


def sampler_weights(n_labelled: int, n_pseudo: int, pseudo_ratio: float) -> torch.Tensor:
    """Per-item weights so that batches hold pseudo_ratio pseudo-labelled images per labelled one."""
    labelled_share = 1.0 / (1.0 + pseudo_ratio)
    w_l = labelled_share / max(1, n_labelled)
    w_p = (1 - labelled_share) / max(1, n_pseudo)
    return torch.tensor([w_l] * n_labelled + [w_p] * n_pseudo, dtype=torch.double)


def train_teacher(cfg: SelftrainConfig, accelerator: Accelerator, tracker: Tracker, folder: Path, data: PreparedData,
                  extra_tags: dict[str, Any] | None = None) -> StageResult:
    """The teacher: the labelled training images, plain augmentation."""
    teacher_cfg, _ = stage_configs(cfg)
    return train_segmenter(teacher_cfg, accelerator, tracker, folder, "teacher", data, extra_tags=extra_tags)


def pseudo_round(cfg: SelftrainConfig, teacher_dir: str, pool: list[Row], data: PreparedData,
                 accelerator: Accelerator, folder: Path) -> None:
    """The teacher's probabilities for every pool image, with their stats, into folder (filters come later)."""
    model, _ = load_model(teacher_dir)
    model.to(accelerator.device)
    pseudo_label(model, pool, data.cache, accelerator, folder, cfg.train.batch_size, cfg.pseudo.tta)


def kept_rows(selection: Selection, pool: list[Row]) -> list[Row]:
    by_id = {r.id: r for r in pool}
    return [by_id[s.id] for s in selection.kept]


def train_student(cfg: SelftrainConfig, student_cfg: FinetuneConfig, accelerator: Accelerator, tracker: Tracker,
                  folder: Path, data: PreparedData, selection: Selection, pool: list[Row],
                  extra_tags: dict[str, Any] | None = None, callbacks: Sequence[Callback] = ()) -> StageResult:
    """A student on the labelled images plus the kept pseudo-labels, drawn pseudo_ratio to one (callbacks: pruning)."""
    labelled = select(data.rows, "train", labelled=True)
    pseudo_rows = kept_rows(selection, pool)
    return train_segmenter(
        student_cfg, accelerator, tracker, folder, "student", data, train_rows=labelled + pseudo_rows,
        pseudo={s.id: s.file for s in selection.kept}, pseudo_threshold=cfg.pseudo.threshold,
        sampler_weights=sampler_weights(len(labelled), len(pseudo_rows), cfg.pseudo.pseudo_ratio),
        epoch_draws=cfg.pseudo.student_epoch_images, extra_tags=extra_tags, callbacks=callbacks)
