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

It runs like fit(): Accelerate (any number of processes, bf16 on GPU), only
the main process logs and writes, everything random is seeded by (seed,
epoch[, image]), and re-running the same run_name resumes from the last
epoch's state. The encoder is saved as safetensors + its name and registered
as `lesion-encoder` (alias `ssl`): `finetune --encoder_init
models:/lesion-encoder@ssl` starts from it, for any architecture.
"""

from __future__ import annotations

from typing import Any

import torch
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from lesion.config import PretrainConfig, to_flat
from lesion.data.datasets import ImageDataset, epoch_seed, seed_worker
from lesion.data.prepare import resolve_image_size
from lesion.data.transforms import plain_transform
from lesion.errors import DataError, TrainingError
from lesion.models.io import save_encoder
from lesion.outputs import write_json
from lesion.progress import bar, say
from lesion.registry import ENCODER, register_encoder
from lesion.ssl.losses import EmbeddingQueue, info_nce, place_loss, reconstruction_loss, tile_info_nce
from lesion.ssl.model import JigsawAutoEncoder
from lesion.ssl.pretext import (METRICS, PRETRAIN_AUGMENTATION, PuzzleDataset, check_config, loss_curves, picture,
                                puzzle_side)
from lesion.stage import stage
from lesion.train.checkpoint import finish, finished, load_checkpoint, load_extra, save_checkpoint
from lesion.train.engine import build_optimizer, build_scheduler, resolve_mixed_precision, resolve_workers

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
        optimizer = build_optimizer(model, train)
        scheduler, _ = build_scheduler(optimizer, train, len(loader), accelerator.num_processes)
        accelerator.free_memory()  # only this stage's objects in save_state/load_state
        model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
        queue = EmbeddingQueue(ssl.queue_size, ssl.projection_dim, accelerator.device)
        # finished: the epochs ran before a later crash (saving, registering), and the encoder is on disk.
        done = finished(workdir)
        progress = done or load_checkpoint(accelerator, workdir) or {"epoch": -1, "step": 0, "history": []}
        if "queue" in (extra := load_extra(workdir)):
            queue.load_state_dict({"items": extra["queue"]})
        history: list[dict[str, float]] = progress["history"]
        step = progress["step"]
        if history and main and done is None:
            say(f"[lesion] resuming pretraining at epoch {progress['epoch'] + 2} from {workdir}")
        for record in history:  # re-log what a crash kept out of MLflow (steps already there are skipped)
            tracker.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=int(record["epoch"]))
        # Fixed, unaugmented images and puzzles: the pictures of every epoch are comparable.
        shown = ImageDataset(paths[:4], data.image_size, data.cache, cfg.data.max_pixels,
                             color_constancy=ssl.color_constancy)
        shown_images = torch.stack([shown[i]["image"] for i in range(len(shown))])
        shown_puzzles, _ = dataset.puzzle(shown_images, torch.Generator().manual_seed(seed))

        for epoch in range(progress["epoch"] + 1, train.epochs):
            if train.max_steps and step >= train.max_steps:
                break
            set_seed(epoch_seed(seed, epoch), deterministic=not torch.cuda.is_available())
            dataset.set_epoch(epoch)
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch)
            model.train()
            sums, batches = torch.zeros(len(METRICS), device=accelerator.device), 0
            steps = bar(loader, f"pretrain epoch {epoch + 1}/{train.epochs}", enabled=main, unit="batches",
                        heartbeat=False)
            for batch in steps:
                with accelerator.accumulate(model):
                    outputs = model(batch["image"], batch["puzzle"])
                    rec = reconstruction_loss(outputs.reconstruction, batch["image"])
                    inv = info_nce(outputs.z_image, outputs.z_puzzle, ssl.temperature, queue.negatives())
                    tile_inv = tile_info_nce(outputs.tiles_image, outputs.tiles_puzzle, batch["perms"], ssl.temperature)
                    place, accuracy = place_loss(outputs.places, batch["perms"])
                    loss = (ssl.reconstruction_weight * rec + ssl.invariance_weight * inv
                            + ssl.tile_invariance_weight * tile_inv + ssl.place_weight * place)
                    if not torch.isfinite(loss):
                        raise TrainingError(f"pretraining loss became {loss.item()} at epoch {epoch + 1}; "
                                            f"lower lr (now {train.lr}) and run again with a new run_name")
                    accelerator.backward(loss)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                queue.push(accelerator.gather(outputs.z_image.detach()))  # every rank keeps the same queue
                sums += torch.stack([loss, rec, inv, tile_inv, place, accuracy]).detach()
                batches += 1
                step += int(accelerator.sync_gradients)
                steps.set_postfix(loss=f"{loss.item():.3f}")
                if train.max_steps and step >= train.max_steps:
                    break
            means = accelerator.reduce(sums / max(1, batches), reduction="mean").tolist()
            record = {"epoch": epoch, **dict(zip(METRICS, means)), "train/lr": scheduler.get_last_lr()[0]}
            history.append(record)
            # Checkpoint first, then log: a crash in between re-logs on resume, never twice.
            save_checkpoint(accelerator, workdir, {"epoch": epoch, "step": step, "history": history},
                            extra={"queue": queue.state_dict()["items"]})
            tracker.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=epoch)
            if main:
                say(f"[lesion] pretrain epoch {epoch + 1}/{train.epochs} loss {means[0]:.4f} "
                    f"(reconstruction {means[1]:.4f}, invariance {means[2]:.4f}, tile invariance {means[3]:.4f}, "
                    f"place {means[4]:.4f}, tiles placed right {means[5]:.0%})")
                last = epoch == train.epochs - 1 or bool(train.max_steps and step >= train.max_steps)
                if last or (train.picture_every and (epoch + 1) % train.picture_every == 0):
                    net = accelerator.unwrap_model(model).eval()
                    with torch.no_grad():
                        rebuilt, places = net.solve(shown_puzzles.to(accelerator.device))
                    columns, titles = [shown_images, shown_puzzles, rebuilt], ["image", "puzzle", "reconstruction"]
                    if ssl.place_weight > 0:  # the tiles where the network places them
                        columns.append(dataset.assemble(shown_puzzles, places))
                        titles.append("tiles placed")
                    tracker.log_image(picture(columns, titles), f"pictures/puzzles_epoch_{epoch + 1:03d}.png")

        out: dict[str, Any] = {"run_id": tracker.run_id, "run_name": run_name, "history": history,
                               "workdir": str(workdir), "images": len(rows)}
        if main and history:
            tracker.log_figure(loss_curves(history), "plots/pretrain_curves.png")
            folder = workdir / "encoder"
            if done is None:  # else the model is fresh: the trained encoder is the one saved before
                folder = save_encoder(accelerator.unwrap_model(model).encoder, ssl.encoder, folder,
                                      image_size=data.image_size, epochs=len(history), data=cfg.data.data,
                                      run_id=tracker.run_id,
                                      color_constancy=ssl.color_constancy)
            out["encoder_dir"] = str(folder)
            if cfg.run.register and tracker.active:
                out["version"] = register_encoder(tracker, folder, {
                    "encoder": ssl.encoder, "data": cfg.data.data, "image_size": data.image_size,
                    "epochs": len(history), "parent_run": tracker.run_id, "images": len(rows), "role": "ssl"})
                print(f"[lesion] registered {ENCODER} v{out['version']} (alias ssl); fine-tune from it with "
                      f"--encoder_init models:/{ENCODER}@ssl --encoder {ssl.encoder}")
            write_json(workdir / "result.json", {k: v for k, v in out.items() if k != "history"})
        # The encoder is saved: the resume state (model, decoder, optimizer, queue) is no longer needed.
        finish(accelerator, workdir, {"epoch": history[-1]["epoch"] if history else -1, "step": step,
                                      "history": history})
    return out
