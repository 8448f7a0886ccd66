"""Label-efficiency benchmarks on real dermoscopy (default: ../shared/data/isic2017-sample), CPU-sized.

    python -m benchmarks.label_efficiency finetune   # U-Net from random init with 10% and 100% of the labels
    python -m benchmarks.label_efficiency selftrain  # Noisy Student with 10% of the labels: teacher, student, student*

Every run goes through the same functions as the entry points and is tracked in
benchmarks/mlflow.db (experiment lesion-benchmarks); the script prints a markdown
table with the validation metrics (official validation split, original resolution).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from benchmarks.common import SAMPLE, machine, print_table
from lesion.config import FinetuneConfig, SelftrainConfig, from_flat

HERE = Path(__file__).resolve().parent


def common(args) -> dict:
    return {"data": args.data, "image_size": args.size, "batch_size": args.batch, "seed": args.seed,
            "experiment": "lesion-benchmarks", "output_dir": str(HERE / "outputs"), "picture_every": 5,
            **dict(kv.split("=", 1) for kv in args.set)}


def finetune(args, label_fraction: float, epochs: int, name: str, encoder_init: str = "random") -> dict:
    from lesion.train.finetune import run_finetune

    cfg = from_flat(FinetuneConfig, {**common(args), "label_fraction": label_fraction, "epochs": epochs,
                                     "encoder_init": encoder_init, "run_name": name, "lr": args.lr})
    out = run_finetune(cfg)
    best = next(h for h in out["history"] if h["epoch"] == out["best_epoch"])
    return {"name": name, "val/jaccard": best["val/jaccard"], "val/dice": best["val/dice"],
            "val/threshold_jaccard": best["val/threshold_jaccard"], "epochs": epochs}


def table(rows: list[dict], started: float, command: str) -> None:
    print(f"\nmachine: {machine()}")
    print(f"command: {command}   wall time: {(time.time() - started) / 60:.1f} min\n")
    print_table(["run", "labels", "epochs", "val/jaccard", "val/dice", "val/threshold_jaccard"],
                [[r["name"], r.get("labels", ""), r.get("epochs", ""), f"{r['val/jaccard']:.4f}", f"{r['val/dice']:.4f}",
                  f"{r.get('val/threshold_jaccard', float('nan')):.4f}"] for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=["finetune", "selftrain"],
                        help="SSL vs random init has its own script: python -m benchmarks.ssl_pretrain")
    parser.add_argument("--data", default=str(SAMPLE))
    parser.add_argument("--size", type=int, default=128, help="working resolution (128 keeps CPU runs short)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--epochs_few", type=int, default=30, help="epochs with 10%% of the labels")
    parser.add_argument("--epochs_all", type=int, default=15, help="epochs with all labels")
    parser.add_argument("--epochs_student", type=int, default=10, help="epochs per student")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                        help="extra parameters for every run, e.g. noise=0.5 or student_init=teacher")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{HERE / 'mlflow.db'}")
    started, command = time.time(), "python -m benchmarks.label_efficiency " + " ".join(sys.argv[1:])
    tag = f"{args.size}px-s{args.seed}" + "".join(f"-{kv}" for kv in args.set)
    rows: list[dict] = []
    if args.experiment == "finetune":
        rows.append({**finetune(args, 0.1, args.epochs_few, f"random-10pct-{tag}"), "labels": "10% (46)"})
        rows.append({**finetune(args, 1.0, args.epochs_all, f"random-100pct-{tag}"), "labels": "100% (456)"})
    else:
        from lesion.selftrain.loop import run_selftrain

        cfg = from_flat(SelftrainConfig, {**common(args), "label_fraction": 0.1, "epochs": args.epochs_few,
                                          "student_epochs": args.epochs_student, "lr": args.lr,
                                          "run_name": f"selftrain-10pct-{tag}"})
        out = run_selftrain(cfg)
        for name, s in out["stages"].items():
            rows.append({"name": name, "labels": "10% (46)" + (" + pseudo" if name != "teacher" else ""),
                         "val/jaccard": s["val_jaccard"], "val/dice": s["val_dice"],
                         "val/threshold_jaccard": s.get("val_threshold_jaccard") or float("nan"),
                         "epochs": args.epochs_few if name == "teacher" else args.epochs_student})
    table(rows, started, command)


if __name__ == "__main__":
    main()
