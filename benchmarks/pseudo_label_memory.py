"""Peak memory of pseudo-labelling as the unlabelled pool grows: it must stay flat.

    python -m benchmarks.pseudo_label_memory            # --pools 250,1000,4000 --size 128 --batch 8

For each pool size, a fresh process prepares a synthetic data set (1 labelled
image per 50, the rest unlabelled) in a throwaway cache, builds a U-Net (on the GPU
where there is one, as the selftrain stage), runs one warm-up batch, resets the
kernel's peak-RSS counter (/proc/self/clear_refs) and pseudo-labels the whole
pool with flip TTA, exactly as the selftrain stage does.
It prints the peak resident memory during pseudo-labelling and how much of it
came on top of the process before it started.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine, print_table


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(pool: int, size: int, batch: int, cache_dir: str) -> dict:
    import torch
    from accelerate import Accelerator

    from lesion.config import DataConfig, ModelConfig
    from lesion.data.prepare import prepare_data
    from lesion.data.splits import unlabelled_pool
    from lesion.models import build_model
    from lesion.selftrain.pseudo import pseudo_label

    n = pool + max(2, pool // 50)
    with tempfile.TemporaryDirectory() as out:
        cfg = DataConfig(data=f"synthetic:n={n},size={size},seed=3", labels=max(2, pool // 50), val_fraction=0.0,
                         cache_dir=cache_dir)
        data = prepare_data(cfg, 0, out, progress=False)
        rows = unlabelled_pool(data.rows)
        accelerator = Accelerator(cpu=not torch.cuda.is_available())  # on a GPU where there is one, as selftrain
        model = build_model(ModelConfig()).eval().to(accelerator.device)
        pseudo_label(model, rows[:batch], data.cache, accelerator, Path(out) / "warm", batch, tta=True)
        before = _status_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (peak RSS) to the current RSS
        started = time.perf_counter()
        stats = pseudo_label(model, rows, data.cache, accelerator, Path(out) / "pseudo", batch, tta=True)
        seconds = time.perf_counter() - started
        peak = _status_kib("VmHWM")
    assert len(stats) == len(rows) == pool, (len(stats), len(rows), pool)
    return {"pool": pool, "rss_before_mib": before / 1024, "peak_mib": peak / 1024,
            "growth_mib": (peak - before) / 1024, "images_per_s": pool / seconds, "threads": torch.get_num_threads(),
            "device": str(accelerator.device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pools", default="250,1000,4000", help="unlabelled pool sizes, comma-separated")
    parser.add_argument("--size", type=int, default=128, help="working resolution")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--cache_dir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.size, args.batch, args.cache_dir)), flush=True)
        return
    rows = []
    with tempfile.TemporaryDirectory() as cache_dir:
        for pool in [int(p) for p in args.pools.split(",")]:
            cmd = [sys.executable, "-m", "benchmarks.pseudo_label_memory", "--child", str(pool), "--size",
                   str(args.size), "--batch", str(args.batch), "--cache_dir", cache_dir]
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
            line = next((s for s in out.stdout.splitlines() if s.startswith("RESULT ")), None)
            if out.returncode or line is None:
                raise SystemExit(f"pool {pool} failed:\n{out.stderr[-3000:]}")
            rows.append(json.loads(line.removeprefix("RESULT ")))
    print(f"\nmachine: {machine()}")
    print(f"command: python -m benchmarks.pseudo_label_memory {' '.join(sys.argv[1:])}")
    print(f"device: {rows[0]['device']}, {args.size} px, batch {args.batch}, flip TTA\n")
    print_table(["unlabelled pool", "RSS before (MiB)", "peak while pseudo-labelling (MiB)", "growth (MiB)", "images/s"],
                [[r["pool"], f"{r['rss_before_mib']:.0f}", f"{r['peak_mib']:.0f}", f"{r['growth_mib']:.0f}",
                  f"{r['images_per_s']:.1f}"] for r in rows])


if __name__ == "__main__":
    main()
