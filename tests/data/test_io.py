import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lesion.data.io import load_pair, read_header, read_image, read_mask, read_size
from lesion.errors import DataError

LIMIT = 1_000_000


def rgb(h: int = 16, w: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(40, 220, (h, w, 3), dtype=np.uint8)


def square_mask(h: int = 16, w: int = 24, on: int = 255) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    mask[4:12, 6:18] = on
    return mask


def save(image: Image.Image | np.ndarray, path: Path, **kwargs) -> Path:
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(path, **kwargs)
    return path


def one_line(excinfo: pytest.ExceptionInfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


def png_header_only(path: Path, w: int, h: int) -> Path:
    """A PNG that claims w x h pixels but holds no pixel data: decoding it would fail, the header check must not."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("kept", [0.1, 0.5, 0.95])  # cut in the header, in the scans, near the end
def test_truncated_jpeg_is_refused_not_decoded_grey(tmp_path, kept):
    buf = io.BytesIO()
    Image.fromarray(rgb(32, 32)).save(buf, format="JPEG")
    path = tmp_path / "ISIC_0000001.jpg"
    path.write_bytes(buf.getvalue()[: int(len(buf.getvalue()) * kept)])
    with pytest.raises(DataError) as err:
        read_image(path, LIMIT)
    text = one_line(err)
    assert text.startswith(f"{path}: image is truncated") and "skip_bad=true" in text


def test_unreadable_and_missing_files(tmp_path):
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(DataError) as err:
        read_image(tmp_path / "notes.jpg", LIMIT)
    assert f"{tmp_path / 'notes.jpg'}: image is not a readable image" in one_line(err)
    with pytest.raises(DataError) as err:
        read_mask(tmp_path / "gone.png", LIMIT)
    assert f"{tmp_path / 'gone.png'}: mask not found" in one_line(err)
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(DataError) as err:
        read_image(tmp_path / "folder.png", LIMIT)
    assert f"{tmp_path / 'folder.png'}: cannot open image (Is a directory)" in one_line(err)


def test_decompression_bomb_is_refused_from_the_header(tmp_path):
    bomb = png_header_only(tmp_path / "bomb.png", 20_000, 20_000)
    for read in (read_image, read_size):
        with pytest.raises(DataError) as err:
            read(bomb, max_pixels=150_000_000)
        text = one_line(err)
        assert str(bomb) in text and "20000x20000" in text and "max_pixels=150,000,000" in text
    # Above PIL's own limit but within ours: our max_pixels decides, and decoding then finds no data.
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_image(bomb, max_pixels=500_000_000)


def test_modes_are_converted_to_rgb(tmp_path):
    image = rgb()
    cases = {
        "gray.png": (Image.fromarray(image).convert("L"), 0),
        "cmyk.jpg": (Image.fromarray(image).convert("CMYK"), 40),  # lossy JPEG
        "palette.png": (Image.fromarray(image).convert("P", palette=Image.Palette.ADAPTIVE), 40),
        "opaque.png": (Image.fromarray(image).convert("RGBA"), 0),
    }
    for name, (img, tolerance) in cases.items():
        out = read_image(save(img, tmp_path / name), LIMIT)
        assert out.shape == (16, 24, 3) and out.dtype == np.uint8, name
        expected = np.asarray(img.convert("RGB")) if img.mode in ("L", "P") else image
        assert np.abs(out.astype(int) - expected).mean() <= tolerance, name


def test_transparency_is_composited_on_black(tmp_path):
    rgba = np.dstack([rgb(), np.full((16, 24), 255, np.uint8)])
    rgba[:, :12, 3] = 0
    out = read_image(save(rgba, tmp_path / "cut.png"), LIMIT)
    assert (out[:, :12] == 0).all() and (out[:, 12:] == rgb()[:, 12:]).all()


def test_16bit_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], np.uint16).repeat(4, axis=0)
    img = Image.fromarray(values)
    assert img.mode.startswith("I;16")
    out = read_image(save(img, tmp_path / "deep.png"), LIMIT)
    assert out[0, :, 0].tolist() == [0, 1, 128, 255] and (out[..., 0] == out[..., 2]).all()


def test_exif_orientation_applies_to_images_masks_and_sizes(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    image = save(rgb(16, 24), tmp_path / "rot.jpg", exif=exif)
    mask = save(square_mask(16, 24), tmp_path / "rot_segmentation.png", exif=exif)
    assert read_image(image, LIMIT).shape == (24, 16, 3)
    assert read_size(image, LIMIT) == (24, 16) and read_size(mask, LIMIT) == (24, 16)
    header = read_header(image, LIMIT)
    assert header.rotated and header.mode == "RGB"
    loaded, lesion, _ = load_pair(image, mask, LIMIT)
    assert lesion.shape == loaded.shape[:2] == (24, 16)
    assert (lesion == np.rot90(square_mask(16, 24) > 0, k=-1)).all()


@pytest.mark.parametrize("name, make", [
    ("l.png", lambda m: Image.fromarray(m)),
    ("one_bit.png", lambda m: Image.fromarray(m).convert("1")),
    ("palette.png", lambda m: Image.fromarray(m).convert("P")),
    ("red.png", lambda m: Image.fromarray(np.dstack([m, 0 * m, 0 * m]))),
    ("rgba.png", lambda m: Image.fromarray(np.dstack([m, m, m, np.where(m > 0, 255, 0).astype(np.uint8)]))),
    ("white_but_transparent.png", lambda m: Image.fromarray(np.dstack([255 + 0 * m] * 3 + [m]))),
    ("deep.png", lambda m: Image.fromarray(m.astype(np.uint16) * 257)),
    ("deep_0_255.png", lambda m: Image.fromarray(m.astype(np.uint16))),
    ("labels_0_1.png", lambda m: Image.fromarray(m // 255)),
])
def test_masks_of_any_mode_become_one_binary_channel(tmp_path, name, make):
    truth = square_mask()
    lesion, nonbinary = read_mask(save(make(truth), tmp_path / name), LIMIT)
    assert lesion.dtype == bool and lesion.shape == (16, 24) and nonbinary == 0
    assert (lesion == (truth > 0)).all()


def test_jpeg_mask_is_thresholded_above_128_and_counted(tmp_path):
    yy, xx = np.mgrid[0:32, 0:32]
    truth = (((yy - 15) ** 2 + (xx - 17) ** 2) < 90).astype(np.uint8) * 255  # curved edges ring in JPEG
    lesion, nonbinary = read_mask(save(truth, tmp_path / "m.jpg", quality=60), LIMIT)
    assert nonbinary > 0 and abs(lesion.mean() - (truth > 0).mean()) < 0.03
    grey = np.array([[0, 128, 129, 255]], np.uint8).repeat(2, axis=0)  # official scorer: > 128 is lesion
    lesion, nonbinary = read_mask(save(grey, tmp_path / "grey.png"), LIMIT)
    assert lesion[0].tolist() == [False, False, True, True] and nonbinary == 4


def test_pair_sizes_must_match(tmp_path):
    image = save(rgb(16, 24), tmp_path / "ISIC_0000003.jpg")
    mask = save(square_mask(12, 20), tmp_path / "ISIC_0000003_segmentation.png")
    with pytest.raises(DataError) as err:
        load_pair(image, mask, LIMIT)
    assert one_line(err) == (f"{mask}: mask is 20x12 but its image ISIC_0000003.jpg is 24x16; re-export the mask "
                             "at the image's size or pass skip_bad=true to skip it")
    loaded, lesion, nonbinary = load_pair(image, None, LIMIT)
    assert loaded.shape == (16, 24, 3) and lesion is None and nonbinary == 0
