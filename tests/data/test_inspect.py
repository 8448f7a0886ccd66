import subprocess
import sys

from lesion.data.inspect import inspect_data
from tests.conftest import REPO
from tests.data.fakes import blob, isic_tree, save, truncated_jpeg

SAMPLE = REPO.parent / "shared" / "data" / "isic2017-sample"


def test_report_counts_and_problems(tmp_path):
    isic_tree(tmp_path, "isic2017")
    truncated_jpeg(tmp_path / "ISIC-2017_Training_Data" / "ISIC_0000009.jpg")
    save(blob()[1], tmp_path / "ISIC-2017_Training_Part1_GroundTruth" / "ISIC_0000009_segmentation.png")
    save(blob(12, 16)[1], tmp_path / "ISIC-2017_Validation_Part1_GroundTruth" / "ISIC_0000100_segmentation.png")
    save(blob()[1], tmp_path / "ISIC-2017_Test_v2_Part1_GroundTruth" / "ISIC_0000200_segmentation.jpg", quality=50)
    report = inspect_data(str(tmp_path), cache_dir=tmp_path / "cache")
    assert not report.ok
    text = report.format()
    assert "ISIC_0000009.jpg: image is truncated" in text
    assert "ISIC_0000100_segmentation.png: mask is 16x12" in text
    assert "verdict: NOT usable" in text
    assert report.counts[("train", "labelled")] == 3 and report.counts[("val", "labelled")] == 2
    assert inspect_data(str(tmp_path), cache_dir=tmp_path / "cache", skip_bad=True).ok


def test_cli_exit_codes(tmp_path):
    isic_tree(tmp_path / "good", "isic2018")
    ok = subprocess.run([sys.executable, "-m", "lesion.cli", "data", "inspect", str(tmp_path / "good"),
                         "--cache_dir", str(tmp_path / "c")], capture_output=True, text=True)
    assert ok.returncode == 0 and "format: isic2018" in ok.stdout
    missing = subprocess.run([sys.executable, "-m", "lesion.cli", "data", "inspect", str(tmp_path / "nope")],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.strip().count("\n") == 0 and "no such folder" in missing.stderr


def test_real_isic2017_sample_counts():
    if not SAMPLE.is_dir():
        import pytest

        pytest.skip("the shared ISIC 2017 sample is not beside this checkout")
    report = inspect_data(str(SAMPLE))
    assert report.ok and report.counts[("train", "labelled")] == 456 and report.counts[("val", "labelled")] == 98
