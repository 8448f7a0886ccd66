import numpy as np
import pytest
import torch
from PIL import Image

from lesion.errors import DataError
from lesion.metrics import (METRIC_NAMES, confusion, confusion_batch, per_image_scores, resize_probabilities,
                            score_folders, score_image, summarize)


def test_hand_computed_metrics():
    pred = np.array([[1, 1, 0, 0]] * 2, bool)
    truth = np.array([[1, 0, 0, 0]] * 2, bool)
    assert confusion(pred, truth).tolist() == [2, 2, 0, 4]
    s = {k: v[0] for k, v in per_image_scores(confusion(pred, truth)).items()}
    assert s["jaccard"] == pytest.approx(0.5) and s["threshold_jaccard"] == 0.0  # below 0.65
    assert s["dice"] == pytest.approx(2 / 3) and s["sensitivity"] == 1.0 and s["specificity"] == pytest.approx(4 / 6)
    assert s["accuracy"] == pytest.approx(6 / 8) and s["miou2"] == pytest.approx((0.5 + 4 / 6) / 2)


def test_empty_denominators_follow_the_official_scorer():
    s = per_image_scores([[0, 0, 0, 16]])
    assert s["jaccard"][0] == 1.0 and s["dice"][0] == 1.0 and s["sensitivity"][0] == 1.0
    s = per_image_scores([[16, 0, 0, 0]])
    assert s["specificity"][0] == 1.0 and s["miou2"][0] == 1.0


def test_macro_average_is_over_images():
    summary = summarize([[10, 0, 0, 90], [0, 10, 10, 80]])
    assert summary["jaccard"] == pytest.approx(0.5) and list(summary) == list(METRIC_NAMES)


def test_batch_and_torch_agree_with_numpy():
    rng = np.random.default_rng(0)
    pred, truth = rng.random((3, 9, 7)) > 0.5, rng.random((3, 9, 7)) > 0.4
    batch = confusion_batch(torch.from_numpy(pred), torch.from_numpy(truth)).numpy()
    assert all((batch[i] == confusion(pred[i], truth[i])).all() for i in range(3))


def test_resize_and_score_at_original_resolution():
    prob = torch.zeros(8, 8)
    prob[2:6, 2:6] = 1
    big = resize_probabilities(prob, (32, 48))
    assert big.shape == (32, 48) and resize_probabilities(torch.full((4, 4), 0.3), (9, 9)).allclose(torch.tensor(0.3))
    truth = np.zeros((32, 48), bool)
    truth[8:24, 12:36] = True
    counts = score_image(prob, truth)
    assert counts.sum() == 32 * 48 and per_image_scores(counts)["jaccard"][0] > 0.7


def blob_mask(h, w, rng):
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx, r = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w, rng.uniform(0.1, 0.35) * min(h, w)
    return ((yy - cy) ** 2 + (xx - cx) ** 2 * rng.uniform(0.6, 1.4)) < r * r


def write_pairs(tmp_path, n=10):
    rng = np.random.default_rng(1)
    truth_dir, pred_dir = tmp_path / "truth", tmp_path / "pred"
    truth_dir.mkdir()
    pred_dir.mkdir()
    for i in range(n):
        h, w = int(rng.integers(30, 70)), int(rng.integers(40, 90))
        truth = blob_mask(h, w, rng)
        pred = blob_mask(h, w, rng) if i not in (0, 1) else (truth if i == 0 else np.zeros_like(truth))
        Image.fromarray(truth.astype(np.uint8) * 255).save(truth_dir / f"ISIC_{i:07d}_segmentation.png")
        Image.fromarray(pred.astype(np.uint8) * 255).save(pred_dir / f"ISIC_{i:07d}_segmentation.png")
    return pred_dir, truth_dir


def test_agrees_with_isic_challenge_scoring(tmp_path):
    from isic_challenge_scoring.segmentation import SegmentationScore

    pred_dir, truth_dir = write_pairs(tmp_path)
    _, ours = score_folders(pred_dir, truth_dir)
    official = SegmentationScore.from_dir(truth_dir, pred_dir).macro_average
    for name in ("jaccard", "threshold_jaccard", "dice", "sensitivity", "specificity", "accuracy"):
        assert ours[name] == pytest.approx(official[name], abs=1e-6), name


def test_folder_errors_name_the_file(tmp_path):
    pred_dir, truth_dir = write_pairs(tmp_path, n=3)
    (pred_dir / "ISIC_0000002_segmentation.png").unlink()
    with pytest.raises(DataError, match="ISIC_0000002_segmentation.png: prediction missing"):
        score_folders(pred_dir, truth_dir)
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(pred_dir / "ISIC_0000002_segmentation.png")
    with pytest.raises(DataError, match="prediction is 5x5 but ground truth is"):
        score_folders(pred_dir, truth_dir)
