"""What fit() does with each epoch besides training: weights kept, pictures, logging, pruning, early stopping.

    KeepBest        segmenter folders best/ (when the monitored metric improved) and last/ (every epoch)
    Pictures        a picture of the kept model every N epochs and at the final one
    Logging         each epoch's record as metrics (again on resume), the learning curves at the end
    Pruning         the monitored metric reported to an Optuna trial, which may stop it
    EarlyStopping   stop after `patience` epochs without a better monitored metric

Nothing here knows MLflow: Logging and Pictures write to any Logger
(lesion.tracking.Tracker is one). The hooks and their order are fit()'s
(lesion.train.engine.Callback).
"""

from __future__ import annotations

import shutil
from typing import Any, Callable, Protocol

import numpy as np
import torch
from torch import nn

from lesion.models.io import save_model
from lesion.progress import say
from lesion.train.engine import Callback, Fit


class Logger(Protocol):
    """Where metrics, pictures and figures go (lesion.tracking.Tracker: its MLflow run, a no-op off the main rank)."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_image(self, image: np.ndarray, name: str) -> None: ...

    def log_figure(self, figure: Any, name: str) -> None: ...


class KeepBest(Callback):
    """The kept weights (the EMA when there is one) as segmenter folders best/ and last/ in the fit's folder.

    Saved before the checkpoint, so a resumed fit never lacks the best epoch's weights;
    at the end last/ goes when it is the best epoch (the same weights as best/).
    """

    def __init__(self, image_size: int):
        self.image_size = image_size

    def on_epoch_end(self, fit: Fit) -> None:
        if fit.ctx.main:
            workdir, epoch = fit.ctx.workdir, fit.state.epoch
            if fit.improved:
                save_model(fit.kept, workdir / "best", self.image_size, epoch=epoch, val_jaccard=fit.state.best_score)
            monitor = fit.task.monitor
            score = fit.state.history[-1].get(monitor) if monitor and fit.state.history else None
            save_model(fit.kept, workdir / "last", self.image_size, epoch=epoch,
                       **({"val_jaccard": score} if score is not None else {}))

    def on_fit_end(self, fit: Fit) -> None:
        if fit.ctx.main and fit.state.history and fit.state.history[-1]["epoch"] == fit.state.best_epoch:
            shutil.rmtree(fit.ctx.workdir / "last", ignore_errors=True)


class Pictures(Callback):
    """draw(kept model, device) logged as pictures/<prefix>epoch_NNN.png every `every` epochs and at the final one."""

    def __init__(self, logger: Logger, draw: Callable[[nn.Module, torch.device], np.ndarray], every: int,
                 prefix: str = ""):
        self.logger, self.draw, self.every, self.prefix = logger, draw, every, prefix

    def on_checkpoint(self, fit: Fit) -> None:
        shown = fit.state.epoch + 1
        # The final picture also when training ends early.
        if fit.ctx.main and (fit.final or (self.every and shown % self.every == 0)):
            self.logger.log_image(self.draw(fit.kept, fit.ctx.accelerator.device),
                                  f"pictures/{self.prefix}epoch_{shown:03d}.png")


class Logging(Callback):
    """Each epoch's record (less its epoch) as metrics at step=epoch, and curves(history) as the figure `name`."""

    def __init__(self, logger: Logger, curves: Callable[[list[dict[str, float]]], Any], name: str):
        self.logger, self.curves, self.name = logger, curves, name

    def log(self, record: dict[str, float]) -> None:
        self.logger.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=int(record["epoch"]))

    def on_resume(self, fit: Fit) -> None:
        for record in fit.state.history:  # what a crash kept out of the log (steps already there are skipped)
            self.log(record)

    def on_checkpoint(self, fit: Fit) -> None:
        self.log(fit.record)

    def on_fit_end(self, fit: Fit) -> None:
        if fit.ctx.main and fit.state.history:
            self.logger.log_figure(self.curves(fit.state.history), self.name)


class Pruning(Callback):
    """Report the monitored metric to an Optuna trial every epoch; raise `pruned` (optuna.TrialPruned) when it says.

    It raises after the checkpoint and the epoch's log, as a crash would.
    """

    def __init__(self, trial: Any, pruned: Callable[[str], Exception], monitor: str = "val/jaccard"):
        self.trial, self.pruned, self.monitor = trial, pruned, monitor

    def on_checkpoint(self, fit: Fit) -> None:
        value, epoch = fit.record[self.monitor], fit.state.epoch
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            raise self.pruned(f"{self.monitor} {value:.4f} at epoch {epoch + 1}")


class EarlyStopping(Callback):
    """Stop after `patience` epochs without a better monitored metric (0: never); kept in the checkpoint."""

    def __init__(self, patience: int):
        self.patience = patience

    def on_epoch_end(self, fit: Fit) -> None:
        if self.patience and fit.state.bad_epochs >= self.patience:
            fit.state.stopped_early = True

    def on_checkpoint(self, fit: Fit) -> None:
        if fit.state.stopped_early and fit.ctx.main:
            say(f"[lesion] early stop: no better {fit.task.monitor} for {self.patience} epochs")
