"""One training loop through Hugging Face Accelerate, readable top to bottom.

fit() trains a segmenter on a dataset of (image, target, valid) items,
evaluates on validation images at their original resolution after every
epoch, keeps the best and last weights (safetensors), checkpoints the full
training state every epoch with accelerator.save_state, and resumes from it.

Determinism: everything random in an epoch (shuffling, augmentation,
dropout) is seeded from (seed, epoch), so a run resumed at an epoch boundary
gives the same final metrics as an uninterrupted one on CPU.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader, Dataset

from lesion.config import TrainConfig
from lesion.data.cache import PreprocessCache
from lesion.data.datasets import SegmentationDataset, epoch_seed, seed_worker
from lesion.data.splits import Row
from lesion.errors import TrainingError
from lesion.inference import predict_probabilities, score_prediction
from lesion.metrics import per_image_scores, summarize
from lesion.models.io import save_model
from lesion.progress import bar, say
from lesion.tracking import Tracker
from lesion.train.checkpoint import finish, finished, load_checkpoint, load_extra, save_checkpoint
from lesion.train.ema import WeightEMA
from lesion.train.losses import segmentation_loss

def resolve_mixed_precision(choice: str) -> str:
    """auto: bf16 where the GPU supports it, fp32 on CPU (the parameter wins over `accelerate launch` flags)."""
    if choice != "auto":
        return choice
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    # cpu=True without CUDA makes `accelerate launch --multi_gpu` on a CPU machine form one gloo group.
    return Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=resolve_mixed_precision(cfg.mixed_precision),
        gradient_accumulation_steps=cfg.grad_accum,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )


def resolve_workers(requested: int) -> int:
    if requested >= 0:
        return requested
    return min(8, os.cpu_count() or 1) if torch.cuda.is_available() else 0


@dataclass
class FitResult:
    best_score: float
    best_epoch: int
    history: list[dict[str, float]]
    best_dir: Path
    last_dir: Path
    stopped_early: bool = False
    extra: dict = field(default_factory=dict)


def finished_result(workdir: Path, progress: dict) -> FitResult:
    """The result of a finished fit from its final progress (`last` is `best` when it was the best epoch)."""
    last = workdir / "last"
    return FitResult(progress["best_score"], progress["best_epoch"], progress["history"], workdir / "best",
                     last if last.is_dir() else workdir / "best", progress.get("stopped_early", False))


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD; no weight decay on norms and biases; the encoder at lr * encoder_lr_scale."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            in_encoder = name.startswith(("net.encoder.", "encoder."))
            groups.setdefault((in_encoder, p.ndim <= 1), []).append(p)
    param_groups = [{"params": params, "weight_decay": 0.0 if no_decay else cfg.weight_decay,
                     "lr": cfg.lr * (cfg.encoder_lr_scale if in_encoder else 1.0)}
                    for (in_encoder, no_decay), params in sorted(groups.items())]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(param_groups, lr=cfg.lr)


def lr_lambda(cfg: TrainConfig, total_steps: int) -> Callable[[int], float]:
    warmup = int(round(cfg.warmup_fraction * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        if cfg.schedule == "poly":
            return (1 - progress) ** 0.9
        return 1.0

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, batches_per_epoch: int,
                    num_processes: int) -> tuple[torch.optim.lr_scheduler.LambdaLR, int]:
    """Warm-up then the schedule, and the optimizer steps each process takes in all (max_steps included).

    Accelerate steps a prepared scheduler num_processes times per optimizer step
    (each process sees 1/num_processes of the batches), so its length is counted
    in single-process steps: the schedule then ends with the training, on any
    number of processes.
    """
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / num_processes) // cfg.grad_accum)
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    factor = lr_lambda(cfg, total_steps * num_processes)  # warm-up is a fraction of these steps
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor), total_steps


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
        with accelerator.autocast():  # also for a model Accelerate did not prepare (the weight EMA)
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


def _picture(model: torch.nn.Module, val_ds: Dataset, picture_indices: list[int], device: torch.device) -> np.ndarray:
    from lesion.data.transforms import denormalize
    from lesion.plots import overlay_grid

    items = [val_ds[i] for i in picture_indices]
    images = torch.stack([it["image"] for it in items]).to(device)
    model.eval()
    probs = predict_probabilities(model, images).cpu().numpy()[:, 0]
    return overlay_grid([denormalize(it["image"].numpy()) for it in items],
                        [it["target"][0].numpy() > 0.5 for it in items],
                        [p >= 0.5 for p in probs],
                        titles=[val_ds.rows[i].id for i in picture_indices])


def fit(
    model: torch.nn.Module,
    train_ds: Dataset,
    val_ds: Dataset,
    cache: PreprocessCache,
    cfg: TrainConfig,
    accelerator: Accelerator,
    tracker: Tracker,
    workdir: str | Path,
    image_size: int,
    seed: int = 0,
    num_workers: int = 0,
    picture_count: int = 4,
    stage: str = "",
    sampler_weights: torch.Tensor | None = None,
    epoch_draws: int = 0,
    epoch_callback: Callable[[int, dict[str, float]], None] | None = None,
) -> FitResult:
    workdir = Path(workdir)
    main = accelerator.is_main_process
    if (done := finished(workdir)) is not None:  # trained before a later crash (logging, registering)
        if main:
            say(f"[lesion] {stage or 'training'} finished its epochs before; using {workdir / 'best'}")
        return finished_result(workdir, done)
    set_seed(seed, deterministic=not torch.cuda.is_available())

    optimizer = build_optimizer(model, cfg)
    generator = torch.Generator().manual_seed(seed)
    if sampler_weights is not None:
        # labelled:pseudo ratio for self-training; one "epoch" is len(train_ds) draws unless epoch_draws says.
        draws = epoch_draws or len(train_ds)
        sampler = torch.utils.data.WeightedRandomSampler(sampler_weights, draws, generator=generator)
        train_loader = DataLoader(train_ds, cfg.batch_size, sampler=sampler, drop_last=draws > cfg.batch_size,
                                  num_workers=num_workers, worker_init_fn=seed_worker)
    else:
        train_loader = DataLoader(train_ds, cfg.batch_size, shuffle=True, generator=generator,
                                  drop_last=len(train_ds) > cfg.batch_size, num_workers=num_workers,
                                  worker_init_fn=seed_worker)
    val_loader = DataLoader(val_ds, cfg.batch_size, shuffle=False, num_workers=num_workers)
    scheduler, _ = build_scheduler(optimizer, cfg, len(train_loader), accelerator.num_processes)
    # One accelerator serves every stage of a run (teacher, students, trials): forget the previous stage's
    # objects, or save_state/load_state would pair this model with the state of the first one prepared.
    accelerator.free_memory()
    model, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, val_loader, scheduler)

    history: list[dict[str, float]] = []
    best_score, best_epoch, bad_epochs, start_epoch, step = -1.0, -1, 0, 0, 0
    ema = WeightEMA(accelerator.unwrap_model(model), cfg.ema) if cfg.ema > 0 else None
    progress = load_checkpoint(accelerator, workdir)
    if progress is not None:
        if ema is not None:
            ema.load_state_dict(load_extra(workdir))
        history, best_score, best_epoch = progress["history"], progress["best_score"], progress["best_epoch"]
        bad_epochs, step, start_epoch = progress["bad_epochs"], progress["step"], progress["epoch"] + 1
        if main:
            say(f"[lesion] resuming {stage or 'training'} at epoch {start_epoch + 1} from {workdir}")
        for record in history:  # re-log anything a crash kept out of MLflow (steps already there are skipped)
            tracker.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=int(record["epoch"]))

    picture_indices = list(range(min(picture_count, len(val_ds))))
    stopped_early = False
    for epoch in range(start_epoch, cfg.epochs):
        if cfg.max_steps and step >= cfg.max_steps:
            break
        set_seed(epoch_seed(seed, epoch), deterministic=not torch.cuda.is_available())
        if hasattr(train_ds, "set_epoch"):
            train_ds.set_epoch(epoch)
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        if sampler_weights is not None:  # the weighted draw of an epoch depends on (seed, epoch) only: resumable
            generator.manual_seed(epoch_seed(seed, epoch))
        model.train()
        loss_sum, loss_count = torch.zeros((), device=accelerator.device), 0
        batches = bar(train_loader, f"{stage or 'train'} epoch {epoch + 1}/{cfg.epochs}", enabled=main,
                      unit="batches", heartbeat=False)
        for batch in batches:
            with accelerator.accumulate(model):
                logits = model(batch["image"])
                loss = segmentation_loss(cfg.loss, logits, batch["target"], batch["valid"])
                if not torch.isfinite(loss):
                    raise TrainingError(f"loss became {loss.item()} at epoch {epoch + 1}; lower lr (now {cfg.lr}) "
                                        "and run again with a new run_name")
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            loss_sum += loss.detach()
            loss_count += 1
            if accelerator.sync_gradients:
                step += 1
                if ema is not None:
                    ema.update(accelerator.unwrap_model(model))
            batches.set_postfix(loss=f"{loss.item():.3f}")
            if cfg.max_steps and step >= cfg.max_steps:
                break
        train_loss = accelerator.reduce(loss_sum / max(1, loss_count), reduction="mean").item()
        # With an EMA, the average is the model: validated, kept as best/last, pictured.
        scored = ema.model if ema is not None else model
        metrics = evaluate(scored, val_loader, val_ds.rows, cache, accelerator).metrics
        record = {"epoch": epoch, "train/loss": train_loss, "train/lr": scheduler.get_last_lr()[0], **metrics}
        history.append(record)
        improved = metrics["val/jaccard"] > best_score
        if improved:
            best_score, best_epoch, bad_epochs = metrics["val/jaccard"], epoch, 0
        else:
            bad_epochs += 1
        unwrapped = ema.model if ema is not None else accelerator.unwrap_model(model)
        if main:
            if improved:
                save_model(unwrapped, workdir / "best", image_size, epoch=epoch, val_jaccard=best_score)
            save_model(unwrapped, workdir / "last", image_size, epoch=epoch)
        # Checkpoint first, then log: a crash in between re-logs on resume, never twice.
        save_checkpoint(accelerator, workdir, {"epoch": epoch, "step": step, "history": history,
                                               "best_score": best_score, "best_epoch": best_epoch,
                                               "bad_epochs": bad_epochs},
                        extra=ema.state_dict() if ema is not None else None)
        tracker.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=epoch)
        patience_out = bool(cfg.patience and bad_epochs >= cfg.patience)
        final = epoch == cfg.epochs - 1 or patience_out or bool(cfg.max_steps and step >= cfg.max_steps)
        if main:
            say(f"[lesion] {stage or 'train'} epoch {epoch + 1}/{cfg.epochs} loss {train_loss:.4f} "
                f"val/jaccard {metrics['val/jaccard']:.4f} val/dice {metrics['val/dice']:.4f}"
                + (" *" if improved else ""))
            # The final picture also when training ends early.
            if picture_indices and (final or (cfg.picture_every and (epoch + 1) % cfg.picture_every == 0)):
                tracker.log_image(_picture(unwrapped, val_ds, picture_indices, accelerator.device),
                                  f"pictures/{stage + '_' if stage else ''}epoch_{epoch + 1:03d}.png")
        if epoch_callback is not None:
            epoch_callback(epoch, record)
        if patience_out:
            stopped_early = True
            if main:
                say(f"[lesion] early stop: no better val/jaccard for {cfg.patience} epochs")
            break

    if main and history:
        from lesion.plots import learning_curves

        tracker.log_figure(learning_curves(history, stage), f"plots/{stage + '_' if stage else ''}learning_curves.png")
        if history[-1]["epoch"] == best_epoch:
            shutil.rmtree(workdir / "last", ignore_errors=True)  # the same weights as best/
    # The resume state is no longer needed (finish waits for every process).
    final = {"history": history, "best_score": best_score, "best_epoch": best_epoch, "stopped_early": stopped_early}
    finish(accelerator, workdir, final)
    return finished_result(workdir, final)
