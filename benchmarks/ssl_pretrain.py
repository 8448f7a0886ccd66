"""Does SSL pretraining help? Fine-tuning from the jigsaw auto-encoder vs from random init, few labels.

    python -m benchmarks.ssl_pretrain --ssl_epochs 40 --epochs 30 --seeds 0 1 2
    python -m benchmarks.ssl_pretrain --ssl_epochs 2 --epochs 30 --seeds 0 1 2 --unlabeled ../shared/data/ham10000/unlabeled

1. pretrain (run_pretrain, seed --seed) on the training images of --data
   (default ../shared/data/isic2017-sample: 456 images; masks unused,
   validation images never seen), plus every image of --unlabeled (another
   clinic's unlabelled pool) -> a lesion-encoder version;
2. for every seed of --seeds (each draws its own labelled subset and its own
   decoder init): fine-tune with label_fraction of the training masks from
   models:/lesion-encoder/<that version>, with lesion's fine-tuning defaults
   (plus --ft_set), and score the weights it hands on (keep) on --external too;
3. the same fine-tune from random init: same data, epochs, lr and seed.

Everything goes through the entry points' functions and is tracked in
benchmarks/mlflow.db (experiment lesion-benchmarks). Prints a markdown table
of validation metrics (official validation split, original resolution) of the
kept weights and over the last epochs, with wall times.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import EXTERNAL, SAMPLE, machine, print_table, set_tag
from lesion.config import FinetuneConfig, PretrainConfig, from_flat
from lesion.runs import default_run_name

HERE = Path(__file__).resolve().parent


def common(args: argparse.Namespace) -> dict:
    return {"data": args.data, "image_size": args.size, "batch_size": args.batch, "seed": args.seed,
            "experiment": "lesion-benchmarks", "output_dir": str(HERE / "outputs"), "picture_every": 5}


def pretrain(args: argparse.Namespace, tag: str) -> dict:
    from lesion.pretrain import run_pretrain

    overrides = dict(kv.split("=", 1) for kv in args.set)
    started = time.time()
    out = run_pretrain(from_flat(PretrainConfig, {**common(args), "epochs": args.ssl_epochs, "lr": args.ssl_lr,
                                                  "unlabeled": args.unlabeled,
                                                  "run_name": default_run_name(f"ssl-{tag}"), **overrides}))
    return {**out, "minutes": (time.time() - started) / 60}


def finetune(args: argparse.Namespace, name: str, encoder_init: str, seed: int) -> dict:
    from lesion.finetune import run_finetune

    started = time.time()
    overrides = dict(kv.split("=", 1) for kv in args.ft_set)
    if args.lr is not None:
        overrides.setdefault("lr", str(args.lr))
    out = run_finetune(from_flat(FinetuneConfig, {
        **common(args), "seed": seed, "label_fraction": args.label_fraction, "epochs": args.epochs,
        "external": args.external, "encoder_init": encoder_init, "run_name": default_run_name(name),
        "register": False, **overrides}))
    kept = out["history"][out["epoch"]]  # the weights finetune hands on (keep: last by default, or best)
    last5 = sum(h["val/jaccard"] for h in out["history"][-5:]) / len(out["history"][-5:])
    return {"name": name, "init": "random" if encoder_init == "random" else "SSL", "seed": seed, "kept": kept,
            "last": out["history"][-1], "last5": last5, "external": out["external"] or {},
            "minutes": (time.time() - started) / 60}


def mean_row(rows: list[dict], init: str, labels: str, epochs: int) -> list[object]:
    """The mean over seeds of one init's kept-model and last-5 Jaccard (and its spread)."""
    best = np.array([r["kept"]["val/jaccard"] for r in rows if r["init"] == init])
    last5 = np.array([r["last5"] for r in rows if r["init"] == init])
    ext = np.array([r["external"].get("jaccard", np.nan) for r in rows if r["init"] == init])
    poor = np.array([r["external"].get("jaccard_below_half", np.nan) for r in rows if r["init"] == init])
    return [f"**{init}, mean of {len(best)}**", labels, epochs, f"**{best.mean():.4f}** ± {best.std(ddof=1):.4f}",
            f"{np.mean([r['kept']['val/dice'] for r in rows if r['init'] == init]):.4f}", "",
            f"{last5.mean():.4f}", f"**{ext.mean():.4f}** ± {ext.std(ddof=1):.4f}", f"{poor.mean():.0f}", ""]


def paired_gains(rows: list[dict]) -> list[str]:
    """SSL minus random on each labelled subset where both ran: the comparison the spread between subsets hides."""
    by_seed = {(r["init"], r["seed"]): r for r in rows}
    seeds = [s for (init, s) in by_seed if init == "SSL" and ("random", s) in by_seed]
    lines = []
    for label, value in (("kept model", lambda r: r["kept"]["val/jaccard"]), ("mean of last 5", lambda r: r["last5"]),
                         ("external set, kept model", lambda r: r["external"].get("jaccard", np.nan))):
        gains = np.array([value(by_seed["SSL", s]) - value(by_seed["random", s]) for s in seeds])
        if len(gains):
            lines.append(f"SSL - random, {label}: mean {gains.mean():+.4f}, ahead on {(gains > 0).sum()} of {len(gains)} "
                         f"subsets ({', '.join(f'{g:+.3f}' for g in gains)})")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SAMPLE))
    parser.add_argument("--size", type=int, default=128, help="working resolution (128 keeps CPU runs short)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--ssl_epochs", type=int, default=8, help="pretraining epochs")
    parser.add_argument("--ssl_lr", type=float, default=1e-3)
    parser.add_argument("--epochs", type=int, default=30, help="fine-tuning epochs (both inits)")
    parser.add_argument("--unlabeled", default="",
                        help="extra unlabelled folder to pretrain on, e.g. ../shared/data/ham10000/unlabeled (9,381 images)")
    parser.add_argument("--external", default=str(EXTERNAL),
                        help="labelled set from another source, scored with each fine-tune's kept weights ('': none)")
    parser.add_argument("--lr", type=float, default=None, help="fine-tuning lr (both inits; default: lesion's)")
    parser.add_argument("--label_fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0, help="pretraining seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="fine-tuning seeds: each draws its own labelled subset; both inits run on each")
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                        help="extra pretrain parameters, e.g. queue_size=256 tile_jitter=0.2")
    parser.add_argument("--ft_set", nargs="*", default=[], metavar="NAME=VALUE",
                        help="extra fine-tuning parameters (both inits), e.g. encoder_lr_scale=0.1")
    parser.add_argument("--encoder_init", default="", help="skip pretraining: fine-tune from this encoder URI/folder")
    parser.add_argument("--ssl_only", action="store_true",
                        help="skip the random-init fine-tunes (for ablations against a baseline already measured)")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{HERE / 'mlflow.db'}")
    started = time.time()
    tag = (f"{args.size}px-e{args.ssl_epochs}-s{args.seed}" + (f"-pool{Path(args.unlabeled).name}" if args.unlabeled else "")
           + set_tag(args.set + args.ft_set))
    labels = f"{args.label_fraction:.0%}"

    pre = None
    encoder = args.encoder_init
    if not encoder:
        pre = pretrain(args, tag)
        encoder = f"models:/lesion-encoder/{pre['version']}"
    rows = []
    for seed in args.seeds:
        rows.append(finetune(args, f"ssl-init-{labels}-{tag}-ft{seed}", encoder, seed))
        if not args.ssl_only:
            rows.append(finetune(args, f"random-init-{labels}-{tag}-ft{seed}", "random", seed))

    print(f"\nmachine: {machine()}")
    print(f"command: python -m benchmarks.ssl_pretrain {' '.join(sys.argv[1:])}")
    print(f"wall time: {(time.time() - started) / 60:.1f} min")
    if pre is not None:
        first, last = pre["history"][0], pre["history"][-1]
        print(f"pretraining: {pre['images']} images, {len(pre['history'])} epochs, {pre['minutes']:.1f} min, "
              f"loss {first['pretrain/loss']:.3f} -> {last['pretrain/loss']:.3f} "
              f"(reconstruction {first['pretrain/reconstruction']:.3f} -> {last['pretrain/reconstruction']:.3f}, "
              f"invariance {first['pretrain/invariance']:.3f} -> {last['pretrain/invariance']:.3f})\n")
    print(f"SSL encoder: {encoder}")
    table = [[f"{r['init']}, seed {r['seed']}", labels, args.epochs,
              f"{r['kept']['val/jaccard']:.4f} ({r['kept']['epoch'] + 1})", f"{r['kept']['val/dice']:.4f}",
              f"{r['last']['val/jaccard']:.4f}", f"{r['last5']:.4f}", f"{r['external'].get('jaccard', np.nan):.4f}",
              f"{r['external'].get('jaccard_below_half', np.nan):.0f}", f"{r['minutes']:.1f}"] for r in rows]
    if len(args.seeds) > 1:
        table += [mean_row(rows, init, labels, args.epochs) for init in ("SSL", "random") if any(r["init"] == init for r in rows)]
    print_table(["init", "labels", "epochs", "val/jaccard of the kept model (epoch)", "its val/dice",
                 "val/jaccard last epoch", "mean of last 5", "its ext J", "ext masks J < 0.5", "minutes"], table)
    print("\n".join(paired_gains(rows)))


if __name__ == "__main__":
    main()
