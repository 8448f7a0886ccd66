"""Segmentation as a fit() task: its loaders, loss, weight EMA, validation at the original resolution, pictures.

    loaders = segmentation_loaders(train_ds, val_ds, cfg, seed, num_workers)
    fit(model, Segmentation(cfg, val_ds, accelerator), loaders, cfg, ctx,
        segmentation_callbacks(cfg, image_size, val_ds, tracker, stage))

It also owns the scoring of a segmenter on labelled rows: evaluate() (inside
Accelerate, every process scores its shard; `lesion evaluate` and each epoch's
validation) and score_rows() (one process; the registry's champion gate and the
held-out splits of finetune).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Sequence

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, WeightedRandomSampler

from lesion.config import TrainConfig
from lesion.data.cache import PreprocessCache
from lesion.data.datasets import SegmentationDataset, epoch_seed, seed_worker
from lesion.data.splits import Row
from lesion.data.transforms import denormalize
from lesion.inference import predict_probabilities, score_prediction
from lesion.metrics import per_image_scores, summarize
from lesion.plots import learning_curves, overlay_grid
from lesion.progress import bar
from lesion.train.callbacks import EarlyStopping, KeepBest, Logger, Logging, Pictures
from lesion.train.ema import WeightEMA
from lesion.train.engine import Callback
from lesion.train.losses import segmentation_loss


@dataclass
class Evaluation:
    metrics: dict[str, float]  # macro averages, `<prefix>/degenerate` the share of degenerate masks
    counts: np.ndarray  # (N, 4) per-image confusion counts [tp, fp, fn, tn]
    degenerate: np.ndarray  # (N,) bool: the mask covers most of the frame or touches every border
    index: np.ndarray  # (N,) row index of each image


@torch.inference_mode()
def evaluate(model: torch.nn.Module, loader: DataLoader, rows: list[Row], cache: PreprocessCache,
             accelerator: Accelerator, prefix: str = "val", tta: bool = False,
             progress: bool = True, postprocess: str | None = None, heartbeat: bool = False) -> Evaluation:
    """Metrics at each mask's original resolution, macro-averaged over images.

    Masks are scored as users get them: thresholded, then post-processed (postprocess=None:
    the model's own setting). Each process scores its own shard; gather_for_metrics joins
    the per-image counts without the padding duplicates of the last batch. The arrays are
    on every process. In a log, heartbeat lines only with heartbeat=True (evaluate's whole split; not a
    validation inside an epoch).
    """
    model.eval()
    postprocess = accelerator.unwrap_model(model).config.postprocess if postprocess is None else postprocess
    all_scores, all_index = [], []
    for batch in bar(loader, prefix, enabled=progress and accelerator.is_main_process, unit="batches",
                     heartbeat=heartbeat):
        # No autocast: the weight EMA (what a run validates and hands on by default) is scored in fp32, as
        # evaluate, predict and serving score the saved model, so a bf16 run logs the scores they give.
        probs = predict_probabilities(model, batch["image"], tta)
        scores = [score_prediction(prob[0], cache.original_mask(rows[index].image, rows[index].mask), postprocess)
                  for prob, index in zip(probs, batch["index"].tolist())]
        scores_t = torch.as_tensor(np.stack(scores), device=accelerator.device)
        gathered, gathered_index = accelerator.gather_for_metrics((scores_t, batch["index"].to(accelerator.device)))
        all_scores.append(gathered.cpu().numpy())
        all_index.append(gathered_index.cpu().numpy())
    scores_np, index_np = np.concatenate(all_scores), np.concatenate(all_index)
    counts, degenerate = scores_np[:, :4], scores_np[:, 4].astype(bool)
    metrics = {f"{prefix}/{k}": v for k, v in summarize(counts).items()}
    metrics[f"{prefix}/degenerate"] = float(degenerate.mean())
    return Evaluation(metrics, counts, degenerate, index_np)


@torch.inference_mode()
def score_rows(model: torch.nn.Module, rows: list[Row], cache: PreprocessCache, batch_size: int = 8,
               device: torch.device | str = "cpu") -> dict[str, float]:
    """ISIC metrics of model on labelled rows, in this process alone (the registry gate re-scores with it)."""
    model.eval()
    scores = []
    dataset = SegmentationDataset(rows, cache, color_constancy=model.config.color_constancy)
    for batch in DataLoader(dataset, batch_size, shuffle=False):
        probs = predict_probabilities(model, batch["image"].to(device)).cpu()
        scores += [score_prediction(prob[0], cache.original_mask(rows[i].image, rows[i].mask), model.config.postprocess)
                   for prob, i in zip(probs, batch["index"].tolist())]
    scores_np = np.stack(scores)
    per_image = per_image_scores(scores_np[:, :4])
    # Failure counts, as a user of another clinic's data would tally them.
    return {**summarize(scores_np[:, :4]), "degenerate": float(scores_np[:, 4].mean()), "images": len(scores_np),
            "jaccard_below_half": int((per_image["jaccard"] < 0.5).sum()),
            "specificity_below_half": int((per_image["specificity"] < 0.5).sum())}


class EpochWeightedSampler(WeightedRandomSampler):
    """Weighted draws with replacement that depend on (seed, epoch) only: a resumed epoch draws the same items."""

    def __init__(self, weights: torch.Tensor, draws: int, seed: int):
        super().__init__(weights, draws, generator=torch.Generator().manual_seed(seed))
        self.seed = seed

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(epoch_seed(self.seed, epoch))


def segmentation_loaders(train_ds: SegmentationDataset, val_ds: SegmentationDataset, cfg: TrainConfig, seed: int,
                         num_workers: int = 0, sampler_weights: torch.Tensor | None = None,
                         epoch_draws: int = 0) -> dict[str, DataLoader]:
    """Shuffled training batches (or weighted draws: self-training's labelled:pseudo ratio) and validation batches.

    With sampler_weights, one "epoch" is len(train_ds) draws unless epoch_draws says.
    """
    if sampler_weights is not None:
        draws = epoch_draws or len(train_ds)
        train = DataLoader(train_ds, cfg.batch_size, sampler=EpochWeightedSampler(sampler_weights, draws, seed),
                           drop_last=draws > cfg.batch_size, num_workers=num_workers, worker_init_fn=seed_worker)
    else:
        train = DataLoader(train_ds, cfg.batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed),
                           drop_last=len(train_ds) > cfg.batch_size, num_workers=num_workers,
                           worker_init_fn=seed_worker)
    return {"train": train, "val": DataLoader(val_ds, cfg.batch_size, shuffle=False, num_workers=num_workers)}


class Segmentation:
    """The segmentation task: cfg.loss on (image, target, valid) batches, validated on val_ds every epoch.

    With cfg.ema > 0 the weight EMA is the model: validated, kept as best/last and pictured.
    """

    monitor = "val/jaccard"
    train_metrics = ("train/loss",)

    def __init__(self, cfg: TrainConfig, val_ds: SegmentationDataset, accelerator: Accelerator):
        self.loss, self.decay, self.val_ds, self.accelerator = cfg.loss, cfg.ema, val_ds, accelerator
        self.ema: WeightEMA | None = None
        self.val_loader: DataLoader | None = None

    def start(self, model: nn.Module, loaders: dict[str, DataLoader]) -> None:
        self.val_loader = loaders["val"]
        self.ema = WeightEMA(self.accelerator.unwrap_model(model), self.decay) if self.decay > 0 else None

    def train_step(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        loss = segmentation_loss(self.loss, model(batch["image"]), batch["target"], batch["valid"])
        return loss, loss.detach()[None]

    def after_step(self, model: nn.Module, synced: bool) -> None:
        if synced and self.ema is not None:
            self.ema.update(self.accelerator.unwrap_model(model))

    def validate(self, model: nn.Module, epoch: int) -> dict[str, float]:
        scored = self.ema.model if self.ema is not None else model
        return evaluate(scored, self.val_loader, self.val_ds.rows, self.val_ds.cache, self.accelerator).metrics

    def kept(self, model: nn.Module) -> nn.Module:
        return self.ema.model if self.ema is not None else self.accelerator.unwrap_model(model)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.ema.state_dict() if self.ema is not None else {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self.ema is not None:
            self.ema.load_state_dict(state)

    def summary(self, record: dict[str, float]) -> str:
        return (f"loss {record['train/loss']:.4f} val/jaccard {record['val/jaccard']:.4f} "
                f"val/dice {record['val/dice']:.4f}")


def overlay_picture(model: nn.Module, device: torch.device, val_ds: SegmentationDataset,
                    indices: list[int]) -> np.ndarray:
    """The overlay grid (truth and prediction) of val_ds's images at indices: fixed images, comparable epochs."""
    items = [val_ds[i] for i in indices]
    images = torch.stack([it["image"] for it in items]).to(device)
    model.eval()
    probs = predict_probabilities(model, images).cpu().numpy()[:, 0]
    return overlay_grid([denormalize(it["image"].numpy()) for it in items],
                        [it["target"][0].numpy() > 0.5 for it in items],
                        [p >= 0.5 for p in probs],
                        titles=[val_ds.rows[i].id for i in indices])


def segmentation_callbacks(cfg: TrainConfig, image_size: int, val_ds: SegmentationDataset, logger: Logger,
                           stage: str = "", extra: Sequence[Callback] = (), picture_count: int = 4) -> list[Callback]:
    """best/ and last/ weights, each epoch's metrics and the learning curves, pictures, extra (pruning), patience."""
    prefix = f"{stage}_" if stage else ""
    pictured = list(range(min(picture_count, len(val_ds))))
    pictures = [Pictures(logger, partial(overlay_picture, val_ds=val_ds, indices=pictured), cfg.picture_every,
                         prefix)] if pictured else []
    curves = Logging(logger, partial(learning_curves, title=stage), f"plots/{prefix}learning_curves.png")
    return [KeepBest(image_size), curves, *pictures, *extra, EarlyStopping(cfg.patience)]
