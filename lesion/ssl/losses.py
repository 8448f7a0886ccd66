"""Losses of the jigsaw auto-encoder: reconstruction, InfoNCE invariance (image and tile level) and tile places."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reconstruction_loss(reconstruction: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """L1 + MSE (as in JIANet) between the reconstruction and the original normalised image."""
    reconstruction, image = reconstruction.float(), image.float()
    return F.l1_loss(reconstruction, image) + F.mse_loss(reconstruction, image)


def place_loss(logits: torch.Tensor, perms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy, accuracy) of (B, N, g, g) place logits against perms (B, N): slot k shows tile perms[:, k]."""
    logits = logits.float().flatten(2)  # (B, N places, N slots in row-major order, as perms)
    return F.cross_entropy(logits, perms), (logits.argmax(1) == perms).float().mean()


def info_nce(z_image: torch.Tensor, z_puzzle: torch.Tensor, temperature: float,
             queue: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE on L2-normalised (B, D) embeddings.

    Image i's positive is its own puzzle; the negatives are the other images of
    the batch in the other view, plus the queue (past image embeddings) if any.
    """
    z_image, z_puzzle = z_image.float(), z_puzzle.float()
    extra = queue.to(z_image) if queue is not None else z_image.new_zeros(0, z_image.shape[1])
    targets = torch.arange(len(z_image), device=z_image.device)
    image_to_puzzle = z_image @ torch.cat([z_puzzle, extra]).T / temperature
    puzzle_to_image = z_puzzle @ torch.cat([z_image, extra]).T / temperature
    return (F.cross_entropy(image_to_puzzle, targets) + F.cross_entropy(puzzle_to_image, targets)) / 2


def tile_info_nce(tiles_image: torch.Tensor, tiles_puzzle: torch.Tensor, perms: torch.Tensor,
                  temperature: float) -> torch.Tensor:
    """InfoNCE between every puzzle slot's embedding and the embedding of the same tile in its place.

    tiles_* are (B, N, D), row-major; slot k of puzzle b shows the tile of place
    perms[b, k]. The negatives are all other tiles of the batch, those of the
    same image included: colour alone cannot tell them apart, texture and
    structure must.
    """
    in_place = tiles_image.gather(1, perms[..., None].expand(-1, -1, tiles_image.shape[2]))
    return info_nce(in_place.flatten(0, 1), tiles_puzzle.flatten(0, 1), temperature)


class EmbeddingQueue:
    """A FIFO of past image embeddings: many more negatives than a small batch holds (MoCo-style).

    Its state_dict goes into the checkpoint as safetensors, so a resumed run sees
    the same negatives.
    """

    def __init__(self, size: int, dim: int, device: torch.device | str = "cpu"):
        self.size = size
        self.items = torch.zeros(0, dim, device=device)

    def negatives(self) -> torch.Tensor | None:
        return self.items if self.size > 0 and len(self.items) else None

    def push(self, embeddings: torch.Tensor) -> None:
        if self.size > 0:
            self.items = torch.cat([embeddings.detach().float(), self.items])[: self.size]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"items": self.items.cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.items = state["items"].to(self.items.device)
