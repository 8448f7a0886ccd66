"""The Accelerate training engine: one fit() loop, evaluate(), losses, checkpoints."""

from lesion.train.engine import FitResult, evaluate, fit, make_accelerator

__all__ = ["FitResult", "evaluate", "fit", "make_accelerator"]
