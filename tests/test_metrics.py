"""lesion.metrics: hand-computed cases, official conventions, resizing, and agreement with isic-challenge-scoring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lesion.errors import DataError
from lesion.metrics import (METRIC_NAMES, confusion, confusion_batch, per_image_scores, resize_probabilities,
                            score_folders, score_image, summarize)


def scores_of(counts) -> dict[str, float]:
    return {k: float(v[0]) for k, v in per_image_scores(counts).items()}


def test_hand_computed_metrics():
    pred = np.array([[1, 1, 0, 0]] * 2, bool)
    truth = np.array([[1, 0, 0, 0]] * 2, bool)
    assert confusion(pred, truth).tolist() == [2, 2, 0, 4]
    s = scores_of(confusion(pred, truth))
    assert list(s) == list(METRIC_NAMES)
    assert s["jaccard"] == pytest.approx(2 / 4) and s["threshold_jaccard"] == 0.0  # below 0.65
    assert s["dice"] == pytest.approx(4 / 6) and s["sensitivity"] == 1.0 and s["specificity"] == pytest.approx(4 / 6)
    assert s["accuracy"] == pytest.approx(6 / 8)
    assert s["miou2"] == pytest.approx((2 / 4 + 4 / 6) / 2)  # lesion IoU 2/4, background IoU 4/6

    s = scores_of([3, 1, 2, 10])
    assert s["jaccard"] == pytest.approx(3 / 6) and s["dice"] == pytest.approx(6 / 9)
    assert s["sensitivity"] == pytest.approx(3 / 5) and s["specificity"] == pytest.approx(10 / 11)
    assert s["accuracy"] == pytest.approx(13 / 16) and s["miou2"] == pytest.approx((3 / 6 + 10 / 13) / 2)


def test_threshold_jaccard_keeps_0_65_and_above():
    s = per_image_scores([[13, 7, 0, 80], [12, 8, 0, 80], [9, 1, 0, 90]])
    assert s["jaccard"].tolist() == pytest.approx([0.65, 0.6, 0.9])
    assert s["threshold_jaccard"].tolist() == pytest.approx([0.65, 0.0, 0.9])


@pytest.mark.parametrize("counts, expected", [
    # both empty: every ratio is 0/0 -> 1.0
    ([0, 0, 0, 16], dict(jaccard=1, threshold_jaccard=1, dice=1, sensitivity=1, specificity=1, accuracy=1, miou2=1)),
    # empty truth, false positives: sensitivity is the freebie, jaccard and dice are 0
    ([0, 4, 0, 12], dict(jaccard=0, threshold_jaccard=0, dice=0, sensitivity=1, specificity=12 / 16,
                         accuracy=12 / 16, miou2=(0 + 12 / 16) / 2)),
    # empty prediction of a real lesion
    ([0, 0, 4, 12], dict(jaccard=0, threshold_jaccard=0, dice=0, sensitivity=0, specificity=1,
                         accuracy=12 / 16, miou2=(0 + 12 / 16) / 2)),
    # all lesion, predicted perfectly: specificity and background IoU are 0/0 -> 1.0
    ([16, 0, 0, 0], dict(jaccard=1, threshold_jaccard=1, dice=1, sensitivity=1, specificity=1, accuracy=1, miou2=1)),
    # all lesion, partly missed: specificity is the freebie, background IoU is 0/4
    ([12, 0, 4, 0], dict(jaccard=12 / 16, threshold_jaccard=12 / 16, dice=24 / 28, sensitivity=12 / 16,
                         specificity=1, accuracy=12 / 16, miou2=(12 / 16 + 0) / 2)),
])
def test_empty_denominators_follow_the_official_scorer(counts, expected):
    assert scores_of(counts) == pytest.approx(expected)


def test_macro_average_is_over_images():
    summary = summarize([[10, 0, 0, 90], [0, 10, 10, 80]])
    assert list(summary) == list(METRIC_NAMES)
    assert summary["jaccard"] == pytest.approx(0.5) and summary["accuracy"] == pytest.approx((1.0 + 0.8) / 2)
    assert all(np.isnan(v) for v in summarize(np.zeros((0, 4), np.int64)).values())


def test_torch_and_numpy_inputs_agree():
    rng = np.random.default_rng(0)
    pred, truth = rng.random((9, 7)) > 0.5, rng.random((9, 7)) > 0.4
    counts = confusion(pred, truth)
    assert counts.dtype == np.int64 and counts.sum() == 63
    assert (confusion(torch.from_numpy(pred), torch.from_numpy(truth)) == counts).all()
    assert (confusion(pred[::-1], truth[::-1]) == counts).all()  # negative-stride views
    batch = np.stack([counts, [1, 2, 3, 4]])
    for k, v in per_image_scores(torch.from_numpy(batch)).items():
        assert np.array_equal(v, per_image_scores(batch)[k])
    prob = rng.random((5, 6)).astype(np.float32)
    assert (score_image(prob, truth) == score_image(torch.from_numpy(prob), torch.from_numpy(truth))).all()


def test_confusion_batch_equals_per_image_confusion():
    rng = np.random.default_rng(1)
    pred, truth = rng.random((4, 9, 7)) > 0.5, rng.random((4, 9, 7)) > 0.4
    pred[2], truth[3] = False, True  # an empty prediction, an all-lesion truth
    batch = confusion_batch(torch.from_numpy(pred), torch.from_numpy(truth))
    assert batch.dtype == torch.int64 and batch.shape == (4, 4)
    for i in range(4):
        assert batch[i].tolist() == confusion(pred[i], truth[i]).tolist()
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_batch(torch.from_numpy(pred), torch.from_numpy(truth[:, :8]))


def test_resize_probabilities_known_pattern_and_round_trip():
    ramp = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    # align_corners=False: output pixel x samples the input at (x + 0.5) / 2 - 0.5, clamped to the border
    assert resize_probabilities(ramp, (2, 4)).tolist() == [[0.0, 0.25, 0.75, 1.0]] * 2
    const = torch.full((4, 4), 0.3)
    assert resize_probabilities(resize_probabilities(const, (9, 13)), (4, 4)).allclose(const)
    batch = torch.rand(3, 1, 8, 8)
    out = resize_probabilities(batch, (32, 48))
    assert out.shape == (3, 1, 32, 48) and out[1, 0].allclose(resize_probabilities(batch[1, 0], (32, 48)))
    assert resize_probabilities(out, (32, 48)).equal(out)
    with pytest.raises(ValueError, match="probabilities"):
        resize_probabilities(torch.rand(1, 8, 8), (16, 16))


def test_score_image_resizes_a_low_res_prediction_to_the_truth_size():
    # Bands, not a block: bilinear is separable, so a block's corners would dip below 0.5.
    for axis, scale in ((0, 4), (1, 6)):
        prob = torch.zeros(8, 8)
        truth = np.zeros((32, 48), bool)
        prob.narrow(axis, 2, 4).fill_(1)
        truth[(slice(None),) * axis + (slice(2 * scale, 6 * scale),)] = True  # bilinear crosses 0.5 at its edges
        band = int(truth.sum())
        assert score_image(prob, truth).tolist() == [band, 0, 0, 32 * 48 - band]
        assert score_image(prob.numpy() > 0.5, truth).tolist() == [band, 0, 0, 32 * 48 - band]  # low-res bool
    assert score_image(prob.numpy() > 0.5, np.zeros((8, 8), bool)).tolist() == [0, 32, 0, 32]  # same size


def test_score_image_threshold_is_inclusive_and_ints_are_refused():
    prob = torch.tensor([[0.5, 0.49], [0.7, 0.2]])
    truth = np.array([[1, 1], [0, 0]], bool)
    assert score_image(prob, truth).tolist() == [1, 1, 1, 1]  # 0.5 >= 0.5 is lesion
    assert score_image(prob, truth, threshold=0.75).tolist() == [0, 0, 2, 2]
    with pytest.raises(TypeError, match="bool or float"):
        score_image(np.array([[0, 255], [0, 0]], np.uint8), truth)


# --- ISIC submission folders -------------------------------------------------------------------------------------


def blob(h: int, w: int, cy: float, cx: float, r: float, aspect: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return ((yy - cy) ** 2 + ((xx - cx) * aspect) ** 2) < r * r


def save(path: Path, mask: np.ndarray, mode: str = "L") -> None:
    image = Image.fromarray(mask.astype(np.uint8) * 255 if mask.dtype == bool else mask, mode="L")
    (image.convert("1") if mode == "1" else image).save(path)


def write_pairs(tmp_path: Path, n: int = 12) -> tuple[Path, Path]:
    """ISIC-named truth and prediction folders: random blobs of varying non-square sizes plus edge cases."""
    rng = np.random.default_rng(7)
    truth_dir, pred_dir = tmp_path / "truth", tmp_path / "pred"
    truth_dir.mkdir()
    pred_dir.mkdir()
    for i in range(n):
        h, w = int(rng.integers(24, 80)), int(rng.integers(30, 110))
        cy, cx = rng.uniform(0.35, 0.65) * h, rng.uniform(0.35, 0.65) * w
        r, aspect = rng.uniform(0.15, 0.4) * min(h, w), rng.uniform(0.7, 1.4)
        truth = blob(h, w, cy, cx, r, aspect)
        # a jittered copy of the truth: jaccard from about 0.3 to 0.95, on both sides of 0.65
        jitter = rng.uniform(0, 0.5) * r
        pred = blob(h, w, cy + jitter, cx - jitter / 2, r * rng.uniform(0.8, 1.2), aspect)
        truth_name = f"ISIC_{i:07d}_segmentation.png"
        if i == 0:
            pred = truth  # perfect
        elif i == 1:
            pred = np.zeros_like(truth)  # empty prediction
        elif i == 2:
            truth, pred = np.zeros_like(truth), np.zeros_like(truth)  # empty truth, empty prediction
        elif i == 3:
            truth = np.zeros_like(truth)  # empty truth, false positives
        elif i == 4:
            truth = np.ones_like(truth)  # all lesion
        elif i == 5:
            truth_name = f"ISIC_{i:07d}_Segmentation.png"  # 2016 naming
        elif i == 6:
            # non-binary values: > 128 is lesion, so 128 is background and 129 lesion
            pred = np.where(pred, rng.choice([129, 200, 255], pred.shape), rng.choice([0, 60, 128], pred.shape))
            pred = pred.astype(np.uint8)
            truth = np.where(truth, 255, 128).astype(np.uint8)
        save(truth_dir / truth_name, truth)
        save(pred_dir / f"ISIC_{i:07d}_segmentation.png", pred, mode="1" if i == 7 else "L")
    (truth_dir / "LICENSE.txt").write_text("CC-BY-NC\n")  # shipped with ISIC ground truth
    return pred_dir, truth_dir


def test_agrees_with_isic_challenge_scoring(tmp_path):
    """Per image and macro-averaged, to 1e-6, against isic-challenge-scoring 5.6.0's own code paths."""
    from isic_challenge_scoring import metrics as official
    from isic_challenge_scoring.confusion import create_binary_confusion_matrix
    from isic_challenge_scoring.load_image import iter_image_pairs
    from isic_challenge_scoring.segmentation import SegmentationScore

    pred_dir, truth_dir = write_pairs(tmp_path)
    ours_per_image, ours = score_folders(pred_dir, truth_dir)
    assert len(ours_per_image) == 12 and list(ours) == list(METRIC_NAMES)

    official_summary = SegmentationScore.from_dir(truth_dir, pred_dir).macro_average
    for name in METRIC_NAMES[:-1]:  # miou2 is ours alone
        assert ours[name] == pytest.approx(official_summary[name], abs=1e-6), name

    functions = {"jaccard": official.binary_jaccard, "threshold_jaccard": official.binary_threshold_jaccard,
                 "dice": official.binary_dice, "sensitivity": official.binary_sensitivity,
                 "specificity": official.binary_specificity, "accuracy": official.binary_accuracy}
    jaccards = []
    for pair in iter_image_pairs(truth_dir, pred_dir):
        cm = create_binary_confusion_matrix(pair.truth_image > 128, pair.prediction_image > 128)
        for name, fn in functions.items():
            assert ours_per_image[pair.image_id][name] == pytest.approx(fn(cm), abs=1e-6), (pair.image_id, name)
        jaccards.append(official.binary_jaccard(cm))
    # the fixture exercises both sides of the 0.65 threshold and the 0/1 extremes
    assert any(0 < j < 0.65 for j in jaccards) and any(0.65 <= j < 1 for j in jaccards)
    assert 0.0 in jaccards and 1.0 in jaccards


def test_folder_errors_name_the_file(tmp_path):
    pred_dir, truth_dir = write_pairs(tmp_path, n=3)
    missing = pred_dir / "ISIC_0000002_segmentation.png"
    missing.unlink()
    with pytest.raises(DataError, match="ISIC_0000002_segmentation.png: prediction missing") as err:
        score_folders(pred_dir, truth_dir)
    assert "\n" not in str(err.value)

    save(missing, np.zeros((5, 7), np.uint8))
    with pytest.raises(DataError, match="ISIC_0000002_segmentation.png: prediction is 7x5 but ground truth is"):
        score_folders(pred_dir, truth_dir)

    save(missing, np.zeros(np.asarray(Image.open(truth_dir / "ISIC_0000002_segmentation.png")).shape, np.uint8))
    score_folders(pred_dir, truth_dir)  # complete again
    (pred_dir / "ISIC_0000009_segmentation.png").write_bytes(missing.read_bytes())
    with pytest.raises(DataError, match="ISIC_0000009_segmentation.png: not the prediction of any ground-truth"):
        score_folders(pred_dir, truth_dir)
    (pred_dir / "ISIC_0000009_segmentation.png").unlink()

    rgb = pred_dir / "ISIC_0000001_segmentation.png"
    Image.open(rgb).convert("RGB").save(rgb)
    with pytest.raises(DataError, match="ISIC_0000001_segmentation.png: mask is mode RGB, not 8-bit greyscale"):
        score_folders(pred_dir, truth_dir)
    rgb.write_bytes(b"not a png")
    with pytest.raises(DataError, match="ISIC_0000001_segmentation.png: cannot read the mask"):
        score_folders(pred_dir, truth_dir)

    with pytest.raises(DataError, match="no <id>_segmentation.png ground-truth masks"):
        score_folders(pred_dir, tmp_path)
    with pytest.raises(DataError, match="nowhere: prediction folder not found"):
        score_folders(tmp_path / "nowhere", truth_dir)
