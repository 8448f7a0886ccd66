import numpy as np
import pytest

from lesion.data.synthetic import COMPLETE, generate_one, materialize, parse_spec, SyntheticSpec
from lesion.errors import DataError


def test_deterministic_from_seed_and_index():
    a, b = generate_one(3, 64, 0), generate_one(3, 64, 0)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], generate_one(3, 64, 1)[0])


def test_shapes_masks_and_realism():
    darker, corners = 0, []
    for i in range(30):
        image, mask = generate_one(i, 96, 0)
        h, w = mask.shape
        assert image.shape == (h, w, 3) and h == 96 and 96 <= w <= 144 and image.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 1}
        assert 0.02 < mask.mean() < 0.6
        grey = image.mean(2)
        darker += grey[mask == 1].mean() < grey[mask == 0].mean()
        assert grey[mask == 0].std() > 3, "skin should have texture"
        corners.append(grey[:8, :8].mean() < grey[h // 2 - 8: h // 2 + 8, :16].mean())
    assert darker >= 28
    assert np.mean(corners) > 0.6, "the dermoscope's vignette darkens most corners"


@pytest.mark.parametrize("options, expected", [("", SyntheticSpec()), ("n=5", SyntheticSpec(n=5)),
                                               ("seed=2,size=96,n=7", SyntheticSpec(7, 96, 2))])
def test_parse_spec(options, expected):
    assert parse_spec(options) == expected


@pytest.mark.parametrize("options, fragment", [("sz=3", "'sz=3' is unknown"), ("n=x", "needs an integer"),
                                               ("n=0", "need n >= 1")])
def test_parse_spec_errors(options, fragment):
    with pytest.raises(DataError, match=fragment) as err:
        parse_spec(options)
    assert "\n" not in str(err.value)


def test_materialize_once_and_complete(tmp_path):
    from PIL import Image

    folder = materialize(tmp_path, SyntheticSpec(n=4, size=64))
    images = sorted((folder / "images").iterdir())
    masks = sorted((folder / "masks").iterdir())
    assert [p.name for p in images] == [f"SYN_{i:05d}.png" for i in range(4)]
    assert [p.name for p in masks] == [f"SYN_{i:05d}_segmentation.png" for i in range(4)]
    assert set(np.unique(np.asarray(Image.open(masks[0])))) <= {0, 255}
    stamp = images[0].stat().st_mtime_ns
    assert materialize(tmp_path, SyntheticSpec(n=4, size=64)) == folder
    assert images[0].stat().st_mtime_ns == stamp
    (folder / COMPLETE).unlink()  # an interrupted write is redone
    materialize(tmp_path, SyntheticSpec(n=4, size=64))
    assert (folder / COMPLETE).is_file()
