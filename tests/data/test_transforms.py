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


def _lesion_areas(zoom_out: float, zoom_in: float, **knobs: float) -> np.ndarray:
    """The augmented mask's share of the frame, over 200 draws (the plain policy unless knobs say), for a lesion
    covering 25%."""
    image, _ = _sample(64)
    mask = np.zeros((64, 64), np.float32)
    mask[16:48, 16:48] = 1
    cfg = NoiseConfig(zoom_out=zoom_out, zoom_in=zoom_in, photometric=0.0, artifacts=0.0, **knobs)
    t = build_transform(cfg, train=True, seed=0)
    return np.array([t(image=image, masks=[mask])["masks"][0].mean() for _ in range(200)])


def test_zoom_in_shows_larger_lesions_and_zoom_out_smaller():
    neither, shrunk, enlarged = _lesion_areas(0.0, 0.0), _lesion_areas(1.0, 0.0), _lesion_areas(0.0, 1.0)
    # The mild affine alone keeps a 25% lesion within about 20-31% of the frame.
    assert 0.18 < np.median(neither) < 0.32
    assert shrunk.max() < 0.25 * 1.1 ** 2 and np.median(shrunk) < 0.16      # 50-90% of the size: 6-20% of the frame
    assert enlarged.min() > 0.25 * 0.9 ** 2 and np.median(enlarged) > 0.38  # 110-150%: 30-56% of the frame
    both = _lesion_areas(0.5, 0.5)
    assert (both < 0.2).mean() > 0.3 and (both > 0.34).mean() > 0.3        # half of the images each way
    # Each zoom keeps its own probability: at 0.3 + 0.3, about 40% of the images are not zoomed.
    some = _lesion_areas(0.3, 0.3)
    assert 0.28 < ((some > 0.2) & (some < 0.31)).mean() < 0.52


def test_zoom_in_keeps_the_aspect_and_reaches_the_student_policy():
    import albumentations as A

    from lesion.data.transforms import zoom

    image, _ = _sample(64)
    mask = np.zeros((64, 64), np.float32)
    mask[22:42, 22:42] = 1  # a 20 px square lesion in the middle: enlarged, it stays a square
    t = A.Compose(zoom(0.0, 1.0), seed=0)
    for _ in range(20):
        rows, cols = np.nonzero(t(image=image, masks=[mask])["masks"][0])
        h, w = np.ptp(rows) + 1, np.ptp(cols) + 1
        assert 21 <= min(h, w) and max(h, w) <= 31 and abs(h - w) <= 1, (h, w)
    # noise=1 (the students' policy) has its own wider affine, so compare its area with and without zoom-in
    student = dict(noise=1.0, shift_scale_rotate=0.0, distortion=0.0, coarse_dropout=0.0)
    assert np.median(_lesion_areas(0.0, 1.0, **student)) > 1.4 * np.median(_lesion_areas(0.0, 0.0, **student))


def test_zoom_probabilities_over_one_are_refused():
    from lesion.errors import ConfigError

    with pytest.raises(ConfigError, match="zoom_out=0.6 \\+ zoom_in=0.5 is over 1"):
        NoiseConfig(zoom_out=0.6, zoom_in=0.5)
