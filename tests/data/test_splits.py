from lesion.data.sources import Record
from lesion.data.splits import make_split, read_manifest, select, unlabelled_pool, write_manifest


def records(n, split=None, masks=True, prefix="IMG"):
    return [Record(f"{prefix}_{i:03d}", f"/d/{prefix}_{i:03d}.jpg", f"/d/{prefix}_{i:03d}_m.png" if masks else None,
                   split, "folder") for i in range(n)]


def test_seeded_split_is_deterministic_and_disjoint():
    rows = make_split(records(50), val_fraction=0.2, test_fraction=0.1, seed=3)
    assert rows == make_split(records(50), val_fraction=0.2, test_fraction=0.1, seed=3)
    assert rows != make_split(records(50), val_fraction=0.2, test_fraction=0.1, seed=4)
    sizes = {s: len(select(rows, s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 35, "val": 10, "test": 5}
    assert len({r.id for r in rows}) == 50


def test_official_splits_are_kept():
    recs = records(10, "train") + records(4, "val", prefix="V")
    rows = make_split(recs, val_fraction=0.5)
    assert len(select(rows, "train")) == 10 and len(select(rows, "val")) == 4


def test_official_folders_without_ground_truth_do_not_count_as_splits():
    # ISIC 2018 as often downloaded: training pairs, validation and test inputs without their ground truth.
    recs = (records(20, "train") + records(4, "val", masks=False, prefix="V")
            + records(3, "test", masks=False, prefix="T"))
    rows = make_split(recs, val_fraction=0.25, seed=0)
    assert len(select(rows, "val", labelled=True)) == 5, "validation carved from the training pairs"
    assert [r.id for r in select(rows, "val", labelled=False)] == [f"V_{i:03d}" for i in range(4)]
    assert len(select(rows, "train", labelled=True)) == 15
    assert not any(r.id.startswith(("V_", "T_")) for r in unlabelled_pool(rows)), "never trained on, even unlabelled"


def test_label_fraction_keeps_masks_for_a_seeded_subset():
    rows = make_split(records(40, "train") + records(5, "val", prefix="V"), label_fraction=0.1, seed=0)
    labelled = select(rows, "train", labelled=True)
    assert len(labelled) == 4
    assert len(unlabelled_pool(rows)) == 36
    assert all(r.labelled for r in select(rows, "val"))
    again = make_split(records(40, "train") + records(5, "val", prefix="V"), label_fraction=0.1, seed=0)
    assert select(again, "train", labelled=True) == labelled


def test_labels_count_overrides_fraction_and_unlabeled_pool_joins():
    pool = records(7, masks=False, prefix="U")
    rows = make_split(records(20, "train") + records(3, "val", prefix="V"), labels=5, label_fraction=0.9,
                      unlabeled=pool)
    assert len(select(rows, "train", labelled=True)) == 5
    assert len(select(rows, "unlabeled")) == 7
    assert len(unlabelled_pool(rows)) == 15 + 7


def test_manifest_round_trip(tmp_path):
    rows = make_split(records(12), val_fraction=0.25, label_fraction=0.5)
    path = write_manifest(rows, tmp_path / "m" / "manifest.csv")
    assert read_manifest(path) == rows
    assert path.read_text().splitlines()[0] == "id,image,mask,split,labelled,source"
