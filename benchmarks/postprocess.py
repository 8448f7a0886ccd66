"""Post-processing modes compared on models already trained: one prediction per image, every mode's mask.

    python -m benchmarks.postprocess MODEL [MODEL ...]     # folders or URIs; a stage's is in its stage.json (model_dir)
    python -m benchmarks.postprocess MODEL --modes largest_fill central_fill --changes

Each model predicts once on the sample's validation split (--data) and on the external set (--external); each
mode of lesion.postprocess then turns the same probabilities into the mask a user gets, scored by lesion's own
scorer (threshold 0.5 at the original size, ISIC metrics, macro-averaged). Prints, per model and mode, the
Jaccard and the masks with J < 0.5 on both sets, a row as each model is done; --changes lists the images whose
Jaccard the last mode changes from the one before it. Nothing is trained: about a minute per model on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace

import torch

from benchmarks.common import EXTERNAL, SAMPLE, machine, print_table
from lesion.config import DataConfig
from lesion.data.datasets import SegmentationDataset
from lesion.data.prepare import prepare_data
from lesion.errors import LesionError
from lesion.inference import predict_probabilities, score_prediction
from lesion.metrics import per_image_scores
from lesion.postprocess import MODES
from lesion.registry import load_model


def probabilities(model, data: str, split: str | None, size: int) -> tuple[list[str], list, list]:
    """Working-size probabilities and original-size truths of the labelled images of one split (None: all)."""
    with tempfile.TemporaryDirectory() as out:
        prepared = prepare_data(DataConfig(data=data, image_size=size), 0, out, progress=False)
    rows = [replace(r, labelled=True) for r in prepared.rows if r.mask and split in (None, r.split)]
    dataset = SegmentationDataset(rows, prepared.cache, color_constancy=model.config.color_constancy)
    probs = [predict_probabilities(model, dataset[i]["image"][None])[0, 0] for i in range(len(rows))]
    truths = [prepared.cache.original_mask(r.image, r.mask) for r in rows]
    return [r.id for r in rows], probs, truths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="model folders (with model.json) or model URIs")
    parser.add_argument("--data", default=str(SAMPLE), help="scored on its validation split")
    parser.add_argument("--external", default=str(EXTERNAL), help="scored whole ('': none)")
    parser.add_argument("--modes", nargs="+", default=["none", "largest_fill", "central_fill"], choices=MODES)
    parser.add_argument("--changes", action="store_true",
                        help="list the images the last mode scores differently from the one before it")
    args = parser.parse_args()
    if args.changes and len(args.modes) < 2:
        parser.error("--changes compares the last two --modes; give at least two")
    sets = [("val", args.data, "val")] + ([("external", args.external, None)] if args.external else [])
    header = ["model", *(f"{name} J (J < 0.5): {mode}" for name, _, _ in sets for mode in args.modes)]
    started = time.time()
    try:
        models = [(source, *load_model(source)) for source in args.models]  # every one readable before hours of work
        print(f"machine: {machine()}\n")
        print_table(header, [])
        for source, model, meta in models:
            print("| " + " | ".join(score_model(source, model, meta, sets, args.modes, args.changes)) + " |", flush=True)
    except LesionError as err:
        sys.exit(f"benchmarks.postprocess: error: {err}")
    print(f"\nwall time: {(time.time() - started) / 60:.1f} min")


def score_model(source: str, model, meta: dict, sets: list, modes: list[str], changes: bool) -> list[str]:
    model.eval()
    scores = {}
    for name, data, split in sets:
        ids, probs, truths = probabilities(model, data, split, int(meta["image_size"]))
        for mode in modes:
            counts = torch.stack([torch.as_tensor(score_prediction(p, t, mode)[:4]) for p, t in zip(probs, truths)])
            scores[name, mode] = per_image_scores(counts.numpy())["jaccard"]
        if changes:
            before, after = scores[name, modes[-2]], scores[name, modes[-1]]
            for i, b, a in zip(ids, before, after):
                if abs(a - b) > 1e-3:
                    print(f"  {source} {name} {i}: {b:.3f} -> {a:.3f}", file=sys.stderr)
    return [source, *(f"{scores[name, mode].mean():.4f} ({int((scores[name, mode] < 0.5).sum())})"
                      for name, _, _ in sets for mode in modes)]


if __name__ == "__main__":
    main()
