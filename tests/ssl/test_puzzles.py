import pytest
import torch

from lesion.ssl.puzzles import make_puzzle, solve_puzzle


@pytest.mark.parametrize("grid, size", [(2, 64), (3, 96), (4, 64), (3, 63)])
def test_shuffle_is_a_permutation_of_tiles(grid, size):
    images = torch.rand(3, 3, size, size)
    g = torch.Generator().manual_seed(0)
    puzzle, perms = make_puzzle(images, grid, jitter=0.0, color_jitter=0.0, generator=g)
    assert puzzle.shape == images.shape
    assert all(sorted(p.tolist()) == list(range(grid * grid)) for p in perms)
    if size % grid == 0:
        assert torch.allclose(solve_puzzle(puzzle, perms, grid), images)
        assert not torch.allclose(puzzle, images)


def test_jitter_changes_pixels_and_is_seeded():
    images = torch.rand(2, 3, 96, 96)
    a, pa = make_puzzle(images, 3, 0.2, 0.4, torch.Generator().manual_seed(1))
    b, pb = make_puzzle(images, 3, 0.2, 0.4, torch.Generator().manual_seed(1))
    plain, _ = make_puzzle(images, 3, 0.0, 0.0, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and torch.equal(pa, pb)
    assert not torch.allclose(solve_puzzle(a, pa, 3), images)
    assert a.shape == plain.shape
