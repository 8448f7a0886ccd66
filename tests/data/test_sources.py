from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lesion.data.sources import ISIC_LAYOUTS, default_cache_dir, discover, discover_unlabeled
from lesion.errors import DataError

OFFICIAL_SPLITS = {"isic2016": ["train", "test"], "isic2017": ["train", "val", "test"],
                   "isic2018": ["train", "val", "test"]}


def save(path: Path, h: int = 16, w: int = 24, mask: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.zeros((h, w), np.uint8) if mask else np.full((h, w, 3), 128, np.uint8)
    if mask:
        array[4:12, 6:18] = 255
    Image.fromarray(array).save(path)
    return path


def isic_tree(root: Path, year: str, n: int = 2, truth: bool = True) -> Path:
    """The official folders with n pairs each, plus the files a real archive holds beside them."""
    suffix = "_Segmentation" if year == "isic2016" else "_segmentation"
    for k, (data_dir, truth_dir, _) in enumerate(ISIC_LAYOUTS[year]):
        for i in range(n):
            image_id = f"ISIC_{k * 100 + i:07d}"
            save(root / data_dir / f"{image_id}.jpg")
            save(root / data_dir / f"{image_id}_superpixels.png")
            if truth:
                save(root / truth_dir / f"{image_id}{suffix}.png", mask=True)
        (root / data_dir / "ISIC-2017_Training_Data_metadata.csv").write_text("image_id,age_approximate,sex\n")
        (root / data_dir / "LICENSE.txt").write_text("CC-0\n")
    return root


def ph2_tree(root: Path, cases: tuple[str, ...] = ("IMD002", "IMD003", "IMD004")) -> Path:
    images = root / "PH2 Dataset images"
    for case in cases:
        save(images / case / f"{case}_Dermoscopic_Image" / f"{case}.bmp")
        save(images / case / f"{case}_lesion" / f"{case}_lesion.bmp", mask=True)
        save(images / case / f"{case}_roi" / f"{case}_R1_Label4.bmp", mask=True)
    (root / "PH2_dataset.txt").write_text("|| Name || Histological Diagnosis ||\n")
    (root / "PH2_dataset.xlsx").write_bytes(b"PK\x03\x04")
    return root


def message(excinfo: pytest.ExceptionInfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("year, splits", OFFICIAL_SPLITS.items())
def test_isic_layouts_are_detected_paired_and_split(tmp_path, year, splits):
    found = discover(str(isic_tree(tmp_path, year)), tmp_path / "cache")
    assert found.format == year and found.root == str(tmp_path) and found.skipped == []
    assert [(r.split, r.id) for r in found.records] == [
        (split, f"ISIC_{k * 100 + i:07d}") for k, split in enumerate(splits) for i in range(2)]
    for r in found.records:  # superpixels and CSVs ignored; masks paired by id, 2016 with a capital S
        assert r.source == year and Path(r.image).is_absolute() and r.image.endswith(f"{r.id}.jpg")
        assert r.mask.endswith(f"{r.id}_{'S' if year == 'isic2016' else 's'}egmentation.png")


def test_forced_formats_and_several_years(tmp_path):
    isic_tree(tmp_path, "isic2017")
    assert discover(f"isic:{tmp_path}", tmp_path / "c").format == "isic2017"
    assert len(discover(f"isic2017:{tmp_path}", tmp_path / "c").records) == 6
    with pytest.raises(DataError) as err:
        discover(f"isic2016:{tmp_path}", tmp_path / "c")
    assert "no isic2016 data layout found; looked for ISBI2016_ISIC_Part1_Training_Data" in message(err)
    isic_tree(tmp_path, "isic2016")  # the same ids as the 2017 tree
    with pytest.raises(DataError) as err:
        discover(str(tmp_path), tmp_path / "c")
    assert message(err) == (f"{tmp_path / 'ISIC-2017_Training_Data' / 'ISIC_0000000.jpg'}: duplicate id ISIC_0000000, "
                            f"also {tmp_path / 'ISBI2016_ISIC_Part1_Training_Data' / 'ISIC_0000000.jpg'}; "
                            "rename or remove one of the two, or pass skip_bad=true to skip it")
    found = discover(str(tmp_path), tmp_path / "c", skip_bad=True)
    assert found.format == "isic" and {r.source for r in found.records} == {"isic2016", "isic2017"}
    assert len(found.records) == 6 and len(found.skipped) == 4


def test_missing_truth_folder_gives_unlabelled_records_of_that_split(tmp_path):
    isic_tree(tmp_path, "isic2018")
    for _, truth_dir, _ in ISIC_LAYOUTS["isic2018"][1:]:
        for mask in (tmp_path / truth_dir).iterdir():
            mask.unlink()
        (tmp_path / truth_dir).rmdir()
    (tmp_path / "ISIC2018_Task1-2_Test_Input").rename(tmp_path / "elsewhere")
    found = discover(str(tmp_path), tmp_path / "cache")
    assert [(r.split, r.mask is not None) for r in found.records] == [("train", True)] * 2 + [("val", False)] * 2


def test_missing_and_orphan_masks_raise_or_are_counted(tmp_path):
    isic_tree(tmp_path, "isic2017")
    truth = tmp_path / "ISIC-2017_Training_Part1_GroundTruth"
    (truth / "ISIC_0000001_segmentation.png").unlink()
    save(truth / "ISIC_0000077_segmentation.png", mask=True)
    with pytest.raises(DataError) as err:
        discover(str(tmp_path), tmp_path / "cache")
    image = tmp_path / "ISIC-2017_Training_Data" / "ISIC_0000001.jpg"
    assert message(err) == (f"{image} has no mask ISIC_0000001_segmentation.png in {truth}; "
                            "add it or pass skip_bad=true to skip it")
    found = discover(str(tmp_path), tmp_path / "cache", skip_bad=True)
    assert len(found.records) == 5 and len(found.skipped) == 2
    assert found.skipped[1].startswith(f"{truth / 'ISIC_0000077_segmentation.png'}: mask matches no image in ")


def test_truth_without_its_images_folder(tmp_path):
    save(tmp_path / "ISIC-2017_Test_v2_Part1_GroundTruth" / "ISIC_0000300_segmentation.png", mask=True)
    with pytest.raises(DataError, match="ground truth without its images folder ISIC-2017_Test_v2_Data"):
        discover(str(tmp_path), tmp_path / "cache")


def test_ph2_from_either_root(tmp_path):
    ph2_tree(tmp_path / "PH2Dataset")
    for root in (tmp_path / "PH2Dataset", tmp_path / "PH2Dataset" / "PH2 Dataset images"):
        found = discover(str(root), tmp_path / "cache")
        assert found.format == "ph2" and [r.id for r in found.records] == ["IMD002", "IMD003", "IMD004"]
        assert all(r.mask.endswith(f"{r.id}_lesion.bmp") and r.split is None for r in found.records)
    lesion = tmp_path / "PH2Dataset" / "PH2 Dataset images" / "IMD003" / "IMD003_lesion"
    (lesion / "IMD003_lesion.bmp").unlink()
    with pytest.raises(DataError) as err:
        discover(f"ph2:{tmp_path / 'PH2Dataset'}", tmp_path / "cache")
    assert "IMD003.bmp has no mask IMD003_lesion.bmp in " + str(lesion) in message(err)


@pytest.mark.parametrize("suffix", ["", "_segmentation", "_Segmentation", "_mask", "_lesion"])
def test_folder_layout_mask_suffixes(tmp_path, suffix):
    for i in range(3):
        save(tmp_path / "images" / f"case{i}.png")
        save(tmp_path / "masks" / f"case{i}{suffix}.png", mask=True)
    found = discover(str(tmp_path), tmp_path / "cache")
    assert found.format == "folder" and [r.id for r in found.records] == ["case0", "case1", "case2"]
    assert all(r.mask.endswith(f"{r.id}{suffix}.png") and r.source == "folder" for r in found.records)


def test_folder_without_masks_and_ambiguous_masks(tmp_path):
    for i in range(2):
        save(tmp_path / "images" / f"case{i}.jpg")
    assert all(r.mask is None for r in discover(f"folder:{tmp_path}", tmp_path / "cache").records)
    save(tmp_path / "masks" / "case0.png", mask=True)
    save(tmp_path / "masks" / "case0_mask.png", mask=True)
    save(tmp_path / "masks" / "case1_mask.png", mask=True)
    with pytest.raises(DataError, match=r"case0.jpg has 2 masks in .* \(case0_mask.png, case0.png\); keep one"):
        discover(str(tmp_path), tmp_path / "cache")


def test_duplicate_ids_name_both_files(tmp_path):
    for name in ("a.png", "b.png", "b.jpg"):
        save(tmp_path / "images" / name)
    with pytest.raises(DataError) as err:
        discover(str(tmp_path), tmp_path / "cache")
    images = tmp_path / "images"
    assert message(err).startswith(f"{images / 'b.png'}: duplicate id b, also {images / 'b.jpg'}; rename or remove")
    found = discover(str(tmp_path), tmp_path / "cache", skip_bad=True)
    assert [r.id for r in found.records] == ["a", "b"] and len(found.skipped) == 1


def test_bad_paths_and_unknown_layouts_say_what_was_looked_for(tmp_path):
    with pytest.raises(DataError) as err:
        discover(str(tmp_path / "nope"), tmp_path / "cache")
    assert message(err) == f"{tmp_path / 'nope'}: no such folder; check the data path"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as err:
        discover(str(tmp_path / "empty"), tmp_path / "cache")
    assert "empty: folder is empty; looked for ISIC 2016/2017/2018 folders" in message(err)
    assert "PH2" in str(err.value) and "images/ + masks/" in str(err.value)
    save(tmp_path / "loose" / "x.jpg")
    (tmp_path / "loose" / "notes.txt").write_text("")
    with pytest.raises(DataError) as err:
        discover(str(tmp_path / "loose"), tmp_path / "cache")
    assert "no data layout found" in message(err) and "it holds notes.txt, x.jpg" in str(err.value)
    assert f"pass unlabeled:{tmp_path / 'loose'}" in str(err.value)
    with pytest.raises(DataError) as err:
        discover("isik:/data", tmp_path / "cache")
    assert "unknown data format 'isik'" in message(err) and "isic, isic2016, isic2017, isic2018, ph2" in str(err.value)
    with pytest.raises(DataError, match="is a file, not a folder"):
        discover(str(tmp_path / "loose" / "x.jpg"), tmp_path / "cache")


def test_hints_when_the_path_is_one_level_off(tmp_path):
    isic_tree(tmp_path / "isic", "isic2017", n=1)
    with pytest.raises(DataError, match=f"one level down: pass {tmp_path / 'isic'}$"):
        discover(str(tmp_path), tmp_path / "cache")
    with pytest.raises(DataError, match=f"is an ISIC folder: pass the folder that contains it, {tmp_path / 'isic'}$"):
        discover(str(tmp_path / "isic" / "ISIC-2017_Training_Data"), tmp_path / "cache")


def test_unlabeled_folders(tmp_path):
    for i in range(3):
        save(tmp_path / "pool" / "part1" / f"u{i}.jpg")
    save(tmp_path / "pool" / "u0_superpixels.png")
    save(tmp_path / "pool" / "masks" / "u9.png", mask=True)
    save(tmp_path / "pool" / "ISIC2018_Task1_Training_GroundTruth" / "u8.png", mask=True)
    save(tmp_path / "pool" / "u7_segmentation.png", mask=True)
    save(tmp_path / "pool" / "IMD002" / "IMD002_lesion" / "IMD002_lesion.bmp", mask=True)
    save(tmp_path / "more" / "unlabeled_images" / "v0.png")
    found = discover_unlabeled(f"{tmp_path / 'pool'}, {tmp_path / 'more'}")
    assert [r.id for r in found.records] == ["u0", "u1", "u2", "v0"]
    assert all(r.mask is None and r.split is None and r.source == "unlabeled" for r in found.records)
    assert discover(f"unlabeled:{tmp_path / 'pool'}", tmp_path / "cache").format == "unlabeled"
    assert discover_unlabeled("").records == []
    with pytest.raises(DataError, match="no such folder; check the unlabeled path"):
        discover_unlabeled(str(tmp_path / "missing"))
    (tmp_path / "blank").mkdir()
    with pytest.raises(DataError, match="blank: no images in this unlabeled folder"):
        discover_unlabeled(str(tmp_path / "blank"))


def test_synthetic_source_is_materialised_in_the_cache(tmp_path):
    found = discover("synthetic:n=3,size=64,seed=1", tmp_path / "cache")
    assert found.format == "synthetic" and Path(found.root).parent == tmp_path / "cache" / "synthetic"
    assert [r.id for r in found.records] == ["SYN_00000", "SYN_00001", "SYN_00002"]
    assert all(r.mask and r.split is None and r.source == "synthetic" for r in found.records)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("LESION_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("LESION_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "lesion"
