"""Label efficiency on real dermoscopy, honestly measured: several seeds, a converged 100% baseline, an external set.

    python -m benchmarks.label_efficiency baseline --seeds 0 1 2     # 100% of the labels, trained to convergence
    python -m benchmarks.label_efficiency selftrain --seeds 0 1 2    # 10%: teacher -> student -> student*
    python -m benchmarks.label_efficiency selftrain --unlabeled ../shared/data/ham10000/unlabeled --pool 2000
                                                                     # + a new clinic's unlabelled images

Data: --data (default ../shared/data/isic2017-sample: 456 training, 98 validation images); every model is
also scored on --external (default ../shared/data/ham10000/test: 500 images from other sites and cameras),
the weights each run hands on (keep: the final ones by default), never selected on the external set. The
baseline trains up to --epochs_all epochs with early stopping (--patience, with keep=best): it has converged
when patience stopped it or its best epoch is not among its last few, and the table says which. Everything goes
through the entry points' functions with lesion's defaults (plus --set), tracked in benchmarks/mlflow.db (experiment lesion-benchmarks).
Prints per-seed rows and mean ± sd, ready for benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import EXTERNAL, SAMPLE, machine, print_table, set_tag
from lesion.config import FinetuneConfig, SelftrainConfig, from_flat
from lesion.runs import default_run_name

HERE = Path(__file__).resolve().parent


def common(args, seed: int) -> dict:
    return {"data": args.data, "external": args.external, "image_size": args.size, "batch_size": args.batch,
            "seed": seed, "experiment": "lesion-benchmarks", "output_dir": str(HERE / "outputs"), "picture_every": 5,
            "register": False, **dict(kv.split("=", 1) for kv in args.set)}


def pool_folder(args) -> str:
    """--unlabeled as given, or a seeded --pool-image subset of it (symlinks in benchmarks/outputs)."""
    if not args.unlabeled or not args.pool:
        return args.unlabeled
    source = Path(args.unlabeled)
    files = sorted(p for p in source.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    chosen = random.Random(0).sample(files, min(args.pool, len(files)))
    folder = HERE / "outputs" / f"pool-{source.name}-{len(chosen)}"
    folder.mkdir(parents=True, exist_ok=True)
    for f in chosen:
        link = folder / f.name
        if not link.exists():
            link.symlink_to(f.resolve())
    return str(folder)


def baseline(args, seed: int) -> list[dict]:
    from lesion.finetune import run_finetune

    tag = f"{args.size}px-s{seed}" + set_tag(args.set)
    # Early stopping picks the best epoch (keep=best); --set keep=last with --patience 0 runs the full schedule.
    out = run_finetune(from_flat(FinetuneConfig, {"keep": "best" if args.patience else "last", **common(args, seed),
                                                  "label_fraction": 1.0, "epochs": args.epochs_all,
                                                  "patience": args.patience,
                                                  "run_name": default_run_name(f"baseline-100pct-{tag}")}))
    kept = out["history"][out["epoch"]]
    trained = len(out["history"])
    converged = ("patience stopped it" if trained < args.epochs_all else
                 "best epoch not among the last 5" if out["best_epoch"] < trained - 5 else "NOT converged")
    return [{"stage": "supervised, 100%", "seed": seed, "val_jaccard": out["val_jaccard"],
             "val_dice": kept["val/dice"], "external_jaccard": (out["external"] or {}).get("jaccard", np.nan),
             "external_degenerate": (out["external"] or {}).get("degenerate", np.nan),
             "external_poor": (out["external"] or {}).get("jaccard_below_half", np.nan),
             "external_low_specificity": (out["external"] or {}).get("specificity_below_half", np.nan),
             "epochs": f"{trained} (best {out['best_epoch'] + 1}; {converged})"}]


def selftrain(args, seed: int) -> list[dict]:
    from lesion.selftrain.loop import run_selftrain

    unlabeled = pool_folder(args)
    tag = (f"{args.size}px-s{seed}" + (f"-{Path(unlabeled).name}" if unlabeled else "")
           + set_tag(args.set))
    out = run_selftrain(from_flat(SelftrainConfig, {
        **common(args, seed), "label_fraction": args.label_fraction, "epochs": args.epochs_few,
        "student_epochs": args.epochs_student, "unlabeled": unlabeled, "run_name": default_run_name(f"selftrain-{tag}")}))
    return [{"stage": name, "seed": seed, "val_jaccard": s["val_jaccard"], "val_dice": s["val_dice"],
             "external_jaccard": s.get("external_jaccard") if s.get("external_jaccard") is not None else np.nan,
             "external_degenerate": s.get("external_degenerate") if s.get("external_degenerate") is not None else np.nan,
             "external_poor": s.get("external_poor") if s.get("external_poor") is not None else np.nan,
             "external_low_specificity": (s.get("external_low_specificity")
                                          if s.get("external_low_specificity") is not None else np.nan),
             "epochs": args.epochs_few if name == "teacher" else args.epochs_student}
            for name, s in out["stages"].items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=["baseline", "selftrain"],
                        help="SSL vs random init has its own script: python -m benchmarks.ssl_pretrain")
    parser.add_argument("--data", default=str(SAMPLE))
    parser.add_argument("--external", default=str(EXTERNAL), help="labelled set from another source ('': none)")
    parser.add_argument("--size", type=int, default=128, help="working resolution (128 keeps CPU runs short)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--label_fraction", type=float, default=0.1)
    parser.add_argument("--epochs_few", type=int, default=30, help="teacher epochs (10%% of the labels)")
    parser.add_argument("--epochs_student", type=int, default=10, help="epochs per student")
    parser.add_argument("--epochs_all", type=int, default=60, help="most epochs of the 100%% baseline")
    parser.add_argument("--patience", type=int, default=10, help="early stopping of the 100%% baseline")
    parser.add_argument("--unlabeled", default="", help="extra unlabelled folder (a new clinic's images)")
    parser.add_argument("--pool", type=int, default=0, help="a seeded subset of --unlabeled of this many images")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                        help="extra parameters for every run, e.g. noise=0.5 or student_init=teacher")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{HERE / 'mlflow.db'}")
    started, command = time.time(), "python -m benchmarks.label_efficiency " + " ".join(sys.argv[1:])
    rows: list[dict] = []
    for seed in args.seeds:
        rows += (baseline if args.experiment == "baseline" else selftrain)(args, seed)
        print(f"[benchmark] {rows[-3:]}", flush=True)
    print(f"\nmachine: {machine()}")
    print(f"command: {command}   wall time: {(time.time() - started) / 60:.1f} min\n")
    table = [[r["stage"], r["seed"], r["epochs"], f"{r['val_jaccard']:.4f}", f"{r['val_dice']:.4f}",
              f"{r['external_jaccard']:.4f}", f"{r['external_degenerate']:.1%}", f"{r['external_poor']:.0f}",
              f"{r['external_low_specificity']:.0f}"] for r in rows]
    for stage in dict.fromkeys(r["stage"] for r in rows):
        group = [r for r in rows if r["stage"] == stage]

        def ms(key: str, pct: bool = False) -> str:
            values = np.array([r[key] for r in group], dtype=float)
            sd = np.std(values, ddof=1) if len(values) > 1 else 0.0
            return f"**{values.mean():.1%}** ± {sd:.1%}" if pct else f"**{values.mean():.4f}** ± {sd:.4f}"

        table.append([f"**{stage}, mean ± sd of {len(group)}**", "", "", ms("val_jaccard"), ms("val_dice"),
                      ms("external_jaccard"), ms("external_degenerate", pct=True), ms("external_poor"),
                      ms("external_low_specificity")])
    print_table(["stage", "seed", "epochs", "val/jaccard", "val/dice", "external/jaccard", "external/degenerate",
                 "external: masks with J < 0.5", "external: masks with specificity < 0.5"], table)


if __name__ == "__main__":
    main()
