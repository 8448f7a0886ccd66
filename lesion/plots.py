"""Pictures people would rather look at than read: overlays, curves, comparisons."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: figures go to files and MLflow, never to a screen

import cv2
import matplotlib.pyplot as plt
import numpy as np

GREEN, RED, YELLOW = (0, 220, 0), (255, 40, 40), (255, 220, 0)


def close_figure(figure) -> None:
    """Release a figure once it is saved or logged (pyplot keeps every open one)."""
    plt.close(figure)


def overlay(image: np.ndarray, pred: np.ndarray | None = None, truth: np.ndarray | None = None,
            alpha: float = 0.35) -> np.ndarray:
    """uint8 (H, W, 3) with the prediction tinted and contours drawn: truth green, prediction red."""
    out = image.copy()
    if pred is not None:
        tint = out.astype(np.float32)
        tint[pred.astype(bool)] = (1 - alpha) * tint[pred.astype(bool)] + alpha * np.array(YELLOW, np.float32)
        out = tint.round().astype(np.uint8)
    thickness = max(1, image.shape[0] // 128)
    for mask, colour in ((truth, GREEN), (pred, RED)):
        if mask is not None:
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(out, contours, -1, colour, thickness)
    return out


def _labelled(tile: np.ndarray, text: str) -> np.ndarray:
    tile = tile.copy()
    scale = max(0.35, tile.shape[0] / 400)
    cv2.putText(tile, text, (4, int(14 * scale / 0.35 * 0.9)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                cv2.LINE_AA)
    return tile


def _fitted_scale(text: str, width: int, scale: float) -> float:
    """The largest font scale up to scale at which text fits in width pixels."""
    while scale > 0.25 and cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] > width - 6:
        scale *= 0.9
    return scale


def titled_grid(columns: list[list[np.ndarray]], titles: list[str], row_titles: list[str] | None = None) -> np.ndarray:
    """Tiles (uint8 RGB, one list per column, one tile per row) under a band that names each column.

    row_titles, if given, are written into the first tile of each row (an image id, a decision).
    """
    if len(titles) != len(columns):
        raise ValueError(f"{len(columns)} columns but {len(titles)} titles")
    if row_titles:
        columns = [[_labelled(tile, text) for tile, text in zip(columns[0], row_titles)], *columns[1:]]
    grid = np.concatenate([np.concatenate(row, axis=1) for row in zip(*columns)], axis=0)
    widths = [column[0].shape[1] for column in columns]
    scale = max(0.35, columns[0][0].shape[0] / 400)
    band = np.full((int(24 * scale / 0.35), grid.shape[1], 3), 40, np.uint8)
    x = 0
    for title, width in zip(titles, widths):
        fitted = _fitted_scale(title, width, scale)
        cv2.putText(band, title, (x + 4, int(band.shape[0] * 0.7)), cv2.FONT_HERSHEY_SIMPLEX, fitted,
                    (255, 255, 255), 1, cv2.LINE_AA)
        x += width
    return np.concatenate([band, grid], axis=0)


def overlay_grid(images: list[np.ndarray], truths: list[np.ndarray], preds: list[np.ndarray],
                 titles: list[str] | None = None) -> np.ndarray:
    """One row per example: image | truth | prediction, titled (contours: truth green, prediction red)."""
    return titled_grid([list(images), [overlay(im, truth=t) for im, t in zip(images, truths)],
                        [overlay(im, pred=p, truth=t) for im, p, t in zip(images, preds, truths)]],
                       ["image", "truth", "prediction"], titles)


def learning_curves(history: list[dict[str, float]], title: str = "") -> plt.Figure:
    """Training loss and validation metrics per epoch."""
    epochs = [h["epoch"] for h in history]
    has_val = any(k.startswith("val/") for h in history for k in h)
    fig, axes = plt.subplots(1, 2 if has_val else 1, figsize=(10 if has_val else 5.5, 3.6), squeeze=False)
    ax_loss = axes[0, 0]
    for key in sorted({k for h in history for k in h if k.endswith("loss")}):
        ax_loss.plot(epochs, [h.get(key, np.nan) for h in history], marker="o", label=key)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_title("loss")
    ax_loss.legend()
    if has_val:
        ax_val = axes[0, 1]
        for key in ("val/jaccard", "val/dice", "val/threshold_jaccard"):
            if any(key in h for h in history):
                ax_val.plot(epochs, [h.get(key, np.nan) for h in history], marker="o", label=key)
        ax_val.set_xlabel("epoch")
        ax_val.set_ylim(0, 1)
        ax_val.set_title("validation")
        ax_val.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def stage_comparison(stages: list[str], scores: dict[str, list[float]], title: str = "") -> plt.Figure:
    """Bar chart of metrics per stage (teacher, student, student*...)."""
    fig, ax = plt.subplots(figsize=(1.8 + 1.4 * len(stages), 3.6))
    width = 0.8 / max(1, len(scores))
    x = np.arange(len(stages))
    for i, (name, values) in enumerate(scores.items()):
        bars = ax.bar(x + i * width, values, width, label=name)
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set_xticks(x + width * (len(scores) - 1) / 2, stages)
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right")
    ax.set_title(title or "validation per stage")
    fig.tight_layout()
    return fig
