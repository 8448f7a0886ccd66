"""Jigsaw puzzles of image batches.

An image whose sides are divisible by `grid` is cut into grid x grid tiles.
Each tile is then, on its own:
  - cropped at a random place to (1 - jitter) of its side and resized back to
    the tile size, so pixel continuity across tile borders is no shortcut;
  - colour-jittered (contrast gain and per-channel shift, strength
    color_jitter), so colour continuity is no shortcut either;
and the tiles of every image are shuffled by a fresh random permutation.
`perms[i, k]` is the source tile shown in slot k of image i; `unshuffle`
applies the inverse, so with no jitter it gives the image back exactly.
Everything random comes from one torch.Generator: same seed, same puzzle.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def to_tiles(images: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, grid*grid, C, H/grid, W/grid), tiles in row-major order."""
    b, c, h, w = images.shape
    if h % grid or w % grid:
        raise ValueError(f"a {h}x{w} image cannot be cut into {grid}x{grid} equal tiles")
    th, tw = h // grid, w // grid
    return images.reshape(b, c, grid, th, grid, tw).permute(0, 2, 4, 1, 3, 5).reshape(b, grid * grid, c, th, tw)


def from_tiles(tiles: torch.Tensor, grid: int) -> torch.Tensor:
    """Inverse of to_tiles."""
    b, _, c, th, tw = tiles.shape
    return tiles.reshape(b, grid, grid, c, th, tw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, grid * th, grid * tw)


def jitter_tiles(tiles: torch.Tensor, jitter: float, color_jitter: float, generator: torch.Generator | None) -> torch.Tensor:
    """Random crop-and-resize and colour jitter of every tile of (B, N, C, h, w) tiles."""
    b, n, c, th, tw = tiles.shape
    flat = tiles.reshape(b * n, c, th, tw)
    if jitter > 0:
        # One batched crop-and-resize: an affine grid per tile that zooms into a (1 - jitter) window.
        scale = 1.0 - jitter
        shift = (torch.rand(b * n, 2, generator=generator) * 2 - 1) * jitter
        theta = torch.zeros(b * n, 2, 3)
        theta[:, 0, 0], theta[:, 1, 1], theta[:, :, 2] = scale, scale, shift
        grid = F.affine_grid(theta.to(flat), list(flat.shape), align_corners=False)
        flat = F.grid_sample(flat, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if color_jitter > 0:
        gain = 1 + color_jitter * (torch.rand(b * n, 1, 1, 1, generator=generator) * 2 - 1)
        shift = 0.5 * color_jitter * (torch.rand(b * n, c, 1, 1, generator=generator) * 2 - 1)
        mean = flat.mean((2, 3), keepdim=True)
        flat = (flat - mean) * gain.to(flat) + mean + shift.to(flat)
    return flat.reshape(b, n, c, th, tw)


def make_puzzle(images: torch.Tensor, grid: int = 3, jitter: float = 0.1, color_jitter: float = 0.4,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W) with H, W divisible by grid -> (puzzles (B, C, H, W), perms (B, grid*grid))."""
    tiles = to_tiles(images, grid)
    if jitter > 0 or color_jitter > 0:
        tiles = jitter_tiles(tiles, jitter, color_jitter, generator)
    b, n = tiles.shape[:2]
    perms = torch.argsort(torch.rand(b, n, generator=generator), dim=1)
    return from_tiles(tiles[torch.arange(b)[:, None], perms.to(tiles.device)], grid), perms


def unshuffle(puzzles: torch.Tensor, perms: torch.Tensor, grid: int) -> torch.Tensor:
    """Put every tile back in its slot (the inverse permutation)."""
    tiles = to_tiles(puzzles, grid)
    inverse = torch.argsort(perms, dim=1).to(tiles.device)
    return from_tiles(tiles[torch.arange(len(tiles))[:, None], inverse], grid)


def assemble(puzzles: torch.Tensor, place_logits: torch.Tensor, grid: int) -> torch.Tensor:
    """Put every tile of (B, C, H, W) puzzles where (B, N places, grid, grid) logits say it belongs.

    Each slot gets its own place, greedily by confidence: the picture of how far
    the network has solved each puzzle (unshuffle with the true perms is the answer).
    """
    scores = place_logits.detach().float().flatten(2).transpose(1, 2).cpu()  # (B, slot, place)
    predicted = torch.empty(scores.shape[:2], dtype=torch.long)  # like perms: slot k shows place predicted[k]
    for i, score in enumerate(scores):
        free_slots, free_places = set(range(len(score))), set(range(len(score)))
        for flat in torch.argsort(score.flatten(), descending=True).tolist():
            slot, place = divmod(flat, len(score))
            if slot in free_slots and place in free_places:
                predicted[i, slot] = place
                free_slots.discard(slot)
                free_places.discard(place)
    return unshuffle(puzzles, predicted, grid)
