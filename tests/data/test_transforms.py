import numpy as np
import pytest

from lesion.config import NoiseConfig
from lesion.data.transforms import build_transform, denormalize, normalize


def _sample(size=64):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), np.float32)
    mask[16:40, 20:44] = 1
    return image, mask


@pytest.mark.parametrize("noise", [0.0, 0.5, 1.0, 2.0])
def test_policies_keep_shapes_and_binary_masks(noise):
    image, mask = _sample()
    t = build_transform(NoiseConfig(noise=noise), train=True, seed=0)
    for _ in range(5):
        out = t(image=image, masks=[mask, np.ones_like(mask)])
        assert out["image"].shape == image.shape and out["image"].dtype == np.uint8
        assert set(np.unique(out["masks"][0])) <= {0.0, 1.0}


def test_noise_strength_changes_images_more():
    image, mask = _sample()

    def mean_change(noise):
        t = build_transform(NoiseConfig(noise=noise), train=True, seed=1)
        return np.mean([np.abs(t(image=image, masks=[mask])["image"].astype(float) - image).mean() for _ in range(8)])

    assert mean_change(1.0) > mean_change(0.0)


def test_same_seed_same_augmentation():
    image, mask = _sample()
    a = build_transform(NoiseConfig(noise=1.0), train=True, seed=5)
    b = build_transform(NoiseConfig(noise=1.0), train=True, seed=5)
    assert np.array_equal(a(image=image, masks=[mask])["image"], b(image=image, masks=[mask])["image"])


def test_eval_has_no_transform_and_normalize_round_trips():
    assert build_transform(NoiseConfig(noise=1.0), train=False) is None
    image, _ = _sample()
    assert np.abs(denormalize(normalize(image)).astype(int) - image).max() <= 1
