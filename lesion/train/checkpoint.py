"""Full training state on disk, for crash-resume.

accelerator.save_state writes model, optimizer, scheduler and RNG states into
`state-next/`; the main process adds any extra tensors (`extra.safetensors`,
e.g. the SSL memory queue: never pickled, so loading needs no unpickling of
custom objects), then `progress.json` (epoch, history, best score) last, and
swaps the folder into `state/`. A crash at any point leaves a complete
`state/` or a complete `state-next/`, never a torn one.

When the training is over, finish() keeps the final progress as
`trained.json` and deletes the state (for AdamW three times the model:
weights, two moments): a stage re-entered after a later crash (while logging,
registering) reads its result from there instead of training again.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from lesion.errors import ConfigError
from lesion.outputs import write_json

PROGRESS = "progress.json"
EXTRA = "extra.safetensors"
TRAINED = "trained.json"  # training over (resume state dropped); runs.FINISHED marks the whole run


def latest_state(workdir: str | Path) -> Path | None:
    for name in ("state", "state-next"):
        if (Path(workdir) / name / PROGRESS).is_file():
            return Path(workdir) / name
    return None


def save_checkpoint(accelerator: Accelerator, workdir: str | Path, progress: dict[str, Any],
                    extra: dict[str, torch.Tensor] | None = None) -> None:
    workdir = Path(workdir)
    accelerator.save_state(str(workdir / "state-next"))
    if accelerator.is_main_process:
        if extra:
            save_file({k: v.detach().cpu().contiguous() for k, v in extra.items()}, str(workdir / "state-next" / EXTRA))
        write_json(workdir / "state-next" / PROGRESS, progress)
        shutil.rmtree(workdir / "state", ignore_errors=True)
        os.replace(workdir / "state-next", workdir / "state")
    accelerator.wait_for_everyone()


def load_checkpoint(accelerator: Accelerator, workdir: str | Path) -> dict[str, Any] | None:
    """Restore the prepared objects and RNG states; returns the saved progress, or None for a fresh start."""
    state = latest_state(workdir)
    if state is None:
        return None
    try:
        accelerator.load_state(str(state))
    except (ValueError, RuntimeError, KeyError, EOFError, OSError) as err:
        # Another model, optimizer or lesion version wrote it: say so instead of a torch traceback.
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{state}: cannot resume from this checkpoint ({first}); it was written by another "
                          "configuration or lesion version: pass a new run_name, or delete the folder to start over"
                          ) from None
    return json.loads((state / PROGRESS).read_text())


def load_extra(workdir: str | Path) -> dict[str, torch.Tensor]:
    """The extra tensors of the latest checkpoint ({} when there are none)."""
    state = latest_state(workdir)
    if state is None or not (state / EXTRA).is_file():
        return {}
    return load_file(str(state / EXTRA))


def finish(accelerator: Accelerator, workdir: str | Path, progress: dict[str, Any]) -> None:
    """The training in workdir is over: record its final progress, then drop the resume state."""
    workdir = Path(workdir)
    if accelerator.is_main_process:
        write_json(workdir / TRAINED, progress)  # first: a crash in between leaves both, never neither
        for name in ("state", "state-next"):
            shutil.rmtree(workdir / name, ignore_errors=True)
    accelerator.wait_for_everyone()


def finished(workdir: str | Path) -> dict[str, Any] | None:
    """The final progress of a training that finished in workdir, or None."""
    path = Path(workdir) / TRAINED
    return json.loads(path.read_text()) if path.is_file() else None
