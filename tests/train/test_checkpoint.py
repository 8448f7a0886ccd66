"""Crash-resume state on disk: what is saved comes back, a torn save is never read, a finished training drops it."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from accelerate import Accelerator

from lesion.errors import ConfigError
from lesion.train import checkpoint


def prepared(width: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(width, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    return accelerator, model, optimizer


def one_step(model, optimizer) -> None:
    model(torch.ones(2, model.in_features)).sum().backward()
    optimizer.step()
    optimizer.zero_grad()


def test_a_saved_state_comes_back_with_its_weights_moments_progress_extras_and_rng(tmp_path):
    accelerator, model, optimizer = prepared()
    one_step(model, optimizer)
    progress = {"epoch": 3, "history": [{"val/jaccard": 0.5}], "best": 0.5}
    queue = torch.arange(6.0).reshape(2, 3)
    checkpoint.save_checkpoint(accelerator, tmp_path, progress, extra={"queue": queue})
    saved_weights = {k: v.clone() for k, v in model.state_dict().items()}
    saved_moments = optimizer.state_dict()["state"][0]["exp_avg"].clone()
    after_save = torch.rand(3)  # the RNG state was saved before this draw

    assert (tmp_path / "state" / checkpoint.PROGRESS).is_file() and not (tmp_path / "state-next").exists()
    accelerator, model, optimizer = prepared(seed=1)  # another process: other weights, other RNG
    assert checkpoint.load_checkpoint(accelerator, tmp_path) == progress
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved_weights[key]), key
    assert torch.equal(optimizer.state_dict()["state"][0]["exp_avg"], saved_moments)
    assert torch.equal(torch.rand(3), after_save), "the same random draws as the run that saved"
    assert torch.equal(checkpoint.load_extra(tmp_path)["queue"], queue)


def test_a_fresh_workdir_starts_from_nothing(tmp_path):
    accelerator, *_ = prepared()
    assert checkpoint.latest_state(tmp_path) is None
    assert checkpoint.load_checkpoint(accelerator, tmp_path) is None
    assert checkpoint.load_extra(tmp_path) == {}
    assert checkpoint.finished(tmp_path) is None


def test_a_save_torn_before_its_progress_file_is_never_read(tmp_path):
    accelerator, model, optimizer = prepared()
    checkpoint.save_checkpoint(accelerator, tmp_path, {"epoch": 1})
    # A crash while writing the next one: state-next/ without its progress.json, which is written last.
    accelerator.save_state(str(tmp_path / "state-next"))
    assert checkpoint.latest_state(tmp_path) == tmp_path / "state"
    # A crash between the swap's two steps: only a complete state-next/ is left, and it is read.
    (tmp_path / "state-next" / checkpoint.PROGRESS).write_text(json.dumps({"epoch": 2}))
    shutil.rmtree(tmp_path / "state")
    assert checkpoint.load_checkpoint(accelerator, tmp_path) == {"epoch": 2}


def test_a_checkpoint_of_another_model_is_one_clear_line(tmp_path):
    accelerator, model, optimizer = prepared(width=4)
    checkpoint.save_checkpoint(accelerator, tmp_path, {"epoch": 1})
    other, *_ = prepared(width=7)
    with pytest.raises(ConfigError, match=r"cannot resume from this checkpoint .*pass a new run_name") as err:
        checkpoint.load_checkpoint(other, tmp_path)
    assert "\n" not in str(err.value)


def test_finish_keeps_the_result_and_drops_the_resume_state(tmp_path):
    accelerator, model, optimizer = prepared()
    checkpoint.save_checkpoint(accelerator, tmp_path, {"epoch": 2})
    checkpoint.finish(accelerator, tmp_path, {"epoch": 2, "best": 0.7})
    assert checkpoint.finished(tmp_path) == {"epoch": 2, "best": 0.7}
    assert not (tmp_path / "state").exists() and checkpoint.latest_state(tmp_path) is None
