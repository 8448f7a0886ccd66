"""From a `data` string to cached, split, manifest-backed rows: the shared first step of every stage.

The main process discovers the files, splits them, decodes every image once
into the cache (dropping bad files only when skip_bad is set, and counting
them) and writes the manifest; the other processes wait and read that
manifest, so every rank sees exactly the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lesion.config import DataConfig
from lesion.data.cache import PreprocessCache
from lesion.data.sources import default_cache_dir, discover, discover_unlabeled
from lesion.data.splits import Row, counts, make_split, read_manifest, write_manifest
from lesion.data.synthetic import parse_spec
from lesion.errors import ConfigError, DataError

DEFAULT_REAL_SIZE = 256


def resolve_image_size(cfg: DataConfig) -> int:
    """image_size=0 means: 256 for real data, the synthetic set's own size for synthetic data."""
    size = cfg.image_size
    if size <= 0:
        if cfg.data.split(":", 1)[0] == "synthetic":
            size = min(DEFAULT_REAL_SIZE, parse_spec(cfg.data.partition(":")[2]).size)
        else:
            size = DEFAULT_REAL_SIZE
    if size % 32:
        raise ConfigError(f"image_size={size} must be a multiple of 32 (the encoders downsample 32x); try {size // 32 * 32 or 32}")
    return size


def resolve_cache_dir(cfg_cache_dir: str) -> Path:
    return Path(cfg_cache_dir) if cfg_cache_dir else default_cache_dir()


@dataclass
class PreparedData:
    rows: list[Row]
    cache: PreprocessCache
    image_size: int
    manifest: Path
    skipped: list[str] = field(default_factory=list)
    nonbinary_masks: int = 0
    format: str = ""

    def summary(self) -> dict[str, int | str]:
        return {**counts(self.rows), "skipped": len(self.skipped), "nonbinary_masks": self.nonbinary_masks,
                "format": self.format, "image_size": self.image_size}


def prepare_data(cfg: DataConfig, seed: int, out_dir: str | Path, is_main: bool = True,
                 wait: callable = lambda: None, progress: bool = True, need_labels: bool = True) -> PreparedData:
    """Discover, split, cache and write `out_dir/manifest.csv`; call on every process with the same arguments.

    need_labels=False (pretraining) accepts a source without a single mask, e.g. unlabeled:FOLDER.
    """
    image_size = resolve_image_size(cfg)
    cache_dir = resolve_cache_dir(cfg.cache_dir)
    cache = PreprocessCache(cache_dir, image_size, cfg.max_pixels) if is_main else None
    manifest = Path(out_dir) / "manifest.csv"
    result = None
    if is_main:
        found = discover(cfg.data, cache_dir, skip_bad=cfg.skip_bad)
        pool = discover_unlabeled(cfg.unlabeled, skip_bad=cfg.skip_bad) if cfg.unlabeled else None
        rows = make_split(found.records, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                          label_fraction=cfg.label_fraction, labels=cfg.labels, seed=seed,
                          unlabeled=pool.records if pool else None)
        pairs = [(r.image, r.mask if r.labelled or r.split in ("val", "test") else None) for r in rows]
        usable, skipped, nonbinary = cache.warm(pairs, skip_bad=cfg.skip_bad, progress=progress,
                                                desc=f"decode+resize to {image_size}px")
        rows = [rows[i] for i in usable]
        skipped = found.skipped + (pool.skipped if pool else []) + skipped
        if not rows:
            raise DataError(f"{cfg.data}: no usable images left; check the files (lesion data inspect {cfg.data})")
        if need_labels and not any(r.split == "train" and r.labelled for r in rows):
            raise DataError(f"{cfg.data}: no labelled training images left; check the masks or label_fraction")
        train_masks = [r for r in rows if r.split == "train" and r.labelled]
        # any() stops at the first lesion: a full scan only for the data set that is refused
        if need_labels and not any(cache.load(r.image, r.mask).mask.any() for r in train_masks):
            raise DataError(f"{cfg.data}: all {len(train_masks)} labelled training masks are empty (no lesion pixel at the "
                            f"{image_size}-px working size), "
                            f"so there is nothing to learn; check how the masks are encoded (lesion data inspect "
                            f"{cfg.data}), or label more images (label_fraction, labels)")
        write_manifest(rows, manifest)
        if skipped:
            (Path(out_dir) / "skipped.txt").write_text("\n".join(skipped) + "\n")
            print(f"[lesion] skipped {len(skipped)} unusable file(s) (skip_bad=true); see {Path(out_dir) / 'skipped.txt'}")
        if nonbinary:
            print(f"[lesion] {nonbinary} mask(s) were not binary (JPEG-compressed?) and were thresholded at 128")
        result = PreparedData(rows, cache, image_size, manifest, skipped, nonbinary, found.format)
    wait()
    if result is None:
        result = PreparedData(read_manifest(manifest), PreprocessCache(cache_dir, image_size, cfg.max_pixels),
                              image_size, manifest)
    return result
