import numpy as np
import pytest
from PIL import Image

from lesion.data.io import load_pair, read_image, read_mask, read_size
from lesion.errors import DataError
from tests.data.fakes import blob, save, truncated_jpeg

LIMIT = 10_000_000


def one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_truncated_jpeg_is_refused_with_the_file_named(tmp_path):
    path = truncated_jpeg(tmp_path / "ISIC_0000001.jpg")
    with pytest.raises(DataError) as err:
        read_image(path, LIMIT)
    assert str(path) in one_line(err) and "truncated" in str(err.value) and "skip_bad" in str(err.value)


def test_not_an_image(tmp_path):
    path = tmp_path / "x.jpg"
    path.write_text("hello")
    with pytest.raises(DataError, match="cannot read image"):
        read_image(path, LIMIT)


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    path = save(np.zeros((100, 100, 3), np.uint8), tmp_path / "big.png")
    with pytest.raises(DataError) as err:
        read_image(path, max_pixels=5000)
    assert "max_pixels=5000" in one_line(err) and "100x100" in str(err.value)


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "I;16"])
def test_modes_are_converted_to_rgb(tmp_path, mode):
    image, _ = blob()
    img = Image.fromarray(image)
    if mode == "I;16":
        img = Image.fromarray(image[..., 0].astype(np.uint16) * 257)
        assert img.mode.startswith("I;16")
    else:
        img = img.convert(mode)
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    img.save(path)
    out = read_image(path, LIMIT)
    assert out.shape == (24, 32, 3) and out.dtype == np.uint8
    if mode == "I;16":  # scaled, not clipped
        assert abs(int(out[..., 0].max()) - int(image[..., 0].max())) <= 1


def test_exif_orientation_is_applied(tmp_path):
    image, _ = blob(20, 40)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90
    path = tmp_path / "rot.jpg"
    Image.fromarray(image).save(path, exif=exif)
    assert read_image(path, LIMIT).shape[:2] == (40, 20)
    assert read_size(path, LIMIT) == (40, 20)


def test_jpeg_mask_is_thresholded_and_counted(tmp_path):
    yy, xx = np.mgrid[0:64, 0:64]
    mask = (((yy - 30) ** 2 + (xx - 33) ** 2) < 300).astype(np.uint8) * 255  # curved edges: JPEG rings
    path = save(mask, tmp_path / "m.jpg", quality=60)
    binary, nonbinary = read_mask(path, LIMIT)
    assert binary.dtype == bool and nonbinary > 0
    assert abs(binary.mean() - (mask > 0).mean()) < 0.02


def test_mask_size_mismatch_names_both_files(tmp_path):
    image, _ = blob(24, 32)
    _, mask = blob(12, 16)
    ip, mp = save(image, tmp_path / "a.png"), save(mask, tmp_path / "a_segmentation.png")
    with pytest.raises(DataError) as err:
        load_pair(ip, mp, LIMIT)
    assert str(mp) in one_line(err) and "a.png" in str(err.value) and "16x12" in str(err.value)
