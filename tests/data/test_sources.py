import pytest

from lesion.data.sources import discover, discover_unlabeled
from lesion.errors import DataError
from tests.data.fakes import blob, folder_tree, isic_tree, ph2_tree, save


@pytest.mark.parametrize("year, splits", [("isic2016", {"train", "test"}), ("isic2017", {"train", "val", "test"}),
                                          ("isic2018", {"train", "val", "test"})])
def test_isic_layouts_are_detected_and_paired(tmp_path, year, splits):
    found = discover(str(isic_tree(tmp_path, year)), tmp_path / "cache")
    assert found.format == year
    assert {r.split for r in found.records} == splits
    assert len(found.records) == 3 * len(splits)
    assert all(r.mask and "_superpixels" not in r.image for r in found.records)
    if year == "isic2016":
        assert all(r.mask.endswith("_Segmentation.png") for r in found.records)


def test_any_subset_of_folders_and_missing_truth_folder(tmp_path):
    isic_tree(tmp_path, "isic2018", with_truth=False)
    found = discover(f"isic:{tmp_path}", tmp_path / "cache")
    assert all(r.mask is None for r in found.records)


def test_missing_mask_is_an_error_or_a_counted_skip(tmp_path):
    isic_tree(tmp_path, "isic2017")
    (tmp_path / "ISIC-2017_Training_Part1_GroundTruth" / "ISIC_0000001_segmentation.png").unlink()
    with pytest.raises(DataError) as err:
        discover(str(tmp_path), tmp_path / "cache")
    assert "ISIC_0000001.jpg: no mask ISIC_0000001_segmentation.png" in str(err.value)
    found = discover(str(tmp_path), tmp_path / "cache", skip_bad=True)
    assert len(found.skipped) == 1 and len(found.records) == 8


def test_ph2_layout(tmp_path):
    found = discover(str(ph2_tree(tmp_path)), tmp_path / "cache")
    assert found.format == "ph2" and [r.id for r in found.records] == ["IMD002", "IMD003", "IMD004"]
    assert all(r.mask.endswith("_lesion.bmp") for r in found.records)
    assert discover(str(tmp_path / "PH2 Dataset images"), tmp_path / "cache").format == "ph2"


@pytest.mark.parametrize("suffix", ["", "_mask", "_segmentation"])
def test_generic_folder_pairs_mask_suffixes(tmp_path, suffix):
    found = discover(str(folder_tree(tmp_path, suffix=suffix)), tmp_path / "cache")
    assert found.format == "folder" and len(found.records) == 4 and all(r.mask for r in found.records)


def test_duplicate_ids_are_reported(tmp_path):
    folder_tree(tmp_path)
    save(blob()[0], tmp_path / "images" / "case1.jpg")
    with pytest.raises(DataError, match="duplicate id case1"):
        discover(str(tmp_path), tmp_path / "cache")


def test_wrong_path_and_empty_folder_say_what_was_looked_for(tmp_path):
    with pytest.raises(DataError, match="no such folder.*ISIC 2016/2017/2018"):
        discover(str(tmp_path / "nope"), tmp_path / "cache")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no data found; looked for .*PH2.*found nothing"):
        discover(str(tmp_path / "empty"), tmp_path / "cache")
    with pytest.raises(DataError, match="format 'isik' is unknown"):
        discover("isik:/data", tmp_path / "cache")


def test_unlabeled_folders(tmp_path):
    for i in range(3):
        save(blob(seed=i)[0], tmp_path / "pool" / "sub" / f"u{i}.jpg")
    save(blob()[1], tmp_path / "pool" / "masks" / "u0_segmentation.png")  # not an unlabelled image
    found = discover_unlabeled(str(tmp_path / "pool"))
    assert [r.id for r in found.records] == ["u0", "u1", "u2"] and all(r.mask is None for r in found.records)
    with pytest.raises(DataError, match="unlabeled folder not found"):
        discover_unlabeled(str(tmp_path / "missing"))


def test_synthetic_source(tmp_path):
    found = discover("synthetic:n=5,size=64", tmp_path / "cache")
    assert found.format == "synthetic" and len(found.records) == 5 and all(r.mask for r in found.records)
