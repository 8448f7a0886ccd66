import numpy as np
import pytest

from lesion.data.cache import PreprocessCache
from lesion.errors import DataError
from tests.data.fakes import blob, save, truncated_jpeg


def test_cache_decodes_once_and_keeps_masks_binary(tmp_path, monkeypatch):
    image, mask = blob(40, 60)
    ip, mp = save(image, tmp_path / "a.png"), save(mask, tmp_path / "a_mask.png")
    cache = PreprocessCache(tmp_path / "cache", 32, 10_000_000)
    first = cache.load(str(ip), str(mp))
    assert first.image.shape == (32, 32, 3) and set(np.unique(first.mask)) <= {0, 1}
    assert first.original_size == (40, 60)
    assert np.array_equal(cache.original_mask(str(ip), str(mp)), mask > 0)

    import lesion.data.cache as cache_module

    def no_decoding(*args, **kwargs):
        raise AssertionError("a cached image was decoded again")

    monkeypatch.setattr(cache_module, "load_pair", no_decoding)
    again = PreprocessCache(tmp_path / "cache", 32, 10_000_000).load(str(ip), str(mp))
    assert np.array_equal(again.image, first.image)


def test_cache_key_follows_the_file(tmp_path):
    ip = save(blob()[0], tmp_path / "a.png")
    cache = PreprocessCache(tmp_path / "cache", 32, 10_000_000)
    before = cache.load(str(ip)).image
    save(np.zeros((24, 32, 3), np.uint8), ip)  # the file changes: the cache must notice
    assert not np.array_equal(cache.load(str(ip)).image, before)


def test_warm_skips_and_counts_bad_files(tmp_path):
    good = save(blob()[0], tmp_path / "good.png")
    bad = truncated_jpeg(tmp_path / "bad.jpg")
    cache = PreprocessCache(tmp_path / "cache", 32, 10_000_000)
    with pytest.raises(DataError, match="bad.jpg"):
        cache.warm([(str(good), None), (str(bad), None)], skip_bad=False, progress=False)
    usable, skipped, _ = cache.warm([(str(good), None), (str(bad), None)], skip_bad=True, progress=False)
    assert usable == [0] and len(skipped) == 1 and "bad.jpg" in skipped[0]


def test_dataloader_workers_augment_independently_and_reproducibly(tmp_path):
    import torch
    from torch.utils.data import DataLoader

    from lesion.config import NoiseConfig
    from lesion.data.datasets import SegmentationDataset, seed_worker
    from lesion.data.splits import Row

    image, mask = blob(64, 64)
    row = Row("a", str(save(image, tmp_path / "a.png")), str(save(mask, tmp_path / "a_mask.png")), "train", True, "t")
    dataset = SegmentationDataset([row] * 4, PreprocessCache(tmp_path / "cache", 64, 10_000_000),
                                  NoiseConfig(noise=1.0), train=True, seed=0)

    def epoch() -> list[torch.Tensor]:
        dataset.set_epoch(0)
        loader = DataLoader(dataset, batch_size=1, num_workers=2, worker_init_fn=seed_worker)
        return [batch["image"][0] for batch in loader]

    first, again = epoch(), epoch()
    # Items 0 and 1 are the first draw of worker 0 and of worker 1: the same image, augmented differently.
    assert not torch.equal(first[0], first[1]), "workers must not replay one augmentation stream"
    assert all(torch.equal(a, b) for a, b in zip(first, again)), "and the epoch is reproducible"
