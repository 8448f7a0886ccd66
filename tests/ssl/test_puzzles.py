"""Jigsaw puzzles: a true, seeded permutation of tiles; jitter changes pixels, never shapes."""

from __future__ import annotations

import pytest
import torch

from lesion.config import SSLConfig
from lesion.errors import ConfigError
from lesion.ssl.losses import place_loss, tile_info_nce
from lesion.ssl.pretext import PuzzleDataset, check_config, puzzle_side
from lesion.ssl.puzzles import assemble, make_puzzle, to_tiles, unshuffle


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("grid, h, w", [(2, 64, 64), (3, 96, 96), (3, 63, 63), (4, 64, 64), (4, 32, 48), (3, 6, 9)])
def test_shuffle_is_a_permutation_of_tiles_and_unshuffle_restores_the_image(grid, h, w):
    images = torch.rand(5, 3, h, w)
    puzzles, perms = make_puzzle(images, grid, jitter=0.0, color_jitter=0.0, generator=seeded(0))
    assert puzzles.shape == images.shape
    assert perms.shape == (5, grid * grid)
    assert all(sorted(p.tolist()) == list(range(grid * grid)) for p in perms)
    source, shown = to_tiles(images, grid), to_tiles(puzzles, grid)
    for i in range(len(images)):
        for slot, tile in enumerate(perms[i].tolist()):
            assert torch.equal(shown[i, slot], source[i, tile])
    assert torch.equal(unshuffle(puzzles, perms, grid), images)
    assert not torch.equal(puzzles, images)


def test_a_size_not_divisible_by_the_grid_is_refused():
    with pytest.raises(ValueError, match="3x3"):
        make_puzzle(torch.rand(1, 3, 64, 64), 3)


@pytest.mark.parametrize("jitter, color_jitter", [(0.2, 0.0), (0.0, 0.4), (0.1, 0.4)])
def test_jitter_changes_pixels_but_keeps_shapes(jitter, color_jitter):
    images = torch.rand(2, 3, 96, 96)
    puzzles, perms = make_puzzle(images, 3, jitter, color_jitter, seeded(1))
    assert puzzles.shape == images.shape and puzzles.dtype == images.dtype
    restored = unshuffle(puzzles, perms, 3)
    assert not torch.allclose(restored, images, atol=1e-3)
    # Still each image's own content: closer to its source than to the other image.
    assert (restored[0] - images[0]).abs().mean() < (restored[0] - images[1]).abs().mean()


def test_puzzles_are_deterministic_under_a_seed():
    images = torch.rand(3, 3, 64, 64)
    a, pa = make_puzzle(images, 4, 0.1, 0.4, seeded(7))
    b, pb = make_puzzle(images, 4, 0.1, 0.4, seeded(7))
    c, pc = make_puzzle(images, 4, 0.1, 0.4, seeded(8))
    assert torch.equal(a, b) and torch.equal(pa, pb)
    assert not torch.equal(a, c)


class Images:
    """A stand-in for ImageDataset: fixed random images, no augmentation."""

    transform = None

    def __init__(self, size: int):
        self.data = torch.rand(4, 3, size, size)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.data[index], "index": index}


def test_pretraining_puzzles_work_at_image_sizes_not_divisible_by_the_grid():
    assert puzzle_side(64, 3) == 63 and puzzle_side(256, 3) == 255 and puzzle_side(64, 4) == 64
    dataset = PuzzleDataset(Images(64), SSLConfig(grid=3), seed=0)
    item = dataset[1]
    assert item["puzzle"].shape == item["image"].shape == (3, 64, 64)
    assert torch.equal(dataset[1]["puzzle"], item["puzzle"]), "seeded by (seed, epoch, index)"
    dataset.set_epoch(1)
    assert not torch.equal(dataset[1]["puzzle"], item["puzzle"]), "a fresh puzzle every epoch"


@pytest.mark.parametrize("change, fix", [({"grid": 1}, "grid=2"), ({"grid": 9}, "use grid<=8"),
                                         ({"tile_jitter": 0.5}, "tile_jitter"), ({"temperature": 0.0}, "temperature"),
                                         ({"queue_size": -1}, "queue_size"),
                                         ({"reconstruction_weight": 0.0, "invariance_weight": 0.0, "tile_invariance_weight": 0.0,
                                           "place_weight": 0.0}, "not all be 0")])
def test_impossible_settings_are_one_line_config_errors(change, fix):
    with pytest.raises(ConfigError, match=fix) as err:
        check_config(SSLConfig(**change), 64)
    assert "\n" not in str(err.value)


def true_places(perms: torch.Tensor, grid: int = 3) -> torch.Tensor:
    """(B, N) perms -> (B, N places, grid, grid) one-hot place logits: each slot votes for the place its tile came from."""
    n = grid * grid
    return torch.nn.functional.one_hot(perms, n).permute(0, 2, 1).reshape(len(perms), n, grid, grid).float()


def test_the_place_loss_scores_each_slot_against_the_tile_it_shows():
    _, perms = make_puzzle(torch.rand(2, 3, 48, 48), 3, generator=seeded(3))
    right = true_places(perms) * 20
    loss, accuracy = place_loss(right, perms)
    assert accuracy == 1 and loss < 1e-6
    wrong = right.roll(1, dims=1)  # every slot now votes for the next place
    loss, accuracy = place_loss(wrong, perms)
    assert accuracy == 0 and loss > 10
    loss, accuracy = place_loss(torch.zeros(2, 9, 3, 3), perms)
    assert torch.isclose(loss, torch.log(torch.tensor(9.0)))


def test_the_tile_invariance_pairs_each_puzzle_slot_with_the_tile_it_shows_in_place():
    images = torch.rand(2, 3, 48, 48)
    puzzles, perms = make_puzzle(images, 3, jitter=0.0, color_jitter=0.0, generator=seeded(5))
    # Embed every tile by its own normalised pixels: the same tile embeds the same wherever it is shown.
    def embed(x):
        return torch.nn.functional.normalize(to_tiles(x, 3).flatten(2) - 0.5, dim=2)

    right = tile_info_nce(embed(images), embed(puzzles), perms, temperature=0.05)
    assert right < 1e-3
    # Pairing slot k with place k (ignoring the shuffle) or with the wrong place is penalised.
    identity = torch.arange(9).expand(2, 9)
    assert tile_info_nce(embed(images), embed(puzzles), identity, temperature=0.05) > 1
    assert tile_info_nce(embed(images), embed(puzzles), perms.roll(1, dims=1), temperature=0.05) > 1


def test_assembling_by_the_true_places_solves_the_puzzle():
    images = torch.rand(3, 3, 48, 48)
    puzzles, perms = make_puzzle(images, 3, jitter=0.0, color_jitter=0.0, generator=seeded(4))
    right = true_places(perms)
    assert torch.equal(assemble(puzzles, right + 0.01 * torch.rand(3, 9, 3, 3), 3), images)
    # Ties and conflicting votes still give every place exactly one tile.
    mixed = assemble(puzzles, torch.zeros(3, 9, 3, 3), 3)
    assert sorted(to_tiles(mixed, 3)[0].sum((1, 2, 3)).tolist()) == sorted(to_tiles(images, 3)[0].sum((1, 2, 3)).tolist())
