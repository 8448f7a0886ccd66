"""Training images/s of the full engine vs a bare loop of the same model on in-memory tensors.

The engine run includes everything a user gets: data from the preprocessing
cache, augmentation, Accelerate, per-epoch checkpointing and a finetune's
callbacks (best/last weights, MLflow logging); its validation pass is excluded
by timing only the training epochs.
On a GPU both run there, with the engine's mixed precision (bf16 where
supported: the bare loop autocasts its forward pass) and the engine with the
DataLoader workers a user gets (num_workers=-1: up to 8 on a GPU, 0 on CPU).
`--mixed_precision bf16` runs both under bf16 autocast on a CPU too (which AMX,
on Intel Xeon 4th generation and later, accelerates: `grep amx_bf16 /proc/cpuinfo`).

    python -m benchmarks.train_throughput [--data ../shared/data/isic2017-sample] [--size 256] [--batch 8] [--steps 24]
    python -m benchmarks.train_throughput --size 128 --steps 12 --mixed_precision bf16
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from benchmarks.common import SAMPLE, machine, print_table
from lesion.config import ModelConfig, from_flat, FinetuneConfig
from lesion.data.datasets import SegmentationDataset
from lesion.data.prepare import prepare_data
from lesion.data.splits import select
from lesion.models import build_model
from lesion.tracking import Tracker
from lesion.train import engine
from lesion.train.losses import segmentation_loss
from lesion.train.segmentation import Segmentation, segmentation_callbacks, segmentation_loaders


def bare_loop(size: int, batch: int, steps: int, mixed_precision: str) -> float:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = engine.resolve_mixed_precision(mixed_precision) == "bf16"  # what the engine's Accelerator does
    torch.manual_seed(0)
    model = build_model(ModelConfig()).train().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(batch, 3, size, size), (torch.rand(batch, 1, size, size) > 0.5).float()
    x, y = x.to(device), y.to(device)
    valid = torch.ones_like(y)

    def forward() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return model(x).float()

    forward()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        loss = segmentation_loss("bce+dice", forward(), y, valid)
        loss.backward()
        opt.step()
        opt.zero_grad()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def engine_loop(data: str, size: int, batch: int, steps: int, mixed_precision: str, tmp: str) -> float:
    cfg = from_flat(FinetuneConfig, {"data": data, "image_size": size, "batch_size": batch, "epochs": 2,
                                     "mixed_precision": mixed_precision,
                                     "cache_dir": os.path.join(tmp, "cache"), "picture_every": 0})
    prepared = prepare_data(cfg.data, 0, tmp)
    train_rows = select(prepared.rows, "train", labelled=True)[: steps * batch]
    train = SegmentationDataset(train_rows, prepared.cache, cfg.noise, train=True)
    val = SegmentationDataset(select(prepared.rows, "val", labelled=True)[:1], prepared.cache)
    accelerator = engine.make_accelerator(cfg.train)
    tracker = Tracker()
    epoch_times: list[float] = []
    task = Segmentation(cfg.train, val, accelerator)
    real_validate = task.validate

    def timed_validate(*args, **kwargs):  # the clock stops for validation, which is not training throughput
        epoch_times.append(time.perf_counter())
        result = real_validate(*args, **kwargs)
        epoch_times.append(time.perf_counter())
        return result

    task.validate = timed_validate
    with tracker.run("benchmark", experiment="lesion-benchmarks", params={"size": size, "batch": batch}):
        start = time.perf_counter()
        loaders = segmentation_loaders(train, val, cfg.train, seed=0,
                                       num_workers=engine.resolve_workers(cfg.data.num_workers))
        engine.fit(build_model(cfg.model), task, loaders, cfg.train, engine.FitContext(accelerator, os.path.join(tmp, "work")),
                   segmentation_callbacks(cfg.train, size, val, tracker))
    # epoch 1 = start..first validation; epoch 2 = end of first validation (+ checkpoint, logging)..second one
    train_time = (epoch_times[0] - start) + (epoch_times[2] - epoch_times[1])
    return 2 * len(train_rows) / train_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SAMPLE))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=24, help="training steps per epoch")
    parser.add_argument("--mixed_precision", default="auto", choices=["auto", "no", "bf16"],
                        help="both loops (auto: lesion's default, bf16 on a GPU that supports it, fp32 on CPU)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{tmp}/mlflow.db")
        engine_rate = engine_loop(args.data, args.size, args.batch, args.steps, args.mixed_precision, tmp)
        bare_rate = bare_loop(args.size, args.batch, args.steps, args.mixed_precision)
    print(f"machine: {machine()}")
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    print(f"U-Net resnet18, {args.size} px, batch {args.batch}, {args.steps} steps per epoch, 2 epochs, on {device}, "
          f"mixed precision {engine.resolve_mixed_precision(args.mixed_precision)}, engine with {engine.resolve_workers(-1)} "
          "loader workers")
    print_table(["loop", "train images/s"], [
        ["bare (in-memory tensors)", f"{bare_rate:.2f}"],
        ["lesion engine (cache, augmentation, Accelerate, checkpoints, MLflow)", f"{engine_rate:.2f}"],
        ["ratio", f"{engine_rate / bare_rate:.2f}x"]])


if __name__ == "__main__":
    main()
