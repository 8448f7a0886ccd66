"""The one training loop, fit(), readable top to bottom, and what it is made of.

    fit(model, task, loaders, cfg, ctx, callbacks)

fit() owns the loop through Hugging Face Accelerate: the optimizer and the
schedule, per-epoch seeding, gradient accumulation, the NaN check, max_steps,
the checkpoint of the full training state after every epoch
(accelerator.save_state) and the resume from it, the best epoch and the
early-stopping count. What is trained is a Task (the loss of a batch, the
metrics of an epoch, the extra state a checkpoint keeps): segmentation in
lesion.train.segmentation, the jigsaw pretext in lesion.ssl.pretext. What is
done with each epoch (weights kept, pictures, logging, pruning, early stopping)
are Callbacks (lesion.train.callbacks), called at four points: on_resume,
on_epoch_end (before the checkpoint: what a resume relies on), on_checkpoint
(after it: a crash in between re-logs on resume, never twice) and on_fit_end
(before the resume state is dropped).

Determinism: everything random in an epoch (shuffling, augmentation,
dropout, puzzles) is seeded from (seed, epoch), so a run resumed at an epoch
boundary gives the same final metrics as an uninterrupted one on CPU.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch import nn
from torch.utils.data import DataLoader

from lesion.config import ScheduleConfig
from lesion.data.datasets import epoch_seed
from lesion.errors import ConfigError, TrainingError
from lesion.progress import EPOCH_HEARTBEAT_S, bar, say
from lesion.train.checkpoint import finish, finished, load_checkpoint, load_extra, save_checkpoint


def resolve_mixed_precision(choice: str) -> str:
    """auto: bf16 where the GPU supports it, fp32 on CPU (the parameter wins over `accelerate launch` flags)."""
    if choice == "fp16" and not torch.cuda.is_available():
        # Accelerate would train in fp32 on a CPU while the run's plan and params said fp16.
        raise ConfigError("mixed_precision=fp16 needs a CUDA GPU; on a CPU use mixed_precision=bf16 or no "
                          "(--mixed_precision, -P mixed_precision=)")
    if choice != "auto":
        return choice
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def make_accelerator(cfg: ScheduleConfig) -> Accelerator:
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
class FitState:
    """A fit's progress: what a checkpoint keeps (progress.json) and a finished fit leaves (trained.json)."""

    epoch: int = -1  # the last epoch done
    step: int = 0  # optimizer steps taken
    history: list[dict[str, float]] = field(default_factory=list)  # one record per epoch
    best_score: float = -1.0  # of the task's monitor (-1 and best_epoch -1 when it has none)
    best_epoch: int = -1
    bad_epochs: int = 0  # epochs since the best one
    stopped_early: bool = False


@dataclass
class Kept:
    """The weights a fit hands on, the epoch they are from (-1: none trained) and that epoch's record."""

    dir: Path
    epoch: int
    record: dict[str, float]


@dataclass
class FitResult:
    best_score: float
    best_epoch: int
    history: list[dict[str, float]]
    best_dir: Path
    last_dir: Path
    stopped_early: bool = False

    def kept(self, keep: str) -> Kept:
        """keep=best: the best epoch's weights (by the task's monitor); keep=last: the final ones."""
        if keep == "best" and self.best_epoch >= 0:
            return Kept(self.best_dir, self.best_epoch, next(h for h in self.history if h["epoch"] == self.best_epoch))
        if not self.history:
            return Kept(self.best_dir, -1, {})
        return Kept(self.last_dir, int(self.history[-1]["epoch"]), self.history[-1])


def finished_result(workdir: Path, state: FitState) -> FitResult:
    """The result of a finished fit from its final state (`last` is `best` when it was the best epoch)."""
    last = workdir / "last"
    return FitResult(state.best_score, state.best_epoch, state.history, workdir / "best",
                     last if last.is_dir() else workdir / "best", state.stopped_early)


@dataclass
class FitContext:
    """Where and as what a fit runs: its accelerator, its folder (checkpoints, weights), its seed, its name in logs."""

    accelerator: Accelerator
    workdir: Path
    seed: int = 0
    name: str = "train"

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def say(self, text: str) -> None:
        """A [lesion] line in the log, from the main process only."""
        if self.main:
            say(f"[lesion] {text}")


class Task(Protocol):
    """What fit() trains. Every process calls every method; the model is the one Accelerate prepared."""

    monitor: str | None  # the validation metric that picks the best epoch (higher is better); None: no best
    train_metrics: tuple[str, ...]  # names of the values train_step logs, averaged over each epoch

    def start(self, model: nn.Module, loaders: dict[str, DataLoader]) -> None:
        """The prepared model and loaders, before a checkpoint loads (a weight EMA starts from the model)."""

    def train_step(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, a 1-D tensor of the values to log, in train_metrics order) of one batch."""

    def after_step(self, model: nn.Module, synced: bool) -> None:
        """After each batch's (possibly accumulated) optimizer step; synced: the weights changed."""

    def validate(self, model: nn.Module, epoch: int) -> dict[str, float]:
        """The epoch's validation metrics ({} for none)."""

    def kept(self, model: nn.Module) -> nn.Module:
        """The weights that are saved and pictured (a weight EMA, or the unwrapped model)."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Extra tensors for the checkpoint (a weight EMA, a queue of negatives)."""

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...

    def summary(self, record: dict[str, float]) -> str:
        """The epoch's record in a few words, for its log line."""


@dataclass
class Fit:
    """One fit in progress, as its callbacks see it."""

    ctx: FitContext
    cfg: ScheduleConfig
    task: Task
    model: nn.Module  # as prepared by Accelerate
    state: FitState

    @property
    def record(self) -> dict[str, float]:
        return self.state.history[-1]

    @property
    def improved(self) -> bool:
        """The epoch just done is the best so far (never without a monitor)."""
        return self.state.best_epoch == self.state.epoch

    @property
    def out_of_steps(self) -> bool:
        return bool(self.cfg.max_steps and self.state.step >= self.cfg.max_steps)

    @property
    def final(self) -> bool:
        """The epoch just done is the last one (the epochs, early stopping or max_steps)."""
        return self.state.epoch == self.cfg.epochs - 1 or self.state.stopped_early or self.out_of_steps

    @property
    def kept(self) -> nn.Module:
        return self.task.kept(self.model)


class Callback:
    """fit()'s hooks, each a no-op here. Every process calls them: write and draw on fit.ctx.main only."""

    def on_resume(self, fit: Fit) -> None:
        """A checkpoint was loaded: fit.state.history holds the epochs done."""

    def on_epoch_end(self, fit: Fit) -> None:
        """The epoch is validated, not yet checkpointed: keep what a resume relies on, decide to stop."""

    def on_checkpoint(self, fit: Fit) -> None:
        """The epoch is checkpointed: log, picture, report."""

    def on_fit_end(self, fit: Fit) -> None:
        """The epochs are over; the resume state is dropped next."""


def fit(model: nn.Module, task: Task, loaders: dict[str, DataLoader], cfg: ScheduleConfig, ctx: FitContext,
        callbacks: Sequence[Callback] = ()) -> FitResult:
    """Train on loaders["train"] (the others are prepared for the task) for cfg.epochs, resuming in ctx.workdir."""
    accelerator, workdir, deterministic = ctx.accelerator, ctx.workdir, not torch.cuda.is_available()
    if (done := finished(workdir)) is not None:  # trained before a later crash (logging, registering)
        ctx.say(f"{ctx.name} finished its epochs before; using what it saved in {workdir}")
        return finished_result(workdir, FitState(**done))
    set_seed(ctx.seed, deterministic=deterministic)
    optimizer = build_optimizer(model, cfg)
    scheduler, _ = build_scheduler(optimizer, cfg, len(loaders["train"]), accelerator.num_processes)
    # One accelerator serves every stage of a run (teacher, students, trials): forget the previous stage's
    # objects, or save_state/load_state would pair this model with the state of the first one prepared.
    accelerator.free_memory()
    model, optimizer, *prepared, scheduler = accelerator.prepare(model, optimizer, *loaders.values(), scheduler)
    prepared = dict(zip(loaders, prepared))
    task.start(model, prepared)
    run = Fit(ctx, cfg, task, model, FitState())
    if (progress := load_checkpoint(accelerator, workdir)) is not None:
        run.state = FitState(**progress)
        task.load_state_dict(load_extra(workdir))
        ctx.say(f"resuming {ctx.name} at epoch {run.state.epoch + 2} from {workdir}")
        notify(callbacks, "on_resume", run)
    state = run.state
    for epoch in range(state.epoch + 1, cfg.epochs):
        if state.stopped_early or run.out_of_steps:
            break
        set_seed(epoch_seed(ctx.seed, epoch), deterministic=deterministic)
        set_epoch(epoch, loaders["train"].dataset, loaders["train"].sampler, prepared["train"])
        model.train()
        sums, batches = torch.zeros(len(task.train_metrics), device=accelerator.device), 0
        steps = bar(prepared["train"], f"{ctx.name} epoch {epoch + 1}/{cfg.epochs}", enabled=ctx.main,
                    unit="batches", every=EPOCH_HEARTBEAT_S)
        for batch in steps:
            with accelerator.accumulate(model):
                loss, logged = task.train_step(model, batch)
                check_finite(loss, epoch, cfg.lr)
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            task.after_step(model, accelerator.sync_gradients)
            sums += logged
            batches += 1
            state.step += int(accelerator.sync_gradients)
            steps.set_postfix(loss=f"{loss.item():.3f}")
            if run.out_of_steps:
                break
        means = accelerator.reduce(sums / max(1, batches), reduction="mean").tolist()
        record = {"epoch": epoch, **dict(zip(task.train_metrics, means)), "train/lr": scheduler.get_last_lr()[0],
                  **task.validate(model, epoch)}
        state.epoch = epoch
        state.history.append(record)
        if task.monitor is not None and record[task.monitor] > state.best_score:
            state.best_score, state.best_epoch, state.bad_epochs = record[task.monitor], epoch, 0
        else:
            state.bad_epochs += 1
        notify(callbacks, "on_epoch_end", run)
        # Checkpoint first, then log: a crash in between re-logs on resume, never twice.
        save_checkpoint(accelerator, workdir, asdict(state), extra=task.state_dict())
        ctx.say(f"{ctx.name} epoch {epoch + 1}/{cfg.epochs} {task.summary(record)}" + (" *" if run.improved else ""))
        notify(callbacks, "on_checkpoint", run)
    notify(callbacks, "on_fit_end", run)
    finish(accelerator, workdir, asdict(state))  # the resume state is no longer needed (waits for every process)
    return finished_result(workdir, state)


def set_epoch(epoch: int, *parts: object) -> None:
    """Tell each part that has set_epoch (a dataset's augmentation, a sampler's draws, a prepared loader's order)."""
    for part in parts:
        if hasattr(part, "set_epoch"):
            part.set_epoch(epoch)


def check_finite(loss: torch.Tensor, epoch: int, lr: float) -> None:
    if not torch.isfinite(loss):
        raise TrainingError(f"loss became {loss.item()} at epoch {epoch + 1}; lower lr (now {lr}) "
                            "and run again with a new run_name")


def notify(callbacks: Sequence[Callback], hook: str, run: Fit) -> None:
    for callback in callbacks:
        getattr(callback, hook)(run)


def build_optimizer(model: torch.nn.Module, cfg: ScheduleConfig) -> torch.optim.Optimizer:
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


def lr_lambda(cfg: ScheduleConfig, total_steps: int) -> Callable[[int], float]:
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


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, batches_per_epoch: int,
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
