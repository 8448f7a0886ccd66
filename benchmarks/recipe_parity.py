"""Recipe parity: lesion's defaults against a plain ~80-line smp loop, same model, data, size and budget.

    python -m benchmarks.recipe_parity                       # 10% and 100% of the labels, seeds 0 1 2
    python -m benchmarks.recipe_parity --fractions 1.0 --seeds 0 --lesion_set lr=1e-3 schedule=cosine

For every (label fraction, seed):
1. `lesion finetune` with its defaults (plus --lesion_set), arch/encoder/epochs/batch/size fixed by the budget;
2. the reference loop below on exactly the images lesion trained and validated on (read from its manifest):
   smp and torch only, AdamW (wd 1e-4), one-cycle to 3e-3, flips + rot90 + brightness jitter, BCE + smp's
   Dice loss, inputs normalised by the training images' mean and std;
3. both are scored on the validation split at each mask's original resolution, and on the external set
   (--external, default ../shared/data/ham10000/test) with the weights each hands on (lesion: keep, the final
   weights by default; the reference: its best epoch).

The reference scores with its own few lines of numpy (per-image Jaccard at the original size, mean over
images); lesion's model is also scored by that code, so a difference in the evaluation path shows up as a
difference between the columns "lesion" and "lesion, reference scorer".
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import EXTERNAL, SAMPLE, machine, print_table, set_tag

HERE = Path(__file__).resolve().parent


# --------------------------------------------------------------------------- the plain reference (smp + torch)


def read_rgb(path: str) -> np.ndarray:
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))


def read_mask(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("L")) > 128


def load_set(pairs: list[tuple[str, str]], size: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Images resized to size x size (uint8), masks at size (float) and at their original size (bool)."""
    import cv2

    images, masks, originals = [], [], []
    for image_path, mask_path in pairs:
        image, mask = read_rgb(image_path), read_mask(mask_path)
        images.append(cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA))
        masks.append(cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA) >= 0.5)
        originals.append(mask)
    return np.stack(images), np.stack(masks).astype(np.float32), originals


def jaccard_at_original_size(probs: np.ndarray, originals: list[np.ndarray]) -> np.ndarray:
    """Per-image Jaccard of (N, S, S) probabilities upsampled bilinearly to each mask's size, cut at 0.5."""
    import torch
    import torch.nn.functional as F

    scores = []
    for prob, truth in zip(probs, originals):
        up = F.interpolate(torch.from_numpy(prob)[None, None], size=truth.shape, mode="bilinear",
                           align_corners=False)[0, 0].numpy() >= 0.5
        union = (up | truth).sum()
        scores.append(1.0 if union == 0 else (up & truth).sum() / union)
    return np.array(scores)


def predict(model, images: np.ndarray, mean: np.ndarray, std: np.ndarray, batch: int = 16) -> np.ndarray:
    import torch

    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = (torch.from_numpy(images[i:i + batch]).float().permute(0, 3, 1, 2) / 255 - mean) / std
            out.append(torch.sigmoid(model(x))[:, 0].numpy())
    return np.concatenate(out)


def reference_loop(train, val, external, args, seed: int) -> dict:
    """The plain loop: what an engineer writes in an afternoon with smp and torch."""
    import segmentation_models_pytorch as smp
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x_train, y_train, _ = train
    mean = torch.tensor(x_train.reshape(-1, 3).mean(0) / 255).view(1, 3, 1, 1).float()
    std = torch.tensor(x_train.reshape(-1, 3).std(0) / 255).view(1, 3, 1, 1).float()
    model = getattr(smp, {"deeplabv3plus": "DeepLabV3Plus", "unet": "Unet", "deeplabv3": "DeepLabV3",
                          "pspnet": "PSPNet"}[args.arch])(f"tu-{args.encoder}", encoder_weights=None, classes=1)
    steps_per_epoch = len(x_train) // args.batch
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.ref_lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.ref_lr,
                                                   total_steps=args.epochs * steps_per_epoch)
    bce, dice = torch.nn.BCEWithLogitsLoss(), smp.losses.DiceLoss("binary")
    best, best_state, history = -1.0, None, []
    for epoch in range(args.epochs):
        model.train()
        order = rng.permutation(len(x_train))
        for i in range(steps_per_epoch):
            idx = order[i * args.batch:(i + 1) * args.batch]
            x = (torch.from_numpy(x_train[idx]).float().permute(0, 3, 1, 2) / 255)
            y = torch.from_numpy(y_train[idx])[:, None]
            if rng.random() < 0.5:
                x, y = x.flip(3), y.flip(3)
            if rng.random() < 0.5:
                x, y = x.flip(2), y.flip(2)
            k = int(rng.integers(4))
            x, y = torch.rot90(x, k, (2, 3)), torch.rot90(y, k, (2, 3))
            x = (x * torch.empty(len(x), 1, 1, 1).uniform_(0.8, 1.2)).clamp(0, 1)
            logits = model((x - mean) / std)
            loss = bce(logits, y) + dice(logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        score = float(jaccard_at_original_size(predict(model, val[0], mean, std), val[2]).mean())
        history.append(score)
        print(f"[reference] epoch {epoch + 1}/{args.epochs} loss {loss.item():.4f} val/jaccard {score:.4f}", flush=True)
        if score > best:
            best, best_state = score, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    out = {"best": best, "best_epoch": int(np.argmax(history)) + 1, "last5": float(np.mean(history[-5:])),
           "history": history}
    if external is not None:
        out["external"] = float(jaccard_at_original_size(predict(model, external[0], mean, std), external[2]).mean())
    return out


# --------------------------------------------------------------------------- lesion


def run_lesion(args, fraction: float, seed: int) -> dict:
    from lesion.config import FinetuneConfig, from_flat
    from lesion.runs import default_run_name
    from lesion.finetune import run_finetune

    tag = f"{args.arch}-{args.size}px-{int(fraction * 100)}pct-s{seed}" + set_tag(args.lesion_set)
    cfg = from_flat(FinetuneConfig, {
        "data": args.data, "image_size": args.size, "batch_size": args.batch, "epochs": args.epochs,
        "arch": args.arch, "encoder": args.encoder, "label_fraction": fraction, "seed": seed,
        "experiment": "lesion-recipe-parity", "output_dir": str(HERE / "outputs"), "run_name": default_run_name(f"parity-{tag}"),
        "register": False, "picture_every": 0, **dict(kv.split("=", 1) for kv in args.lesion_set)})
    out = run_finetune(cfg)
    history = [h["val/jaccard"] for h in out["history"]]
    # lesion's side is the model it hands on (keep=last by default: the final weights; keep=best: the best epoch).
    return {**out, "best": out["val_jaccard"], "best_epoch": out["epoch"] + 1,
            "last5": float(np.mean(history[-5:])), "jaccards": history}


def lesion_external(model_dir: str, external_pairs: list[tuple[str, str]]) -> dict[str, float]:
    """lesion's scores of the model it hands on, on the external set (the masks users get: colour constancy and
    post-processing as saved with the model), and the reference scorer's Jaccard of the raw 0.5 threshold."""
    from lesion.inference import predict_images, score_prediction
    from lesion.metrics import per_image_scores
    from lesion.registry import load_model

    model, meta = load_model(model_dir)
    images = [read_rgb(p) for p, _ in external_pairs]
    truths = [read_mask(m) for _, m in external_pairs]
    size = int(meta["image_size"])
    probs = predict_images(model, images, size, batch_size=16, color_constancy=model.config.color_constancy)
    scores = np.stack([score_prediction(torch_tensor(p), t, model.config.postprocess) for p, t in zip(probs, truths)])
    per_image = per_image_scores(scores[:, :4])
    reference = float(np.mean([((p >= 0.5) & t).sum() / max(1, ((p >= 0.5) | t).sum()) for p, t in zip(probs, truths)]))
    return {"jaccard": float(per_image["jaccard"].mean()), "reference_scorer": reference,
            "degenerate": float(scores[:, 4].mean()), "poor": int((per_image["jaccard"] < 0.5).sum())}


def torch_tensor(prob: np.ndarray):
    """score_prediction takes working-size torch probabilities; these are already at the original size."""
    import torch

    return torch.from_numpy(prob)


def manifest_pairs(path: str, split: str, labelled_only: bool) -> list[tuple[str, str]]:
    with open(path, newline="") as fh:
        return [(r["image"], r["mask"]) for r in csv.DictReader(fh)
                if r["split"] == split and r["mask"] and (r["labelled"] == "True" or not labelled_only)]


def external_pairs(folder: str) -> list[tuple[str, str]]:
    root = Path(folder)
    if not (root / "images").is_dir():
        return []
    return [(str(p), str(root / "masks" / f"{p.stem}_segmentation.png")) for p in sorted((root / "images").glob("*.jpg"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SAMPLE))
    parser.add_argument("--external", default=str(EXTERNAL), help="images/ + masks/ folder scored by both ('' : none)")
    parser.add_argument("--arch", default="deeplabv3plus")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--ref_lr", type=float, default=3e-3, help="the reference loop's one-cycle peak")
    parser.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.1])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lesion_set", nargs="*", default=[], metavar="NAME=VALUE",
                        help="overrides of lesion's defaults (to measure what a change buys)")
    parser.add_argument("--skip_reference", action="store_true", help="lesion only (e.g. for ablations)")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{HERE / 'mlflow.db'}")
    import torch

    torch.set_num_threads(torch.get_num_threads())
    started, command = time.time(), "python -m benchmarks.recipe_parity " + " ".join(sys.argv[1:])
    ext_pairs = external_pairs(args.external) if args.external else []
    external = load_set(ext_pairs, args.size) if ext_pairs else None
    rows, results = [], []
    for fraction in args.fractions:
        for seed in args.seeds:
            t0 = time.time()
            ours = run_lesion(args, fraction, seed)
            minutes_lesion = (time.time() - t0) / 60
            nan = float("nan")
            ext = (lesion_external(ours["model_dir"], ext_pairs) if ext_pairs else
                   {"jaccard": nan, "reference_scorer": nan, "degenerate": nan, "poor": nan})
            result = {"fraction": fraction, "seed": seed, "lesion": ours["best"], "lesion_epoch": ours["best_epoch"],
                      "lesion_last5": ours["last5"], "lesion_ext": ext["jaccard"], "lesion_ext_ref": ext["reference_scorer"],
                      "lesion_ext_degenerate": ext["degenerate"], "lesion_ext_poor": ext["poor"],
                      "minutes_lesion": minutes_lesion}
            if not args.skip_reference:
                t0 = time.time()
                train = load_set(manifest_pairs(Path(ours["workdir"]) / "manifest.csv", "train", True), args.size)
                val = load_set(manifest_pairs(Path(ours["workdir"]) / "manifest.csv", "val", False), args.size)
                ref = reference_loop(train, val, external, args, seed)
                result.update(ref=ref["best"], ref_epoch=ref["best_epoch"], ref_last5=ref["last5"],
                              ref_ext=ref.get("external", float("nan")), minutes_ref=(time.time() - t0) / 60)
            results.append(result)
            print(f"[parity] {result}", flush=True)
    print(f"\nmachine: {machine()}")
    print(f"command: {command}   wall time: {(time.time() - started) / 60:.1f} min\n")
    header = ["labels", "seed", "lesion val J (its epoch)", "lesion last 5", "reference val J (best epoch)",
              "reference last 5", "lesion ext J", "lesion ext J, raw, reference scorer", "reference ext J",
              "lesion ext degenerate", "lesion ext J < 0.5"]
    for r in results:
        rows.append([f"{r['fraction']:.0%}", r["seed"], f"{r['lesion']:.4f} ({r['lesion_epoch']})",
                     f"{r['lesion_last5']:.4f}", f"{r.get('ref', float('nan')):.4f} ({r.get('ref_epoch', '')})",
                     f"{r.get('ref_last5', float('nan')):.4f}", f"{r['lesion_ext']:.4f}", f"{r['lesion_ext_ref']:.4f}",
                     f"{r.get('ref_ext', float('nan')):.4f}", f"{r['lesion_ext_degenerate']:.1%}",
                     f"{r['lesion_ext_poor']}"])
    for fraction in args.fractions:
        group = [r for r in results if r["fraction"] == fraction]

        def ms(key: str) -> str:
            values = np.array([r.get(key, np.nan) for r in group], dtype=float)
            return f"**{np.mean(values):.4f}** ± {np.std(values, ddof=1) if len(values) > 1 else 0:.4f}"

        rows.append([f"**{fraction:.0%}, mean ± sd of {len(group)}**", "", ms("lesion"), ms("lesion_last5"), ms("ref"),
                     ms("ref_last5"), ms("lesion_ext"), ms("lesion_ext_ref"), ms("ref_ext"), ms("lesion_ext_degenerate"),
                     ms("lesion_ext_poor")])
    print_table(header, rows)


if __name__ == "__main__":
    main()
