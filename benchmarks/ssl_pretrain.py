"""Does SSL pretraining help? Fine-tuning from the jigsaw auto-encoder vs from random init, few labels.

    python -m benchmarks.ssl_pretrain --ssl_epochs 8 --epochs 15 --label_fraction 0.1

1. pretrain (run_pretrain) on the training images of --data (default
   ../shared/data/isic2017-sample: 456 images; masks unused, validation
   images never seen) -> a lesion-encoder version;
2. fine-tune U-Net/resnet18 with label_fraction of the training masks from
   models:/lesion-encoder/<that version>;
3. the same fine-tune from random init: same data, epochs, lr and seed.

Everything goes through the entry points' functions and is tracked in
benchmarks/mlflow.db (experiment lesion-benchmarks). Prints a markdown table
of validation metrics (official validation split, original resolution) at the
best and at the last epoch, with wall times.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from benchmarks.common import SAMPLE, machine, print_table
from lesion.config import FinetuneConfig, PretrainConfig, from_flat

HERE = Path(__file__).resolve().parent


def common(args: argparse.Namespace) -> dict:
    return {"data": args.data, "image_size": args.size, "batch_size": args.batch, "seed": args.seed,
            "experiment": "lesion-benchmarks", "output_dir": str(HERE / "outputs"), "picture_every": 5}


def pretrain(args: argparse.Namespace, tag: str) -> dict:
    from lesion.ssl.pretrain import run_pretrain

    overrides = dict(kv.split("=", 1) for kv in args.set)
    started = time.time()
    out = run_pretrain(from_flat(PretrainConfig, {**common(args), "epochs": args.ssl_epochs, "lr": args.ssl_lr,
                                                  "run_name": f"ssl-{tag}", **overrides}))
    return {**out, "minutes": (time.time() - started) / 60}


def finetune(args: argparse.Namespace, name: str, encoder_init: str) -> dict:
    from lesion.train.finetune import run_finetune

    started = time.time()
    overrides = dict(kv.split("=", 1) for kv in args.ft_set)
    out = run_finetune(from_flat(FinetuneConfig, {
        **common(args), "label_fraction": args.label_fraction, "epochs": args.epochs, "lr": args.lr,
        "encoder_init": encoder_init, "run_name": name, "register": False, **overrides}))
    best = next(h for h in out["history"] if h["epoch"] == out["best_epoch"])
    last5 = sum(h["val/jaccard"] for h in out["history"][-5:]) / len(out["history"][-5:])
    return {"name": name, "init": encoder_init, "best": best, "last": out["history"][-1], "last5": last5,
            "minutes": (time.time() - started) / 60}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SAMPLE))
    parser.add_argument("--size", type=int, default=128, help="working resolution (128 keeps CPU runs short)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--ssl_epochs", type=int, default=8, help="pretraining epochs")
    parser.add_argument("--ssl_lr", type=float, default=1e-3)
    parser.add_argument("--epochs", type=int, default=15, help="fine-tuning epochs (both inits)")
    parser.add_argument("--lr", type=float, default=1e-3, help="fine-tuning lr (both inits)")
    parser.add_argument("--label_fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                        help="extra pretrain parameters, e.g. queue_size=256 tile_jitter=0.2")
    parser.add_argument("--ft_set", nargs="*", default=[], metavar="NAME=VALUE",
                        help="extra fine-tuning parameters (both inits), e.g. encoder_lr_scale=0.1")
    parser.add_argument("--encoder_init", default="", help="skip pretraining: fine-tune from this encoder URI/folder")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{HERE / 'mlflow.db'}")
    started = time.time()
    tag = f"{args.size}px-e{args.ssl_epochs}-s{args.seed}" + "".join(f"-{kv}" for kv in args.set + args.ft_set)
    labels = f"{args.label_fraction:.0%}"

    pre = None
    encoder = args.encoder_init
    if not encoder:
        pre = pretrain(args, tag)
        encoder = f"models:/lesion-encoder/{pre['version']}"
    rows = [finetune(args, f"ssl-init-{labels}-{tag}", encoder),
            finetune(args, f"random-init-{labels}-{tag}", "random")]

    print(f"\nmachine: {machine()}")
    print(f"command: python -m benchmarks.ssl_pretrain {' '.join(sys.argv[1:])}")
    print(f"wall time: {(time.time() - started) / 60:.1f} min")
    if pre is not None:
        first, last = pre["history"][0], pre["history"][-1]
        print(f"pretraining: {pre['images']} images, {len(pre['history'])} epochs, {pre['minutes']:.1f} min, "
              f"loss {first['pretrain/loss']:.3f} -> {last['pretrain/loss']:.3f} "
              f"(reconstruction {first['pretrain/reconstruction']:.3f} -> {last['pretrain/reconstruction']:.3f}, "
              f"invariance {first['pretrain/invariance']:.3f} -> {last['pretrain/invariance']:.3f})\n")
    print_table(["init", "labels", "epochs", "best val/jaccard (epoch)", "val/dice at best", "val/jaccard last epoch",
                 "mean of last 5", "minutes"],
                [[r["init"], labels, args.epochs, f"{r['best']['val/jaccard']:.4f} ({r['best']['epoch'] + 1})",
                  f"{r['best']['val/dice']:.4f}", f"{r['last']['val/jaccard']:.4f}", f"{r['last5']:.4f}",
                  f"{r['minutes']:.1f}"] for r in rows])


if __name__ == "__main__":
    main()
