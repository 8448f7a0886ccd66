"""Mask post-processing (central or largest component, holes) and the degenerate-mask flag."""

import numpy as np
import pytest

from lesion.metrics import score_image
from lesion.postprocess import central_component, fill_holes, is_degenerate, largest_component, postprocess_mask


def lesion_with_speckles_and_a_hole() -> np.ndarray:
    mask = np.zeros((40, 50), bool)
    mask[10:30, 10:30] = True  # the lesion
    mask[18:22, 18:22] = False  # a hole in it (a bright regression area)
    mask[2:4, 40:43] = True  # speckles on hairs and bubbles
    mask[35, 5] = True
    return mask


def test_largest_component_drops_speckles_and_keeps_the_hole():
    out = largest_component(lesion_with_speckles_and_a_hole())
    assert out[2:4, 40:43].sum() == 0 and not out[35, 5]
    assert out[10:30, 10:30].sum() == 20 * 20 - 16


def faint_lesion_and_a_dark_corner() -> np.ndarray:
    mask = np.zeros((60, 80), bool)
    mask[24:36, 34:46] = True  # the lesion in the middle: 144 pixels
    mask[:20, :20] = True  # a vignette corner, larger: 400 pixels
    return mask


def test_central_component_prefers_the_lesion_near_the_centre_to_a_larger_corner():
    mask = faint_lesion_and_a_dark_corner()
    central = central_component(mask)
    assert central[24:36, 34:46].all() and central.sum() == 144
    assert largest_component(mask)[:20, :20].all() and largest_component(mask).sum() == 400


def test_central_component_still_takes_size_into_account():
    mask = np.zeros((60, 80), bool)
    mask[29:31, 39:41] = True  # a 4-pixel speck at the very centre...
    mask[10:50, 50:75] = True  # ...against a big lesion off-centre, and a dark corner
    mask[:20, :20] = True
    assert np.array_equal(central_component(mask), np.pad(np.ones((40, 25), bool), ((10, 10), (50, 5))))
    assert largest_component(mask).sum() == 40 * 25
    mask[:20, :20] = False
    mask[:, :17] = True  # a frame edge larger than the lesion, further out: the lesion stays
    assert largest_component(mask).sum() == 60 * 17
    assert central_component(mask)[10:50, 50:75].all() and central_component(mask).sum() == 40 * 25
    single = np.zeros((30, 30), bool)
    single[:5, :5] = True  # one component, wherever it lies, is kept
    assert np.array_equal(central_component(single), single)
    assert not central_component(np.zeros((5, 5), bool)).any()


def test_central_component_weighs_pixels_not_centroids():
    """A vignette ring has its centroid at the image centre; its pixels lie far from it."""
    yy, xx = np.mgrid[0:101, 0:101]
    radius = np.hypot(yy - 50, xx - 50)
    ring = (radius > 40) & (radius < 48)  # about 2,200 pixels around the centre
    lesion = radius < 12  # about 450 pixels at it
    assert np.array_equal(central_component(ring | lesion), lesion)


def test_central_component_measures_distance_in_pixels_on_both_axes():
    """On a wide image, an equal component nearer in pixels wins, whichever axis it is off along."""
    mask = np.zeros((61, 161), bool)
    mask[28:33, 108:113] = True  # 30 pixels right of the centre (80, 30)
    mask[50:55, 78:83] = True  # 22 pixels below it: nearer, though nearer the border of its axis
    assert central_component(mask)[50:55, 78:83].all() and central_component(mask).sum() == 25


def test_central_fill_keeps_the_central_component_and_fills_it():
    mask = faint_lesion_and_a_dark_corner()
    mask[29:31, 39:41] = False  # a hole in the lesion
    out = postprocess_mask(mask, "central_fill")
    assert out.sum() == 144 and out[24:36, 34:46].all()
    assert postprocess_mask(mask, "central").sum() == 140


def test_fill_holes_closes_the_lesion_but_not_the_background_touching_the_border():
    out = fill_holes(lesion_with_speckles_and_a_hole())
    assert out[18:22, 18:22].all()
    assert not out[0, :].any() and out.sum() == 20 * 20 + 6 + 1
    ring = np.zeros((20, 20), bool)
    ring[:, :3] = ring[:, -3:] = True  # two bands touching the border enclose nothing
    assert np.array_equal(fill_holes(ring), ring)


def test_largest_fill_is_both_and_none_is_identity():
    mask = lesion_with_speckles_and_a_hole()
    out = postprocess_mask(mask, "largest_fill")
    expected = np.zeros_like(mask)
    expected[10:30, 10:30] = True
    assert np.array_equal(out, expected)
    assert np.array_equal(postprocess_mask(mask, "none"), mask)
    assert not postprocess_mask(np.zeros((5, 5), bool), "largest_fill").any()
    with pytest.raises(ValueError, match="unknown postprocess"):
        postprocess_mask(mask, "biggest")


def test_scoring_uses_the_post_processed_mask():
    truth = np.zeros((40, 50), bool)
    truth[10:30, 10:30] = True
    prob = lesion_with_speckles_and_a_hole().astype(np.float32)
    tp, fp, fn, tn = score_image(prob, truth)
    assert fp == 7 and fn == 16
    assert score_image(prob, truth, postprocess="largest_fill").tolist() == [400, 0, 0, 40 * 50 - 400]


def test_degenerate_masks_are_flagged():
    frame = np.ones((30, 40), bool)
    assert is_degenerate(frame)
    most = np.zeros((30, 40), bool)
    most[:, 2:] = True  # 95% of the frame
    assert is_degenerate(most)
    cross = np.zeros((30, 40), bool)
    cross[15, :] = cross[:, 20] = True  # thin, but touches every border
    assert is_degenerate(cross)
    centred = np.zeros((30, 40), bool)
    centred[5:25, 5:35] = True
    assert not is_degenerate(centred)
    touching_two = np.zeros((30, 40), bool)
    touching_two[:20, :30] = True  # a big lesion cut by two borders is a real lesion
    assert not is_degenerate(touching_two)
    assert not is_degenerate(np.zeros((30, 40), bool))
