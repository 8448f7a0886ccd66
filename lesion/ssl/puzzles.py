"""Jigsaw puzzles of image batches.

An image is cut into grid x grid tiles; each tile is randomly cropped
(`jitter`, a fraction of the tile size, so tile borders give no shortcut),
resized back, colour-jittered on its own (so colour continuity gives no
shortcut either), and the tiles are shuffled by a fresh permutation per
image. Any image size works: tiles are cut from the largest grid-divisible
region and the puzzle is resized back to the input size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def make_puzzle(images: torch.Tensor, grid: int = 3, jitter: float = 0.1, color_jitter: float = 0.4,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W) -> (puzzles (B, C, H, W), permutations (B, grid*grid)); permutation[k] = source tile of slot k."""
    b, c, h, w = images.shape
    th, tw = h // grid, w // grid
    if th < 4 or tw < 4:
        raise ValueError(f"image {h}x{w} is too small for a {grid}x{grid} puzzle")
    tiles = (images[:, :, : th * grid, : tw * grid]
             .reshape(b, c, grid, th, grid, tw).permute(0, 2, 4, 1, 3, 5).reshape(b, grid * grid, c, th, tw))
    n = grid * grid
    rand = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    if jitter > 0:
        ch, cw = max(2, int(round(th * (1 - jitter)))), max(2, int(round(tw * (1 - jitter))))
        ys = (rand(b, n) * (th - ch + 1)).long().clamp(max=th - ch)
        xs = (rand(b, n) * (tw - cw + 1)).long().clamp(max=tw - cw)
        crops = torch.stack([tiles[i, k, :, ys[i, k]: ys[i, k] + ch, xs[i, k]: xs[i, k] + cw]
                             for i in range(b) for k in range(n)])
        tiles = F.interpolate(crops, size=(th, tw), mode="bilinear", align_corners=False).reshape(b, n, c, th, tw)
    if color_jitter > 0:
        gain = 1 + color_jitter * (rand(b, n, 1, 1, 1) * 2 - 1)  # contrast
        shift = 0.5 * color_jitter * (rand(b, n, c, 1, 1) * 2 - 1)  # per-channel brightness / hue
        mean = tiles.mean((3, 4), keepdim=True)
        tiles = (tiles - mean) * gain + mean + shift
    perms = torch.stack([torch.randperm(n, generator=generator) for _ in range(b)])
    tiles = torch.stack([tiles[i, perms[i]] for i in range(b)])
    puzzle = tiles.reshape(b, grid, grid, c, th, tw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, grid * th, grid * tw)
    if puzzle.shape[-2:] != (h, w):
        puzzle = F.interpolate(puzzle, size=(h, w), mode="bilinear", align_corners=False)
    return puzzle, perms


def solve_puzzle(puzzle: torch.Tensor, perms: torch.Tensor, grid: int) -> torch.Tensor:
    """Inverse of the shuffle (without jitter): put every tile back in its slot."""
    b, c, h, w = puzzle.shape
    th, tw = h // grid, w // grid
    n = grid * grid
    tiles = puzzle.reshape(b, c, grid, th, grid, tw).permute(0, 2, 4, 1, 3, 5).reshape(b, n, c, th, tw)
    inverse = torch.argsort(perms, dim=1)
    tiles = torch.stack([tiles[i, inverse[i]] for i in range(b)])
    return tiles.reshape(b, grid, grid, c, th, tw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)
