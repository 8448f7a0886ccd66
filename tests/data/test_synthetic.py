"""The synthetic dermoscopy generator: determinism, shapes, exact masks, realism checks, options, files."""

import os

import cv2
import numpy as np
import pytest
from PIL import Image

from lesion.data.synthetic import COMPLETE, SyntheticSpec, generate_one, materialize, parse_spec
from lesion.errors import DataError

SAMPLES = [generate_one(i, 96, 0) for i in range(30)]


def test_deterministic_from_seed_and_index_alone():
    image, mask = generate_one(3, 64, 0)
    generate_one(4, 64, 0)  # call order does not matter
    again_image, again_mask = generate_one(3, 64, 0)
    assert image.tobytes() == again_image.tobytes() and mask.tobytes() == again_mask.tobytes()
    assert not np.array_equal(image, generate_one(3, 64, 1)[0])
    assert not np.array_equal(image, generate_one(4, 64, 0)[0])


@pytest.mark.parametrize("size", [64, 65, 96, 128])
def test_shapes_and_dtypes(size):
    widths = set()
    for i in range(6):
        image, mask = generate_one(i, size, 0)
        h, w = mask.shape
        assert image.shape == (h, w, 3) and image.dtype == np.uint8 and mask.dtype == np.uint8
        assert h == size and size <= w <= 1.5 * size and w % 2 == 0
        widths.add(w)
    assert len(widths) > 1, "widths vary: images are not all the same shape"


def test_masks_are_exact_binary_lesions_inside_the_image():
    for image, mask in SAMPLES:
        assert set(np.unique(mask)) == {0, 1}
        assert 0.02 < mask.mean() < 0.6
        touches = [mask[0].any(), mask[-1].any(), mask[:, 0].any(), mask[:, -1].any()]
        assert not all(touches), "the lesion never fills the whole frame"
        count, _ = cv2.connectedComponents(mask)
        assert count == 2, "one connected lesion"


def test_lesions_are_darker_than_the_skin_around_them():
    ring_darker = all_darker = 0
    for image, mask in SAMPLES:
        grey = image.mean(2)
        ring = cv2.dilate(mask, np.ones((9, 9), np.uint8)) - mask
        ring_darker += grey[mask == 1].mean() < grey[ring == 1].mean()
        all_darker += grey[mask == 1].mean() < grey[mask == 0].mean()
    assert ring_darker == len(SAMPLES)
    assert all_darker >= len(SAMPLES) - 2


def test_skin_has_texture_and_the_field_of_view_darkens_corners():
    corners, centres, textured = [], [], 0
    for image, mask in SAMPLES:
        grey = image.mean(2)
        h, w = grey.shape
        centre = grey[h // 2 - 16: h // 2 + 16, w // 2 - 16: w // 2 + 16]
        # Texture: local detail in skin away from the lesion, not just the global illumination gradient.
        skin = cv2.erode((mask == 0).astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
        detail = grey - cv2.GaussianBlur(grey, (0, 0), 3)
        textured += detail[skin & (grey > 60)].std() > 1.0
        corners.append(np.mean([grey[:6, :6], grey[:6, -6:], grey[-6:, :6], grey[-6:, -6:]]))
        centres.append(centre.mean())
    assert textured == len(SAMPLES)
    assert np.mean(corners) < 0.6 * np.mean(centres)
    assert np.mean(np.array(corners) < np.array(centres)) > 0.7
    assert sum(c < 40 for c in corners) < len(SAMPLES), "some images have no dark vignette"


def test_images_vary_in_skin_tone_and_lesion_size():
    skin = [image[mask == 0].mean() for image, mask in SAMPLES]
    areas = [mask.mean() for _, mask in SAMPLES]
    assert max(skin) - min(skin) > 30 and max(areas) > 3 * min(areas)


@pytest.mark.parametrize("options, expected", [
    ("", SyntheticSpec()),
    ("n=5", SyntheticSpec(n=5)),
    ("size=96", SyntheticSpec(size=96)),
    ("seed=2,size=96,n=7", SyntheticSpec(7, 96, 2)),
    (" n = 3 , seed=-1 ", SyntheticSpec(n=3, seed=-1)),
])
def test_parse_spec(options, expected):
    assert parse_spec(options) == expected


def test_parse_spec_defaults():
    # Small enough that `make demo` (selftrain: teacher, student, student*) ends in minutes on 2 CPU cores.
    assert SyntheticSpec() == SyntheticSpec(n=200, size=128, seed=0)


@pytest.mark.parametrize("options, fragment", [
    ("sz=3", "'sz=3' is unknown"),
    ("n", "'n' is unknown"),
    ("n=x", "'n=x' needs an integer"),
    ("size=1.5", "'size=1.5' needs an integer"),
    ("n=0", "'n=0' is too small"),
    ("size=32", "'size=32' is too small"),
    ("n=3,n=4", "'n=4' is given twice"),
])
def test_parse_spec_errors_name_the_option_on_one_line(options, fragment):
    with pytest.raises(DataError, match=fragment) as err:
        parse_spec(options)
    message = str(err.value)
    assert "\n" not in message and "synthetic:n=" in message


def _files(folder):
    return sorted(p.name for p in (folder / "images").iterdir()), sorted(p.name for p in (folder / "masks").iterdir())


def test_materialize_writes_once(tmp_path):
    spec = SyntheticSpec(n=4, size=64, seed=3)
    folder = materialize(tmp_path, spec)
    assert folder == tmp_path / "synthetic-n4-size64-seed3" and (folder / COMPLETE).is_file()
    images, masks = _files(folder)
    assert images == [f"SYN_{i:05d}.png" for i in range(4)]
    assert masks == [f"SYN_{i:05d}_segmentation.png" for i in range(4)]
    for i in range(4):
        png = Image.open(folder / "masks" / masks[i])
        assert png.mode == "L" and set(np.unique(np.asarray(png))) == {0, 255}
        image, mask = generate_one(i, 64, 3)
        assert np.array_equal(np.asarray(Image.open(folder / "images" / images[i])), image)
        assert np.array_equal(np.asarray(png) // 255, mask)
    stamps = [p.stat().st_mtime_ns for p in folder.rglob("*")]
    assert materialize(str(tmp_path), spec) == folder
    assert [p.stat().st_mtime_ns for p in folder.rglob("*")] == stamps
    assert [p.name for p in tmp_path.iterdir()] == [folder.name], "no temporary folders are left behind"


def test_materialize_redoes_an_incomplete_folder(tmp_path):
    spec = SyntheticSpec(n=3, size=64)
    folder = materialize(tmp_path, spec)
    (folder / COMPLETE).unlink()  # as if a write had been interrupted
    (folder / "masks" / "SYN_00002_segmentation.png").unlink()
    os.utime(folder / "images" / "SYN_00000.png", ns=(0, 0))
    assert materialize(tmp_path, spec) == folder
    assert (folder / COMPLETE).is_file() and len(_files(folder)[1]) == 3
    assert (folder / "images" / "SYN_00000.png").stat().st_mtime_ns > 0


def test_materialize_uses_the_folder_of_a_process_that_won_the_race(tmp_path, monkeypatch):
    spec = SyntheticSpec(n=2, size=64)
    winner = materialize(tmp_path / "other", spec)
    target = tmp_path / winner.name
    real_rename = os.rename

    def lose_the_race(src, dst):  # the other process renames its complete folder in first
        real_rename(winner, target)
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", lose_the_race)
    assert materialize(tmp_path, spec) == target
    assert (target / COMPLETE).is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["other", winner.name]


def test_materialize_leaves_nothing_complete_looking_after_a_crash(tmp_path, monkeypatch):
    import lesion.data.synthetic as synthetic

    def crash(index, size, seed):
        if index == 2:
            raise KeyboardInterrupt
        return generate_one(index, size, seed)

    monkeypatch.setattr(synthetic, "generate_one", crash)
    with pytest.raises(KeyboardInterrupt):
        materialize(tmp_path, SyntheticSpec(n=4, size=64))
    assert list(tmp_path.iterdir()) == []
