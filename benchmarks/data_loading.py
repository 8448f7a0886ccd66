"""Images/s of one training epoch's data at 256 px: decode+resize every epoch vs the preprocessing cache.

    python benchmarks/data_loading.py [--data ../shared/data/isic2017-sample] [--size 256] [--workers 0,8]

--workers: DataLoader workers, comma-separated; each count is one row pair. Workers start afresh for the
timed epoch, as the engine's loaders start them every epoch.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from torch.utils.data import DataLoader, Dataset

from benchmarks.common import SAMPLE, machine, print_table
from lesion.data.cache import PreprocessCache, resize_image, resize_mask
from lesion.data.io import load_pair
from lesion.data.sources import discover
from lesion.data.transforms import normalize, plain_transform


class Uncached(Dataset):
    """What a loader without the cache does: decode the full-resolution files every epoch."""

    def __init__(self, records, size):
        self.records, self.size, self.transform = records, size, plain_transform(0)

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        r = self.records[i]
        image, mask, _ = load_pair(r.image, r.mask, 150_000_000)
        out = self.transform(image=resize_image(image, self.size), mask=resize_mask(mask, self.size))
        return normalize(out["image"]), out["mask"]


class Cached(Uncached):
    def __init__(self, records, size, cache):
        super().__init__(records, size)
        self.cache = cache

    def __getitem__(self, i):
        sample = self.cache.load(self.records[i].image, self.records[i].mask)
        out = self.transform(image=sample.image, mask=sample.mask)
        return normalize(out["image"]), out["mask"]


def epoch_rate(ds: Dataset, workers: int = 0) -> float:
    start = time.perf_counter()
    for _ in DataLoader(ds, batch_size=8, num_workers=workers):
        pass
    return len(ds) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SAMPLE))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--workers", default="0", help="DataLoader workers, comma-separated (default: 0)")
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        records = [r for r in discover(args.data, tmp).records if r.mask]
        uncached = {w: epoch_rate(Uncached(records, args.size), w) for w in counts}
        cache = PreprocessCache(tmp, args.size, 150_000_000)
        start = time.perf_counter()
        cache.warm([(r.image, r.mask) for r in records], skip_bad=False, progress=False)
        warm_s = time.perf_counter() - start
        cached = {w: epoch_rate(Cached(records, args.size, cache), w) for w in counts}
    print(f"machine: {machine()}")
    print(f"images: {len(records)} from {args.data} at {args.size} px, batch 8, {args.workers} workers")
    rows = []
    for w in counts:
        suffix = "" if counts == [0] else f", {w} workers"
        rows += [[f"decode + resize every epoch{suffix}", f"{uncached[w]:.1f}"],
                 [f"preprocessing cache (warm){suffix}", f"{cached[w]:.1f}"],
                 [f"speed-up{suffix}", f"{cached[w] / uncached[w]:.1f}x"]]
    print_table(["loader", "images/s"], rows)
    print(f"one-off cache build: {warm_s:.1f} s ({len(records) / warm_s:.1f} images/s, threads)")


if __name__ == "__main__":
    main()
