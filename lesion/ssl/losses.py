"""Losses of the jigsaw-invariant auto-encoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reconstruction_loss(reconstruction: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """L1 + MSE, as in JIANet, on normalized images."""
    reconstruction = reconstruction.float()
    return F.l1_loss(reconstruction, image) + F.mse_loss(reconstruction, image)


def info_nce(anchor: torch.Tensor, positive: torch.Tensor, temperature: float,
             queue: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE: each image's puzzle is its positive; other images (and the queue) are negatives.

    anchor, positive: (B, D) L2-normalised; queue: (Q, D) past positives, detached.
    """
    anchor, positive = anchor.float(), positive.float()
    targets = torch.arange(anchor.shape[0], device=anchor.device)
    keys = positive if queue is None or len(queue) == 0 else torch.cat([positive, queue.to(positive)])
    forward = F.cross_entropy(anchor @ keys.T / temperature, targets)
    backward = F.cross_entropy(positive @ anchor.T / temperature, targets)
    return (forward + backward) / 2


class EmbeddingQueue:
    """A FIFO of past puzzle embeddings: more negatives than a small CPU batch holds."""

    def __init__(self, size: int, dim: int):
        self.size = size
        self.items = torch.zeros(0, dim)

    def __call__(self) -> torch.Tensor | None:
        return self.items if self.size > 0 else None

    def push(self, embeddings: torch.Tensor) -> None:
        if self.size > 0:
            self.items = torch.cat([embeddings.detach().float().cpu(), self.items])[: self.size]
