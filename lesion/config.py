"""Typed configuration: the single source of every default.

Each entry point's config is a dataclass made of groups (data, model, train,
noise, ...). Every leaf field has a globally unique name, so the same flat
`name=value` parameters work on the CLI (`--epochs 3`), in the MLproject
(`-P epochs=3`), in Optuna trials and in MLflow params. The MLproject file is
generated from these classes (`python -m lesion.mlproject`), and a test keeps
the two in sync.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Collection

from lesion.data.color import METHODS as COLOR_CONSTANCY
from lesion.errors import ConfigError
from lesion.postprocess import MODES as POSTPROCESS


def param(default: Any, help: str, choices: tuple[str, ...] | None = None,
          valid: tuple[Any, str] | None = None) -> Any:
    """A config field with its help text (shown by --help and in the MLproject) and the values it accepts."""
    return field(default=default, metadata={"help": help, "choices": choices, "valid": valid})


# Value ranges: (test, what the message says).
POSITIVE = (lambda v: v > 0, "> 0")
NON_NEGATIVE = (lambda v: v >= 0, ">= 0")
AT_LEAST_ONE = (lambda v: v >= 1, ">= 1")
UNIT = (lambda v: 0 <= v <= 1, "in [0, 1]")
RATE = (lambda v: 0 <= v < 1, "in [0, 1)")
FRACTION = (lambda v: 0 < v <= 1, "in (0, 1]")
# Epoch e of a run is seeded with seed * 1000 + e, and numpy's legacy seeding takes 32 bits.
MAX_SEED = 2**32 // 1000 - 1
SEED = (lambda v: 0 <= v <= MAX_SEED, f"an integer in [0, {MAX_SEED}]")
SAMPLER_SEED = (lambda v: 0 <= v < 2**32, "an integer in [0, 2**32 - 1]")
HUB_PREFIXES = ("hf-hub:", "hf_hub:")

# Defined here once; everything else imports them.
INFERENCE_POSTPROCESS = ("model", *POSTPROCESS)  # model: the mode the model was trained with
MAX_PIXELS = 150_000_000  # refuse images above this many pixels (decompression-bomb guard)
SEGMENTER = "lesion-segmenter"  # the registered model of every fine-tuned segmenter
ENCODER = "lesion-encoder"  # the registered model of every SSL-pretrained encoder
CHAMPION_URI = f"models:/{SEGMENTER}@champion"  # the default model of evaluate, predict and export


def hub_model(encoder: str) -> bool:
    """Whether encoder names a Hugging Face Hub model, which timm downloads even to build it randomly initialised."""
    return encoder.removeprefix("tu-").lower().startswith(HUB_PREFIXES)


# lesion downloads nothing unless encoder_init=imagenet asks for it.
LOCAL_ENCODER = (lambda v: not hub_model(v),
                 "a timm model name such as resnet18 or resnet34.a1_in1k, not a Hugging Face Hub id (timm would "
                 "download it even with encoder_init=random; lesion never downloads a model definition)")


MAX_NAME = 200  # bytes: a file name holds 255, and the run's lock file adds ".lock"


def name_problem(name: str) -> str | None:
    """Why name cannot name a folder of its own, output_dir/<stage>/<name> (None when it can)."""
    if name in (".", ".."):
        return f"{name!r} is not a name"
    if "/" in name or "\\" in name:
        return "it holds a path separator"
    if any(ord(c) < 32 for c in name):
        return "it holds a control character"
    if len(name.encode()) > MAX_NAME:
        return f"it is longer than {MAX_NAME} bytes"
    return None


# A run or study name names a folder that a new run may clean: a path would reach (and clean) another folder.
FOLDER_NAME = (lambda v: name_problem(v) is None,
               "a name, not a path (it names the folder output_dir/<stage>/<name>: no / or \\, not . or .., "
               "no control characters, at most 200 bytes)")


class Checked:
    """Every config checks its fields' ranges when it is made: from the CLI, the MLproject, Optuna or code.

    None (an Optional field's "the teacher's", say) is in every range."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check_range(f, getattr(self, f.name))


def check_range(f: dataclasses.Field, value: Any) -> None:
    """That value is in the range or among the choices of field f, with a one-line error naming it (a config made
    in code or read from a model.json is checked as the command line's are)."""
    valid = f.metadata.get("valid")
    if valid and value is not None and not valid[0](value):
        raise ConfigError(f"parameter {f.name}={value!r} must be {valid[1]}; fix the value and run again")
    if value is not None:
        check_choice(f.name, value, f.metadata.get("choices"))


def check_choice(name: str, value: Any, choices: tuple[str, ...] | None) -> None:
    if choices and value not in choices:
        raise ConfigError(f"parameter {name}={value!r} must be one of {', '.join(choices)}")


def color_constancy_param() -> Any:
    """One definition for every stage that feeds images to an encoder (fine-tuning and pretraining)."""
    return param("shades_of_gray", "Colour constancy of every input image (Shades of Gray, p=6), the same in training, "
                 "pseudo-labelling, evaluate, predict, serving and ONNX; saved with the model.", COLOR_CONSTANCY)


# --------------------------------------------------------------------------- groups


@dataclass
class SourceConfig(Checked):
    """Where the labelled images come from, how they are read and how they are split: training and evaluate alike
    (evaluate scores the same split as training only with the same values)."""

    data: str = param(
        "synthetic",
        "Data source: 'synthetic[:n=..,size=..,seed=..]', a folder whose layout is detected "
        "(ISIC 2016/2017/2018, PH2, images/+masks/), or FORMAT:PATH with FORMAT one of "
        "isic, ph2, folder.",
    )
    val_fraction: float = param(0.2, "Validation share of a seeded split, used when the source has no official one "
                                "(evaluate: the value training used, to score the same images).",
                                valid=RATE)
    test_fraction: float = param(0.0, "Test share of a seeded split, used when the source has no official one.",
                                 valid=RATE)
    cache_dir: str = param("", "Preprocessing cache folder (default: $LESION_CACHE_DIR or ~/.cache/lesion).")
    max_pixels: int = param(MAX_PIXELS, "Refuse images above this many pixels (decompression-bomb guard).",
                            valid=POSITIVE)
    skip_bad: bool = param(False, "Skip unusable files (counted and logged) instead of stopping with an error.")


@dataclass
class DataConfig(SourceConfig):
    """The source, plus what training adds: unlabelled and external images, the labelled share, the resolution."""

    unlabeled: str = param("", "Extra unlabelled image folders, comma-separated (for SSL and pseudo-labels).")
    external: str = param("", "Labelled data from another source or clinic (same syntax as data; every image with a "
                          "mask counts): the weights each stage hands on (keep) are scored on it at the end and "
                          "logged as model/external_*. Reported, never selected on.")
    label_fraction: float = param(1.0, "Fraction of the training split that keeps its masks (seeded).", valid=FRACTION)
    labels: int = param(0, "Keep masks for exactly this many training images (overrides label_fraction when > 0).",
                        valid=NON_NEGATIVE)
    image_size: int = param(0, "Working resolution (square, multiple of 32); 0: 256 for real data, the synthetic set's own size.",
                            valid=NON_NEGATIVE)
    num_workers: int = param(-1, "DataLoader workers (-1: 0 on CPU, up to 8 on GPU).")


def data_config(source: SourceConfig, **values: Any) -> DataConfig:
    """A DataConfig that reads and splits the images as source does; its other fields at their defaults or as given."""
    return DataConfig(**{f.name: getattr(source, f.name) for f in dataclasses.fields(SourceConfig)}, **values)


@dataclass
class ModelConfig(Checked):
    arch: str = param("unet", "Architecture.", ("unet", "pspnet", "deeplabv3", "deeplabv3plus"))
    encoder: str = param("resnet18", "timm encoder name (resnet18 on CPU; resnet34/resnet50 on GPU).",
                         valid=LOCAL_ENCODER)
    encoder_init: str = param(
        "random",
        f"Encoder start: random, imagenet (downloads), an SSL encoder (models:/{ENCODER}/latest, "
        f"runs:/..., or a folder), or a fine-tuned {SEGMENTER} to continue from.",
    )
    dropout: float = param(0.0, "Channel dropout before the segmentation head (student noise).", valid=RATE)
    drop_path: float = param(0.0, "Stochastic depth rate in the encoder (student noise).", valid=RATE)
    color_constancy: str = color_constancy_param()
    postprocess: str = param("central_fill", "Mask post-processing after the threshold, at the original size: "
                             "central_fill keeps one connected component, the largest once its pixels are weighted by "
                             "closeness to the image centre (dermoscopy frames the lesion there), and fills its holes; "
                             "largest_fill keeps the plain largest component (for lesions not centred); saved with the "
                             "model and used by validation, evaluate, predict and serving.", POSTPROCESS)


@dataclass
class ScheduleConfig(Checked):
    """How a network is trained: epochs, optimiser and schedule, loss, EMA. Pretraining takes only this; the stages
    that train a segmenter take TrainConfig, which adds the choice of the weights to hand on."""

    epochs: int = param(8, "Training epochs.", valid=AT_LEAST_ONE)
    batch_size: int = param(8, "Batch size per process.", valid=AT_LEAST_ONE)
    lr: float = param(3e-3, "Peak learning rate (3e-3: benchmarks/README.md, recipe parity).", valid=POSITIVE)
    weight_decay: float = param(1e-4, "Weight decay.", valid=NON_NEGATIVE)
    encoder_lr_scale: float = param(1.0, "The encoder's learning rate as a fraction of lr (below 1 keeps pretrained features).",
                                    valid=NON_NEGATIVE)
    optimizer: str = param("adamw", "Optimizer.", ("adamw", "sgd"))
    schedule: str = param("cosine", "Learning-rate schedule after warm-up.", ("cosine", "poly", "constant"))
    warmup_fraction: float = param(0.3, "Linear warm-up, as a fraction of the training steps (0.3 with cosine: the "
                                   "one-cycle shape; benchmarks/README.md).", valid=RATE)
    grad_accum: int = param(1, "Gradient accumulation steps.", valid=AT_LEAST_ONE)
    mixed_precision: str = param("auto", "auto (bf16 on a GPU that supports it, else fp32), no, bf16 or fp16 (CUDA "
                                 "only). bf16 also runs on a CPU, faster where it has AMX (benchmarks/README.md); "
                                 "scores are fp32 (per-epoch validation too, unless ema=0).",
                                 ("auto", "no", "bf16", "fp16"))
    loss: str = param("bce+dice", "Segmentation loss (dice: per image; batch_dice: over the batch, as smp's DiceLoss).",
                      ("bce+dice", "bce+batch_dice", "bce", "dice"))
    ema: float = param(0.99, "Decay of a weight EMA that is validated and saved instead of the raw weights (0: off).",
                       valid=RATE)
    picture_every: int = param(2, "Log an overlay grid of fixed validation images every N epochs (0: only at the end).",
                               valid=NON_NEGATIVE)
    max_steps: int = param(0, "Stop after this many optimizer steps (0: no limit; for smoke tests and benchmarks).",
                           valid=NON_NEGATIVE)


@dataclass
class TrainConfig(ScheduleConfig):
    patience: int = param(0, "Early stopping after this many epochs without a better val/jaccard (0: off; needs "
                          "keep=best).", valid=NON_NEGATIVE)
    # last: a small validation split picks early, under-segmenting epochs that other clinics punish
    # (benchmarks/README.md, "Which weights to hand on").
    keep: str = param("last", "The weights a run hands on (registered, scored on the test and external sets, "
                      "pseudo-labelling, the next student's start): last, the final (EMA) weights of the schedule, "
                      "as nnU-Net keeps its final checkpoint; or best, the epoch with the best val/jaccard (needed "
                      "with patience).", ("last", "best"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.patience and self.keep == "last":
            raise ConfigError(f"patience={self.patience} needs keep=best (--keep best; -P keep=best under mlflow "
                              f"run): early stopping ends {self.patience} epochs after the best one, and keep=last "
                              "would hand on those worse weights; or set patience=0")


@dataclass
class NoiseConfig(Checked):
    """Augmentation policy. noise=0 is the plain policy (flips and mild scale);
    noise>0 is the strong student policy, each knob being that transform's
    probability at noise=1 (magnitudes grow with noise as well)."""

    noise: float = param(0.0, "Strength of the student noise policy (0: plain augmentation, 1: strong).",
                         valid=NON_NEGATIVE)
    color_jitter: float = param(0.8, "Colour jitter (brightness, contrast, saturation, hue).", valid=NON_NEGATIVE)
    blur_noise: float = param(0.3, "Gaussian blur or Gaussian noise.", valid=NON_NEGATIVE)
    distortion: float = param(0.3, "Elastic / grid / optical distortion.", valid=NON_NEGATIVE)
    coarse_dropout: float = param(0.5, "Coarse dropout (cut-out) of image patches.", valid=NON_NEGATIVE)
    flip_rot90: float = param(1.0, "Flips and 90-degree rotations.", valid=NON_NEGATIVE)
    shift_scale_rotate: float = param(0.7, "Affine shift, scale and rotation.", valid=NON_NEGATIVE)
    photometric: float = param(0.5, "Brightness, contrast, gamma, hue and saturation jitter, in every policy "
                               "(the teacher's too): robustness to other cameras.", valid=UNIT)
    zoom_out: float = param(0.5, "Probability of shrinking the image (lesions to 50 to 90 percent of their size), in every "
                            "policy: small lesions, as other clinics frame them.", valid=UNIT)
    zoom_in: float = param(0.0, "Probability of enlarging the image (lesions to 110 to 150 percent of their size, the "
                           "edges cropped), in every policy: lesions that fill the frame, as other clinics frame "
                           "them. zoom_out + zoom_in <= 1 (at most one zoom per image).", valid=UNIT)
    artifacts: float = param(0.3, "Dermoscopy artefacts (a dark vignette circle, hair-like lines, blur), in every "
                             "policy: robustness to other clinics.", valid=UNIT)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.zoom_out + self.zoom_in > 1:
            raise ConfigError(f"zoom_out={self.zoom_out} + zoom_in={self.zoom_in} is over 1: an image gets at most one "
                              "zoom, so their probabilities must sum to 1 or less; lower one of them")


@dataclass
class RunConfig(Checked):
    run_name: str = param("", "MLflow run name; re-running the same name resumes an unfinished run.",
                          valid=FOLDER_NAME)
    experiment: str = param("", "MLflow experiment (default: one per entry point).")
    output_dir: str = param("outputs", "Local folder for checkpoints, manifests and predictions.")
    seed: int = param(0, "Seed for splits, initialisation, shuffling and augmentation.", valid=SEED)


@dataclass
class TrainingRunConfig(RunConfig):
    """A run that trains, and registers what it trained: finetune, pretrain, selftrain and sweep."""

    register: bool = param(True, "Register the trained model (the weights `keep` selects) in the MLflow model registry.")


# --------------------------------------------------------------------------- entry points


@dataclass
class InferenceConfig(Checked):
    """How evaluate and predict apply a model to images."""

    image_size: int = param(0, "Inference resolution (0: the model's training resolution).", valid=NON_NEGATIVE)
    batch_size: int = param(8, "Inference batch size.", valid=AT_LEAST_ONE)
    tta: bool = param(False, "Average predictions over horizontal/vertical flips.")
    postprocess: str = param("model", "Mask post-processing (model: the one the model was trained with).",
                             INFERENCE_POSTPROCESS)


@dataclass
class FinetuneConfig(Checked):
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    run: TrainingRunConfig = field(default_factory=TrainingRunConfig)


@dataclass
class EvaluateConfig(Checked):
    model: str = param(CHAMPION_URI, "Model URI (models:/, runs:/) or a local model folder.")
    data: SourceConfig = field(default_factory=SourceConfig)
    split: str = param("val", "Split to score: train, val, test or all.", ("train", "val", "test", "all"))
    infer: InferenceConfig = field(default_factory=InferenceConfig)
    out: str = param("", "Folder for ISIC-format masks <id>_segmentation.png (default: output_dir/evaluate/<run>).")
    run: RunConfig = field(default_factory=RunConfig)


@dataclass
class PredictConfig(Checked):
    model: str = param(CHAMPION_URI, "Model URI (models:/, runs:/), a local model folder, or an exported .onnx file.")
    input: str = param("", "An image file or a folder of images.")
    out: str = param("predictions", "Output folder for <id>_segmentation.png masks and <id>_overlay.png pictures.")
    infer: InferenceConfig = field(default_factory=InferenceConfig)
    threshold: float = param(0.5, "Probability threshold for the binary mask.", valid=UNIT)
    probabilities: bool = param(False, "Also write <id>_probability.png: the raw lesion probability (0..255) at the "
                                "original size, before threshold and post-processing.")
    max_pixels: int = param(MAX_PIXELS, "Refuse images above this many pixels.", valid=POSITIVE)
    skip_bad: bool = param(False, "Skip unreadable images (counted) instead of stopping.")


@dataclass
class SSLConfig(Checked):
    """Jigsaw-invariant auto-encoder (JIANet idea) on the fine-tuning encoder."""

    encoder: str = param("resnet18", "timm encoder to pretrain (fine-tune later with the same encoder).",
                         valid=LOCAL_ENCODER)
    color_constancy: str = color_constancy_param()
    grid: int = param(3, "Puzzle grid size (grid x grid tiles); image_size must be divisible by it.",
                      valid=AT_LEAST_ONE)
    tile_jitter: float = param(0.1, "Random crop jitter of each tile, as a fraction of the tile size.", valid=RATE)
    tile_color_jitter: float = param(0.4, "Colour jitter strength applied per tile.", valid=NON_NEGATIVE)
    reconstruction_weight: float = param(1.0, "Weight of reconstructing the image from its shuffled puzzle.",
                                         valid=NON_NEGATIVE)
    invariance_weight: float = param(1.0, "Weight of the InfoNCE term between image and puzzle embeddings.",
                                     valid=NON_NEGATIVE)
    place_weight: float = param(1.0, "Weight of predicting, for every tile of the puzzle, the place it came from "
                                "(what makes the network solve the puzzle; see benchmarks/README.md).",
                                valid=NON_NEGATIVE)
    tile_invariance_weight: float = param(1.0, "Weight of the tile-level InfoNCE: each puzzle tile's embedding must match "
                                          "the same tile's in the intact image, against every other tile of the batch "
                                          "(local features, what segmentation needs; see benchmarks/README.md).",
                                          valid=NON_NEGATIVE)
    temperature: float = param(0.1, "InfoNCE temperature.", valid=POSITIVE)
    queue_size: int = param(0, "Memory queue of negative embeddings (0: in-batch negatives only).", valid=NON_NEGATIVE)
    projection_dim: int = param(128, "Embedding size of the projection head.", valid=AT_LEAST_ONE)


def _pretrain_train() -> ScheduleConfig:
    return ScheduleConfig(epochs=10, lr=1e-3, warmup_fraction=0.1, ema=0.0, picture_every=2)


@dataclass
class PretrainConfig(Checked):
    data: DataConfig = field(default_factory=DataConfig)
    ssl: SSLConfig = field(default_factory=SSLConfig)
    # No patience or keep: the pretext task has no val/jaccard to stop on or pick an epoch by, so pretraining runs
    # its whole schedule and hands on its final encoder (a preset's patience and keep are other entry points').
    train: ScheduleConfig = field(default_factory=_pretrain_train)
    run: TrainingRunConfig = field(default_factory=TrainingRunConfig)


@dataclass
class PseudoConfig(Checked):
    """Noisy Student: how pseudo-labels are made, filtered and mixed in."""

    iterations: int = param(2, "Self-training rounds: 2 gives teacher -> student -> student* (as in the paper).",
                            valid=AT_LEAST_ONE)
    threshold: float = param(0.8, "Pixel confidence max(p, 1-p) below which a pseudo-label pixel is ignored by the loss.",
                             valid=UNIT)
    min_confidence: float = param(0.85, "Drop pseudo-labelled images whose mean pixel confidence is below this.",
                                  valid=UNIT)
    min_area: float = param(0.005, "Drop pseudo-labels whose lesion covers less than this fraction of the image.",
                            valid=UNIT)
    pseudo_ratio: float = param(1.0, "Pseudo-labelled images drawn per labelled image when sampling batches.",
                                valid=NON_NEGATIVE)
    tta: bool = param(True, "Average teacher predictions over flips when pseudo-labelling.")
    student_dropout: float = param(0.2, "Student channel dropout (noise).", valid=RATE)
    student_drop_path: float = param(0.1, "Student stochastic depth (noise).", valid=RATE)
    # None: the teacher's value (spelled none, or empty: the MLproject's default).
    student_encoder: str | None = param(None, "Student encoder, e.g. a larger one for more capacity (default: none, "
                                        "the teacher's encoder).", valid=LOCAL_ENCODER)
    student_epochs: int | None = param(None, "Epochs per student; students see labelled + pseudo images (default: none, "
                                       "the teacher's epochs).", valid=(AT_LEAST_ONE[0], ">= 1, or none for the "
                                                                        "teacher's epochs"))
    student_lr: float | None = param(None, "Students' peak learning rate (default: none, the teacher's lr).",
                                     valid=(POSITIVE[0], "> 0, or none for the teacher's lr"))
    student_epoch_images: int = param(0, "Images a student draws per epoch (0: each labelled and kept pseudo-labelled "
                                      "image once). Set it with a large unlabelled pool to keep the students' budget.",
                                      valid=NON_NEGATIVE)
    # teacher: ahead on every seed measured, U-Net and DeepLabV3+ (benchmarks/README.md, "Where a student starts").
    student_init: str = param("teacher", "Student start: teacher (continue from its teacher's weights) or "
                              "encoder_init (a fresh student, as in the Noisy Student paper; needed for a "
                              "student_encoder other than the teacher's).", ("teacher", "encoder_init"))
    params: str = param("", "JSON of tuned parameters (tune's best_params.json, a path or runs:/ URI) applied on top.")


def _student_noise() -> NoiseConfig:
    return NoiseConfig(noise=1.0)


@dataclass
class NoisyStudentConfig(Checked):
    """What a teacher and its students need: shared by selftrain and by tune, whose trials are students."""

    data: DataConfig = field(default_factory=lambda: DataConfig(label_fraction=0.25))
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    noise: NoiseConfig = field(default_factory=_student_noise)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)


@dataclass
class SelftrainConfig(NoisyStudentConfig):
    run: TrainingRunConfig = field(default_factory=TrainingRunConfig)


@dataclass
class StudyConfig(Checked):
    """Optuna: where the study lives and how each trial is budgeted."""

    study: str = param("lesion-noisy-student", "Study name; workers with the same storage and study join it.",
                       valid=FOLDER_NAME)
    storage: str = param("sqlite:///optuna.db", "Optuna storage: SQLite file, or a SQLAlchemy URL (postgresql://...) for many workers.")
    n_trials: int = param(8, "Trials this worker runs.", valid=AT_LEAST_ONE)
    timeout: float = param(0.0, "Stop this worker after this many seconds (0: no limit).", valid=NON_NEGATIVE)
    pruner: str = param("median", "Pruner for bad trials.", ("median", "hyperband", "none"))
    sampler_seed: int = param(0, "Seed of the TPE sampler; give each worker of a shared study its own seed, or they propose the same trials.",
                              valid=SAMPLER_SEED)
    trial_epochs: int = param(3, "Student epochs per trial (the short budget).", valid=AT_LEAST_ONE)
    space: str = param("", "JSON overrides of the search space (tuning/space.py), e.g. '{\"threshold\": [0.7, 0.9], \"student_lr\": 0.001}' (a number fixes it).")


@dataclass
class TuneConfig(NoisyStudentConfig):
    tune: StudyConfig = field(default_factory=StudyConfig)
    run: RunConfig = field(default_factory=RunConfig)


@dataclass
class ExportConfig(Checked):
    model: str = param(CHAMPION_URI, "Model URI (models:/, runs:/) or a local model folder.")
    out: str = param("", "ONNX file to write (default: outputs/export/<model>.onnx).")
    opset: int = param(17, "ONNX opset.", valid=AT_LEAST_ONE)
    check_images: int = param(4, "Sample images (at several sizes) on which ONNX Runtime must match torch.",
                              valid=AT_LEAST_ONE)
    tolerance: float = param(1e-4, "Largest allowed absolute difference of probabilities.", valid=POSITIVE)


@dataclass
class ReportConfig(Checked):
    experiment: str = param("", "Experiments to report on, comma-separated (default: every lesion experiment).")
    runs: str = param("", "Or: run ids, comma-separated (finetune or selftrain runs).")
    gallery: int = param(6, "Worst-segmented validation images of the champion to show (0: none).", valid=NON_NEGATIVE)
    out: str = param("outputs/report", "Folder for report.html, the figures and the CSV table.")


@dataclass
class SweepConfig(Checked):
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    label_fractions: str = param("0.1,0.25,1.0", "Label fractions to compare, comma-separated.")
    methods: str = param("supervised,ssl,selftrain", "Methods: supervised (random init), ssl (SSL init), selftrain.")
    ssl_epochs: int = param(5, "Pretraining epochs for the ssl method (one encoder for every fraction).",
                            valid=AT_LEAST_ONE)
    run: TrainingRunConfig = field(default_factory=lambda: TrainingRunConfig(experiment="lesion-sweep"))


# --------------------------------------------------------------------------- flat view


def _group_type(cls: type, f: dataclasses.Field) -> type | None:
    """The dataclass type of a group field, None for a leaf."""
    typ = typing.get_type_hints(cls)[f.name]
    return typ if dataclasses.is_dataclass(typ) else None


def _leaf_type(cls: type, name: str) -> type:
    return typing.get_type_hints(cls)[name]


NONE_TEXTS = ("", "none")  # how None is spelled in a flat value (any case): what MLflow and the CLI pass as text


def optional_base(typ: Any) -> tuple[Any, bool]:
    """(T, True) for an Optional field's type T | None, else (typ, False)."""
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        args = typing.get_args(typ)
        rest = [a for a in args if a is not type(None)]
        if len(args) == 2 and len(rest) == 1:
            return rest[0], True
    return typ, False


def type_name(typ: Any) -> str:
    """int, float, ... ("int or none" for an Optional field)."""
    base, optional = optional_base(typ)
    return f"{getattr(base, '__name__', str(base))}{' or none' if optional else ''}"


def _group_default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def flat_fields(cls: type, instance: Any = None) -> list[tuple[str, type, Any, str, tuple[str, ...] | None]]:
    """(name, type, default, help, choices) of every leaf, in declaration order."""
    instance = instance if instance is not None else cls()
    out = []
    for f in dataclasses.fields(cls):
        group = _group_type(cls, f)
        if group is not None:
            out.extend(flat_fields(group, getattr(instance, f.name)))
        else:
            out.append((f.name, _leaf_type(cls, f.name), getattr(instance, f.name), f.metadata.get("help", ""),
                        f.metadata.get("choices")))
    names = [o[0] for o in out]
    dupes = {n for n in names if names.count(n) > 1}
    assert not dupes, f"config field names must be unique across groups: {dupes}"
    return out


def leaf_fields(cls: type) -> dict[str, tuple[Any, dataclasses.Field]]:
    """{flat name: (its type, its dataclasses.Field)} for every leaf of cls; the field's metadata holds help,
    choices and valid."""
    out: dict[str, tuple[Any, dataclasses.Field]] = {}
    for f in dataclasses.fields(cls):
        group = _group_type(cls, f)
        out.update(leaf_fields(group) if group is not None else {f.name: (_leaf_type(cls, f.name), f)})
    return out


def to_flat(cfg: Any) -> dict[str, Any]:
    """Nested config -> {leaf name: value}."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.update(to_flat(value))
        else:
            out[f.name] = value
    return out


def parse_value(name: str, typ: Any, raw: Any) -> Any:
    """raw (a CLI or MLflow string, or a value from Optuna, JSON or code) as a value of the field type typ.

    An Optional field (T | None) reads None, "", "none" and "None" as None ("the teacher's", say).
    """
    base, optional = optional_base(typ)
    if optional and (raw is None or (isinstance(raw, str) and raw.strip().lower() in NONE_TEXTS)):
        return None
    try:
        if not isinstance(raw, str):
            if raw is None or (base is int and isinstance(raw, float) and not raw.is_integer()):
                raise ValueError(raw)  # never 0.5 -> 0, nor None -> "None"
            return int(raw) if base is int and isinstance(raw, float) else base(raw)
        if base is bool:
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if base is int and raw.strip().endswith(".0"):  # MLflow passes float-typed params as "3.0"
            raw = raw.strip()[:-2]
        return base(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"parameter {name}={raw!r} is not a valid {type_name(typ)}; fix the value and run again") from None


def same_value(logged: str, value: Any, typ: Any = None) -> bool:
    """Whether logged, an MLflow parameter's text, says value (of the field type typ; default: value's own type,
    and for None any Optional type).

    lesion logs str(value) ("None" for None); `mlflow run` logs each -P value or MLproject default as it put it on
    the command line: shell-quoted ('' for empty, 'o'"'"'brien' for o'brien) and untyped (true for True, 8 for 8,
    1e-3 for 0.001). So this compares what the text means, parsed as the field's type, not the text.
    """
    if logged == str(value):
        return True
    if typ is None:
        typ = str | None if value is None else type(value)
    base, _ = optional_base(typ)
    if base not in (str, bool, int, float):
        return False
    texts = [logged]
    try:
        words = shlex.split(logged)
    except ValueError:  # not shell-quoted (an unbalanced quote of lesion's own)
        words = None
    if words is not None and len(words) <= 1:
        texts.append(words[0] if words else "")
    for text in texts:
        try:
            if parse_value("parameter", typ, text) == value:
                return True
        except ConfigError:
            continue
    return False


def leaf_value(name: str, typ: Any, choices: tuple[str, ...] | None, raw: Any) -> Any:
    """raw parsed as the field's type and checked against its choices."""
    value = parse_value(name, typ, raw)
    check_choice(name, value, choices)
    return value


def from_flat(cls: type, values: dict[str, Any], strict: bool = True) -> Any:
    """Build a nested config from flat values (strings are parsed); unknown names are errors."""
    known = {n: (t, c) for n, t, _, _, c in flat_fields(cls)}
    unknown = set(values) - set(known)
    if strict and unknown:
        raise ConfigError(
            f"unknown parameter(s) {sorted(unknown)} for {cls.__name__}; see --help for the parameter names"
        )

    def build(c: type, base: Any) -> Any:
        changes = {}
        for f in dataclasses.fields(c):
            group = _group_type(c, f)
            if group is not None:
                changes[f.name] = build(group, getattr(base, f.name))
            elif f.name in values:
                changes[f.name] = leaf_value(f.name, *known[f.name], values[f.name])
        return dataclasses.replace(base, **changes)

    return build(cls, cls())


def replace_flat(cfg: Any, **values: Any) -> Any:
    """A copy of cfg with some leaves changed by flat name."""
    flat = to_flat(cfg)
    flat.update(values)
    return from_flat(type(cfg), flat)


PRESET = "config"  # --config FILE / -P config=FILE: a preset of flat values, never a config field itself
FROM_MLPROJECT = "from_mlproject"  # set by the MLproject's command, which passes every parameter


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """--config FILE, then --name options for every leaf of cls, with the dataclass default and help."""
    parser.add_argument(f"--{PRESET}", type=str, default=None, metavar="FILE",
                        help="A preset: a JSON object of flat parameters (configs/cpu.json, configs/gpu.json), applied "
                             "first; the parameters you give win. Names that only other entry points take are skipped "
                             "(default: none).")
    parser.add_argument(f"--{FROM_MLPROJECT}", action="store_true", help=argparse.SUPPRESS)
    for name, typ, default, help_text, choices in flat_fields(cls):
        assert name not in (PRESET, FROM_MLPROJECT), f"{name} is the name of a command-line option"
        # A help text that explains an empty default itself ("default: one per entry point") keeps its own words.
        shown = help_text if "(default:" in help_text else f"{help_text} (default: {default!r})"
        # Values stay strings here: parse_value reads them as MLflow passes them ("3.0" for an int) and its errors
        # are one line.
        parser.add_argument(f"--{name}", type=str, default=None, help=shown, choices=None if typ is bool else choices,
                            metavar=optional_base(typ)[0].__name__.upper() if not choices else None)


def from_args(cls: type, args: argparse.Namespace, elsewhere: Collection[str] = ()) -> Any:
    """The config of the parsed options: the preset's values (--config), then the options given.

    elsewhere: the parameter names of the other entry points, which a preset may hold and this one skips.
    The MLproject's command passes every parameter, its default too (MLflow cannot tell which -P were given): there
    a value equal to the default leaves the preset's value in place.
    """
    given = {n: getattr(args, n) for n, *_ in flat_fields(cls) if getattr(args, n, None) is not None}
    path = getattr(args, PRESET, None)
    if not path:
        return from_flat(cls, given)
    preset = load_preset(path, cls, elsewhere)
    if getattr(args, FROM_MLPROJECT, False):
        defaults, leaves = to_flat(cls()), leaf_fields(cls)
        given = {n: v for n, v in given.items() if not same_value(v, defaults[n], leaves[n][0])}
    cfg = from_flat(cls, {**preset, **given})
    if os.environ.get("RANK", "0") == "0":  # once for a group of ranks
        applied = ", ".join(f"{n}={v}" for n, v in preset.items() if n not in given) or "nothing"
        overridden = ", ".join(n for n in preset if n in given)
        print(f"[lesion] config={path}: {applied}" + (f" (given instead: {overridden})" if overridden else ""),
              flush=True)
    return cfg


def load_preset(path: str, cls: type, elsewhere: Collection[str] = ()) -> dict[str, Any]:
    """The flat values of a preset file that cls takes, checked; the names in elsewhere (other entry points') are
    skipped, so that one preset serves every entry point. Any other name is an error that names the file."""
    data = _json_object(path, lambda err: f"config={path}: cannot read the preset ({err}); pass a JSON file such as "
                                          "configs/cpu.json",
                        f"config={path} must hold a JSON object of parameter names to values, like configs/cpu.json")
    known = leaf_fields(cls)
    for name, value in data.items():
        if name not in known and name not in elsewhere:
            raise ConfigError(f"config={path}: {name!r} is no parameter of any entry point; fix or remove it "
                              "(lesion ENTRY --help lists the names)")
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise ConfigError(f"config={path}: {name}={json.dumps(value)} must be a number, a string, true/false "
                              "or null")
    values = {n: v for n, v in data.items() if n in known}
    # Each value on its own here; the rules between two (patience with keep, zoom_out + zoom_in) wait for the
    # options given on the command line, which may settle them.
    for name, value in values.items():
        typ, f = known[name]
        try:
            check_range(f, leaf_value(name, typ, f.metadata.get("choices"), value))
        except ConfigError as err:
            raise ConfigError(f"config={path}: {err}") from None
    return values


def load_params_file(path: str) -> dict[str, Any]:
    """Flat parameters from a JSON file (tune's best_params.json)."""
    data = _json_object(path, lambda err: f"{path}: cannot read tuned parameters ({err}); pass tune's best_params.json "
                                          "or its run URI",
                        f"{path} must hold a JSON object of parameter names to values")
    return data.get("params", data)


def _json_object(path: str, unreadable: Callable[[Exception], str], not_an_object: str) -> dict[str, Any]:
    """The JSON object in path; unreadable(the reason) and not_an_object are the one-line errors."""
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(unreadable(err)) from None
    if not isinstance(data, dict):
        raise ConfigError(not_an_object)
    return data
