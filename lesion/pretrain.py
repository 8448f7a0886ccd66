"""The pretrain entry point: learn the segmentation encoder from unlabelled images (the pretext: lesion.ssl).

    loss = reconstruction_weight * (L1 + MSE)(decoder(encoder(puzzle)), image)
         + invariance_weight * InfoNCE(embed(image), embed(puzzle), temperature)
         + tile_invariance_weight * InfoNCE(embed(tile in place), embed(the same tile in the puzzle))
         + place_weight * CrossEntropy(locate(encoder(puzzle)), where each tile came from)

The puzzle is the image cut into grid x grid tiles, each tile cropped and
colour-jittered, then shuffled (lesion.ssl.puzzles): reconstructing the
original from it needs an encoder that knows what a lesion and its border look
like. InfoNCE makes the pooled embedding of an image match its puzzle's
against the other images of the batch (and a queue of past ones when
queue_size > 0). The place term asks, for each tile of the puzzle, which of
the grid x grid places it was cut from: the direct form of "solving the
puzzle" that the reconstruction only asks for implicitly (without it the
decoder settles for a centred blob in the image's colours). Its accuracy is
logged as pretrain/place_accuracy (chance: 1 / grid^2).

Data: the training split (masks ignored) plus every `unlabeled` folder.
Validation and test images are left out on purpose: pretraining on them would
be transductive and flatter every fine-tuning comparison made on them.

It is fit() with the Jigsaw task (lesion.ssl.pretext): Accelerate (any
number of processes, bf16 on GPU), only the main process logs and writes,
everything random is seeded by (seed, epoch[, image]), and re-running the same
run_name resumes from the last epoch's state. The encoder is saved as
safetensors + its name (SaveEncoder, before the resume state goes) and
registered here as `lesion-encoder` (alias `ssl`): `finetune --encoder_init
models:/lesion-encoder@ssl` starts from it, for any architecture.
"""

from __future__ import annotations

from typing import Any

import torch
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from lesion.config import ENCODER, PretrainConfig, to_flat
from lesion.data.datasets import ImageDataset, seed_worker
from lesion.data.prepare import resolve_image_size
from lesion.data.transforms import plain_transform
from lesion.errors import DataError
from lesion.outputs import write_json
from lesion.registry import register_encoder
from lesion.ssl.model import JigsawAutoEncoder
from lesion.ssl.pretext import (PRETRAIN_AUGMENTATION, Jigsaw, PuzzleDataset, SaveEncoder, check_config, loss_curves,
                                puzzle_side)
from lesion.stage import stage
from lesion.train.callbacks import Logging, Pictures
from lesion.train.engine import FitContext, fit, resolve_mixed_precision, resolve_workers

PRETRAIN_SPLITS = ("train", "unlabeled")


def run_pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    ssl, train, seed = cfg.ssl, cfg.train, cfg.run.seed
    check_config(ssl, resolve_image_size(cfg.data))
    with stage("pretrain", cfg, need_labels=False) as ctx:
        accelerator, tracker, workdir, data, main = ctx.accelerator, ctx.tracker, ctx.workdir, ctx.data, ctx.main
        run_name = ctx.run_name
        rows = [r for r in data.rows if r.split in PRETRAIN_SPLITS]
        if len(rows) < 2:
            raise DataError(f"{cfg.data.data}: pretraining needs at least 2 training or unlabeled images, found {len(rows)}")
        if main:
            write_json(workdir / "plan.json", {
                **to_flat(cfg), "image_size": data.image_size, "puzzle_side": puzzle_side(data.image_size, ssl.grid),
                "pretrain_images": len(rows), "pretrain_splits": list(PRETRAIN_SPLITS),
                "num_processes": accelerator.num_processes, "device": str(accelerator.device),
                "mixed_precision": resolve_mixed_precision(train.mixed_precision),
                "num_workers": resolve_workers(cfg.data.num_workers), "data_summary": data.summary()})
            tracker.log_artifact(workdir / "plan.json", "plan")

        set_seed(seed, deterministic=not torch.cuda.is_available())  # the same initial weights every run
        model = JigsawAutoEncoder(ssl.encoder, ssl.projection_dim, ssl.grid)
        paths = [r.image for r in rows]
        dataset = PuzzleDataset(ImageDataset(paths, data.image_size, data.cache, cfg.data.max_pixels,
                                             transform=plain_transform(seed, PRETRAIN_AUGMENTATION),
                                             color_constancy=ssl.color_constancy), ssl, seed)
        loader = DataLoader(dataset, train.batch_size, shuffle=True, drop_last=len(dataset) > train.batch_size,
                            num_workers=resolve_workers(cfg.data.num_workers), worker_init_fn=seed_worker,
                            generator=torch.Generator().manual_seed(seed))
        # Fixed, unaugmented images and puzzles: the pictures of every epoch are comparable.
        shown = ImageDataset(paths[:4], data.image_size, data.cache, cfg.data.max_pixels,
                             color_constancy=ssl.color_constancy)
        shown_images = torch.stack([shown[i]["image"] for i in range(len(shown))])
        shown_puzzles, _ = dataset.puzzle(shown_images, torch.Generator().manual_seed(seed))
        task = Jigsaw(ssl, dataset, accelerator, shown_images, shown_puzzles)
        # The encoder is saved before the resume state goes: a crash after that reuses it, never a fresh model's.
        folder = workdir / "encoder"
        callbacks = [SaveEncoder(folder, ssl.encoder, data.image_size, cfg.data.data, tracker.run_id,
                                 ssl.color_constancy),
                     Logging(tracker, loss_curves, "plots/pretrain_curves.png"),
                     Pictures(tracker, task.picture, train.picture_every, "puzzles_")]
        history = fit(model, task, {"train": loader}, train, FitContext(accelerator, workdir, seed, "pretrain"),
                      callbacks).history

        out: dict[str, Any] = {"run_id": tracker.run_id, "run_name": run_name, "history": history,
                               "workdir": str(workdir), "images": len(rows)}
        if main and history:
            out["encoder_dir"] = str(folder)
            if cfg.run.register and tracker.active:
                out["version"] = register_encoder(tracker, folder, {
                    "encoder": ssl.encoder, "data": cfg.data.data, "image_size": data.image_size,
                    "epochs": len(history), "parent_run": tracker.run_id, "images": len(rows), "role": "ssl"})
                print(f"[lesion] registered {ENCODER} v{out['version']} (alias ssl); fine-tune from it with "
                      f"--encoder_init models:/{ENCODER}@ssl --encoder {ssl.encoder}")
            write_json(workdir / "result.json", {k: v for k, v in out.items() if k != "history"})
    return out
