"""Colour constancy: a colour cast is removed, a neutral image is left alone, and the step is idempotent."""

import numpy as np
import pytest

from lesion.data.color import apply_color_constancy, shades_of_gray


def textured_neutral(size=64, seed=0) -> np.ndarray:
    """A grey-balanced image (R, G, B have the same p-norm mean): a dark blob on light skin, in greys."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    grey = 180 - 110 * np.exp(-((yy - size / 2) ** 2 + (xx - size / 2) ** 2) / (2 * (size / 6) ** 2))
    grey = grey + rng.normal(0, 6, grey.shape)
    return np.repeat(np.clip(grey, 0, 255)[..., None], 3, axis=2).round().astype(np.uint8)


def p_means(image: np.ndarray, p: int = 6) -> np.ndarray:
    return np.power(np.mean(np.power(image.astype(float) / 255, p), axis=(0, 1)), 1 / p)


def test_a_known_colour_cast_is_removed():
    neutral = textured_neutral()
    cast = np.clip(neutral * np.array([1.0, 0.8, 0.55]), 0, 255).round().astype(np.uint8)  # a warm, reddish light
    before = p_means(cast)
    assert before.max() / before.min() > 1.6
    corrected = shades_of_gray(cast)
    after = p_means(corrected)
    assert after.max() / after.min() < 1.02, "the illuminant estimate is grey after correction"
    # The correction recovers the neutral image up to an overall brightness.
    ratio = corrected.astype(float).mean((0, 1))
    assert ratio.max() / ratio.min() < 1.05


def test_neutral_image_is_left_alone_and_the_step_is_idempotent():
    neutral = textured_neutral(seed=1)
    assert np.abs(shades_of_gray(neutral).astype(int) - neutral).max() <= 1
    cast = np.clip(neutral * np.array([0.6, 0.9, 1.0]), 0, 255).round().astype(np.uint8)
    once = shades_of_gray(cast)
    assert np.abs(shades_of_gray(once).astype(int) - once).max() <= 1


def test_black_image_and_off_switch():
    black = np.zeros((8, 8, 3), np.uint8)
    assert np.array_equal(shades_of_gray(black), black)
    image = textured_neutral()
    assert apply_color_constancy(image, "none") is image
    with pytest.raises(ValueError, match="unknown colour constancy"):
        apply_color_constancy(image, "grey_world")
