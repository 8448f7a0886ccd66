"""The pretrain stage: learn the segmentation encoder from unlabelled images.

Loss = reconstruction_weight * (L1 + MSE)(decoder(encoder(puzzle)), image)
     + invariance_weight * InfoNCE(embed(image), embed(puzzle))

It trains on the training split (masks ignored) plus any `unlabeled`
folders. Validation and test images are left out on purpose: pretraining on
them would be transductive and flatter every comparison made on them.
The encoder is saved as safetensors with its name and registered as
`lesion-encoder` (alias `ssl`), ready for `finetune --encoder_init
models:/lesion-encoder@ssl`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from lesion.config import PretrainConfig, to_flat
from lesion.data.datasets import ImageDataset
from lesion.data.prepare import prepare_data
from lesion.data.transforms import denormalize, plain_transform
from lesion.errors import ConfigError
from lesion.models.io import save_encoder
from lesion.ssl.losses import EmbeddingQueue, info_nce, reconstruction_loss
from lesion.ssl.model import JigsawAutoEncoder
from lesion.ssl.puzzles import make_puzzle
from lesion.tracking import ENCODER, Tracker, write_json
from lesion.train.checkpoint import load_checkpoint, save_checkpoint
from lesion.train.engine import build_optimizer, lr_lambda, make_accelerator, resolve_workers
from lesion.train.finetune import fresh_workdir, shared_run_name


def _picture(images: torch.Tensor, puzzles: torch.Tensor, reconstructions: torch.Tensor, count: int = 4) -> np.ndarray:
    """Rows of original | puzzle | reconstruction."""
    rows = []
    for image, puzzle, recon in list(zip(images, puzzles, reconstructions))[:count]:
        rows.append(np.concatenate([denormalize(t.detach().float().cpu().numpy()) for t in (image, puzzle, recon)], 1))
    return np.concatenate(rows, 0)


def register_encoder(tracker: Tracker, folder: Path, tags: dict[str, Any]) -> str | None:
    """Log the encoder folder and register it as a lesion-encoder version with alias `ssl`."""
    if not tracker.active:
        return None
    import mlflow
    from mlflow.tracking import MlflowClient

    tracker.log_artifact(folder, "encoder")
    client = MlflowClient()
    try:
        client.create_registered_model(ENCODER)
    except Exception:  # already exists
        pass
    # A plain artifact folder (not an MLflow model): register it by its artifact location.
    source = f"{mlflow.get_run(tracker.run_id).info.artifact_uri}/encoder"
    version = client.create_model_version(ENCODER, source=source, run_id=tracker.run_id,
                                          tags={k: str(v) for k, v in tags.items()}).version
    client.set_registered_model_alias(ENCODER, "ssl", str(version))
    tracker.set_tags({"lesion.encoder_version": version})
    return str(version)


def run_pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    ssl, train = cfg.ssl, cfg.train
    if ssl.grid < 2:
        raise ConfigError(f"grid={ssl.grid} must be at least 2")
    if not 0 <= ssl.tile_jitter < 0.5:
        raise ConfigError(f"tile_jitter={ssl.tile_jitter} must be in [0, 0.5)")
    accelerator = make_accelerator(train)
    main = accelerator.is_main_process
    tracker = Tracker(enabled=main)
    run_name = shared_run_name(accelerator, cfg.run.run_name, "pretrain")
    workdir = Path(cfg.run.output_dir) / "pretrain" / run_name
    with tracker.run("pretrain", run_name, cfg.run.experiment, params=to_flat(cfg),
                     tags={"lesion.num_processes": accelerator.num_processes}):
        fresh_workdir(accelerator, tracker, workdir)
        data = prepare_data(cfg.data, cfg.run.seed, workdir, main, accelerator.wait_for_everyone)
        rows = [r for r in data.rows if r.split in ("train", "unlabeled")]
        if len(rows) < 2:
            raise ConfigError(f"{cfg.data.data}: pretraining needs at least 2 training or unlabeled images")
        tracker.log_artifact(data.manifest, "data")
        if main:
            write_json(workdir / "plan.json", {**to_flat(cfg), "image_size": data.image_size, "images": len(rows),
                                               "num_processes": accelerator.num_processes})
            tracker.log_artifact(workdir / "plan.json", "plan")

        set_seed(cfg.run.seed, deterministic=not torch.cuda.is_available())
        model = JigsawAutoEncoder(ssl.encoder, ssl.projection_dim)
        dataset = ImageDataset([r.image for r in rows], data.image_size, data.cache, cfg.data.max_pixels,
                               transform=plain_transform(cfg.run.seed))
        loader = DataLoader(dataset, train.batch_size, shuffle=True, drop_last=len(dataset) > train.batch_size,
                            num_workers=resolve_workers(cfg.data.num_workers),
                            generator=torch.Generator().manual_seed(cfg.run.seed))
        optimizer = build_optimizer(model, train)
        steps_per_epoch = max(1, math.ceil(len(loader) / accelerator.num_processes) // train.grad_accum)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(train, steps_per_epoch * train.epochs,
                                                                           steps_per_epoch))
        model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
        queue = EmbeddingQueue(ssl.queue_size, ssl.projection_dim)

        progress = load_checkpoint(accelerator, workdir) or {"epoch": -1, "history": []}
        history: list[dict[str, float]] = progress["history"]
        if progress["epoch"] >= 0 and main:
            tqdm.write(f"[lesion] resuming pretraining at epoch {progress['epoch'] + 2}")
        for record in history:
            tracker.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=int(record["epoch"]))
        for epoch in range(progress["epoch"] + 1, train.epochs):
            set_seed(cfg.run.seed * 1000 + epoch, deterministic=not torch.cuda.is_available())
            generator = torch.Generator().manual_seed(cfg.run.seed * 1000 + epoch)
            dataset.transform.set_random_seed(cfg.run.seed * 1000 + epoch)
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch)
            model.train()
            sums = torch.zeros(3, device=accelerator.device)
            batches = 0
            bar = tqdm(loader, desc=f"pretrain epoch {epoch + 1}/{train.epochs}", leave=False, disable=not main)
            for batch in bar:
                images = batch["image"]
                puzzles, _ = make_puzzle(images.cpu(), ssl.grid, ssl.tile_jitter, ssl.tile_color_jitter, generator)
                puzzles = puzzles.to(images.device)
                with accelerator.accumulate(model):
                    reconstruction, z_image, z_puzzle = model(images, puzzles)
                    rec = reconstruction_loss(reconstruction, images)
                    inv = info_nce(z_image, z_puzzle, ssl.temperature, queue())
                    loss = ssl.reconstruction_weight * rec + ssl.invariance_weight * inv
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"pretraining loss became {loss.item()}; lower lr (now {train.lr})")
                    accelerator.backward(loss)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                queue.push(z_puzzle)
                sums += torch.stack([loss.detach(), rec.detach(), inv.detach()])
                batches += 1
                bar.set_postfix(loss=f"{loss.item():.3f}")
                if train.max_steps and batches >= train.max_steps:
                    break
            means = accelerator.reduce(sums / max(1, batches), reduction="mean").tolist()
            record = {"epoch": epoch, "pretrain/loss": means[0], "pretrain/reconstruction": means[1],
                      "pretrain/invariance": means[2], "train/lr": scheduler.get_last_lr()[0]}
            history.append(record)
            save_checkpoint(accelerator, workdir, {"epoch": epoch, "history": history})
            tracker.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=epoch)
            if main:
                tqdm.write(f"[lesion] pretrain epoch {epoch + 1}/{train.epochs} loss {means[0]:.4f} "
                           f"(reconstruction {means[1]:.4f}, invariance {means[2]:.4f})")
                last = epoch == train.epochs - 1
                if last or (train.picture_every and (epoch + 1) % train.picture_every == 0):
                    tracker.log_image(_picture(images, puzzles, reconstruction),
                                      f"pictures/puzzles_epoch_{epoch + 1:03d}.png")

        out: dict[str, Any] = {"run_id": tracker.run_id, "history": history, "workdir": str(workdir)}
        if main:
            from lesion.plots import learning_curves

            tracker.log_figure(learning_curves(history, "pretrain"), "plots/pretrain_curves.png")
            encoder = accelerator.unwrap_model(model).encoder
            folder = save_encoder(encoder, ssl.encoder, workdir / "encoder", image_size=data.image_size,
                                  epochs=len(history), run_id=tracker.run_id)
            out["encoder_dir"] = str(folder)
            if cfg.run.register:
                out["version"] = register_encoder(tracker, folder, {
                    "encoder": ssl.encoder, "data": cfg.data.data, "image_size": data.image_size,
                    "epochs": len(history), "parent_run": tracker.run_id, "role": "ssl"})
                print(f"[lesion] registered lesion-encoder v{out['version']} (alias ssl); fine-tune with "
                      f"encoder_init=models:/lesion-encoder@ssl encoder={ssl.encoder}")
            write_json(workdir / "result.json", {k: v for k, v in out.items() if k != "history"})
        accelerator.wait_for_everyone()
    return out
