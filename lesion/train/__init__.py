"""The Accelerate training engine: one fit() loop, its tasks (segmentation here, the jigsaw in lesion.ssl) and
callbacks, evaluate(), losses, checkpoints."""

from lesion.train.engine import FitContext, FitResult, fit, make_accelerator
from lesion.train.segmentation import Segmentation, evaluate

__all__ = ["FitContext", "FitResult", "Segmentation", "evaluate", "fit", "make_accelerator"]
