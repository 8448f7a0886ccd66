import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lesion.data.inspect import inspect_data
from lesion.errors import DataError

SAMPLE = Path(__file__).resolve().parents[3] / "shared" / "data" / "isic2017-sample"
TRAIN, TRAIN_TRUTH = "ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"
VAL, VAL_TRUTH = "ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Validation_GroundTruth"
TEST = "ISIC2018_Task1-2_Test_Input"
LIMIT = 10_000  # tiny, so that a 200x200 header is a "decompression bomb"


def rgb(h: int = 16, w: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(40, 220, (h, w, 3), dtype=np.uint8)


def disc(h: int = 16, w: int = 24) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return ((((yy - h / 2) / (h / 3)) ** 2 + ((xx - w / 2) / (w / 3)) ** 2) < 1).astype(np.uint8) * 255


def save(image: Image.Image | np.ndarray, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(path, **kwargs)
    return path


def png_header_only(path: Path, w: int, h: int) -> Path:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IEND", b""))
    return path


def isic2018_with_problems(root: Path) -> dict[str, Path]:
    """An ISIC 2018 tree where most files have something to report; the paths the report must name."""
    def pair(folder: str, truth: str, image_id: str, image=None, suffix: str = ".jpg", **kwargs) -> Path:
        save(rgb() if image is None else image, root / folder / f"{image_id}{suffix}", **kwargs)
        return save(disc(), root / truth / f"{image_id}_segmentation.png")

    pair(TRAIN, TRAIN_TRUTH, "ISIC_0000000")
    save(rgb(), root / TRAIN / "ISIC_0000000_superpixels.png")
    (root / TRAIN / "ISIC2018_Task1-2_Training_metadata.csv").write_text("image,age\n")
    buf = io.BytesIO()
    Image.fromarray(rgb()).save(buf, format="JPEG")
    pair(TRAIN, TRAIN_TRUTH, "ISIC_0000001")
    (root / TRAIN / "ISIC_0000001.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    pair(TRAIN, TRAIN_TRUTH, "ISIC_0000002")
    save(disc(12, 20), root / TRAIN_TRUTH / "ISIC_0000002_segmentation.png")
    save(rgb(), root / TRAIN / "ISIC_0000003.jpg")
    save(disc(), root / TRAIN_TRUTH / "ISIC_0000003_segmentation.jpg", quality=50)
    save(rgb(), root / TRAIN / "ISIC_0000004.jpg")  # no mask
    pair(TRAIN, TRAIN_TRUTH, "ISIC_0000005")
    save(np.zeros((16, 24), np.uint8), root / TRAIN_TRUTH / "ISIC_0000005_segmentation.png")
    save(disc(), root / TRAIN_TRUTH / "ISIC_0000006_segmentation.png")
    png_header_only(root / TRAIN / "ISIC_0000006.png", 200, 200)

    pair(VAL, VAL_TRUTH, "ISIC_0000100", Image.fromarray(rgb()).convert("CMYK"))
    pair(VAL, VAL_TRUTH, "ISIC_0000101", Image.fromarray(rgb()).convert("RGBA"), ".png")
    pair(VAL, VAL_TRUTH, "ISIC_0000102", Image.fromarray(rgb()).convert("P"), ".png")
    pair(VAL, VAL_TRUTH, "ISIC_0000103", Image.fromarray(rgb()[..., 0].astype(np.uint16) * 257), ".png")
    exif = Image.Exif()
    exif[0x0112] = 6
    save(rgb(24, 16), root / VAL / "ISIC_0000104.jpg", exif=exif)  # stored 24x16 (WxH), shown 16x24
    save(disc(), root / VAL_TRUTH / "ISIC_0000104_segmentation.png")
    save(rgb(), root / TEST / "ISIC_0000200.jpg")
    return {"truncated": root / TRAIN / "ISIC_0000001.jpg",
            "mismatch": root / TRAIN_TRUTH / "ISIC_0000002_segmentation.png",
            "jpeg_mask": root / TRAIN_TRUTH / "ISIC_0000003_segmentation.jpg",
            "no_mask": root / TRAIN / "ISIC_0000004.jpg",
            "empty": root / TRAIN_TRUTH / "ISIC_0000005_segmentation.png",
            "bomb": root / TRAIN / "ISIC_0000006.png"}


def test_report_counts_sizes_and_every_problem(tmp_path):
    paths = isic2018_with_problems(tmp_path / "isic")
    for i in range(2):
        save(rgb(seed=i), tmp_path / "pool" / f"extra{i}.jpg")
    save(rgb(), tmp_path / "pool" / "ISIC_0000100.jpg")  # also a validation image
    report = inspect_data(str(tmp_path / "isic"), unlabeled=str(tmp_path / "pool"), cache_dir=tmp_path / "cache",
                          max_pixels=LIMIT)
    assert report.layout == "isic2018" and not report.ok
    assert dict(report.counts) == {("train", "labelled"): 3, ("val", "labelled"): 5, ("test", "unlabelled"): 1,
                                   ("pool", "unlabelled"): 3}
    assert report.sizes == {(16, 24): 12} and report.images == 15 and report.masks == 11
    assert sorted(report.areas)[0] == 0.0 and len(report.areas) == 8

    assert len(report.bad) == 4
    (truncated,) = [b for b in report.bad if b.startswith(str(paths["truncated"]))]
    assert "image is truncated or corrupt" in truncated
    assert any(b.startswith(f"{paths['mismatch']}: mask is 20x12 but its image ISIC_0000002.jpg is 24x16")
               for b in report.bad)
    assert any(b.startswith(f"{paths['no_mask']} has no mask ISIC_0000004_segmentation.png in ") for b in report.bad)
    assert any(b.startswith(f"{paths['bomb']}: image is 200x200 = 40,000 pixels, above max_pixels=10,000")
               for b in report.bad)
    assert report.errors == [f"{tmp_path / 'pool' / 'ISIC_0000100.jpg'}: id ISIC_0000100 is also in the data "
                             f"({tmp_path / 'isic' / VAL / 'ISIC_0000100.jpg'}); remove it from the unlabeled pool"]
    assert report.warnings == [
        f"{paths['empty']}: mask is empty (no lesion); check it, or it trains as a lesion-free image",
        "1 mask(s) were not binary (JPEG?) and were thresholded at 128 (> 128 is lesion): "
        "ISIC_0000003_segmentation.jpg"]
    assert "4 image(s) converted to RGB: 1 16-bit, 1 CMYK, 1 RGBA, 1 palette" in report.notes
    assert "1 file(s) carry an EXIF orientation, applied when reading: ISIC_0000104.jpg" in report.notes

    text = report.format()
    for line in report.bad + report.errors:
        assert f"  ERROR   {line}" in text.splitlines()
    assert "verdict: NOT usable: 1 error(s) to fix" in text
    assert "image size (HxW): 16x24 .. 16x24" in text and "1 distinct size(s)" in text
    for group, row in (("train", "3 0"), ("val", "5 0"), ("test", "0 1"), ("unlabeled pool", "0 3"), ("total", "8 4")):
        assert any(line.startswith(group) and " ".join(line[len(group):].split()) == row for line in text.splitlines())


def test_skip_bad_lists_skips_and_stays_usable(tmp_path):
    isic2018_with_problems(tmp_path)
    strict = inspect_data(str(tmp_path), cache_dir=tmp_path / "cache", max_pixels=LIMIT)
    assert not strict.ok and "pass --skip_bad" in strict.format()
    lenient = inspect_data(str(tmp_path), cache_dir=tmp_path / "cache", max_pixels=LIMIT, skip_bad=True)
    text = lenient.format()
    assert lenient.ok and sum(line.startswith("  SKIPPED ") for line in text.splitlines()) == 4
    assert text.endswith("verdict: usable: 9 image(s); 4 bad file(s) or pair(s) will be skipped")


def test_nothing_usable_is_not_ok_even_with_skip_bad(tmp_path):
    png_header_only(tmp_path / "images" / "a.png", 200, 200)
    report = inspect_data(f"folder:{tmp_path}", cache_dir=tmp_path / "cache", max_pixels=LIMIT, skip_bad=True)
    assert not report.ok and report.format().endswith("verdict: NOT usable: no usable image left")


def test_unsplit_source_and_lesion_area_distribution(tmp_path):
    for i, fraction in enumerate((0.05, 0.25, 0.5, 1.0)):
        save(rgb(20, 20 + i, seed=i), tmp_path / "images" / f"case{i}.png")
        mask = np.zeros((20, 20 + i), np.uint8)
        mask[: int(round(20 * fraction))] = 255
        save(mask, tmp_path / "masks" / f"case{i}_mask.png")
    report = inspect_data(str(tmp_path), cache_dir=tmp_path / "cache")
    assert report.ok and report.counts == {(None, "labelled"): 4}
    assert report.areas == [0.05, 0.25, 0.5, 1.0]
    text = report.format()
    assert "lesion area (fraction of the image, 4 masks): min 0.050" in text and "max 1.000" in text
    assert "  0.0-0.1 |" in text and "image size (HxW): 20x20 .. 20x23" in text and "4 distinct size(s)" in text
    assert any("case3_mask.png: mask covers the whole image (inverted?)" in w for w in report.warnings)
    assert "folder data has no official split" in report.notes[0]


def test_discovery_failures_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        inspect_data(str(tmp_path / "nope"), cache_dir=tmp_path / "cache")


def test_real_isic2017_sample():
    if not SAMPLE.is_dir():
        pytest.skip(f"{SAMPLE} is not there")
    report = inspect_data(str(SAMPLE))
    assert report.ok and report.layout == "isic2017" and not report.bad and not report.errors
    assert dict(report.counts) == {("train", "labelled"): 456, ("val", "labelled"): 98}


def test_cli_skip_bad_takes_a_flag_or_a_value_like_the_entry_points(tmp_path, capsys):
    from lesion.cli import main

    for flag in (["--skip_bad"], ["--skip_bad", "true"], ["--skip_bad", "false"]):
        assert main(["data", "inspect", "synthetic:n=6,size=64", "--cache_dir", str(tmp_path), *flag]) == 0
    assert main(["data", "inspect", "synthetic:n=6,size=64", "--cache_dir", str(tmp_path), "--skip_bad", "maybe"]) == 2
    assert "skip_bad='maybe' is not a valid bool" in capsys.readouterr().err
