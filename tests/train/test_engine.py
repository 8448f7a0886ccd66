"""Engine pieces that need no training run: the optimizer's parameter groups and the schedule."""

from __future__ import annotations

from types import SimpleNamespace

import accelerate.scheduler
import pytest
import torch
from accelerate.scheduler import AcceleratedScheduler

from lesion.config import ModelConfig, TrainConfig
from lesion.models import build_model
from lesion.train.engine import build_optimizer, build_scheduler, lr_lambda


def test_the_encoder_learns_at_its_own_rate_and_norms_skip_weight_decay():
    model = build_model(ModelConfig())
    optimizer = build_optimizer(model, TrainConfig(lr=1e-3, weight_decay=0.01, encoder_lr_scale=0.1))
    encoder = {id(p) for p in model.encoder.parameters()}
    seen = 0
    for group in optimizer.param_groups:
        params = group["params"]
        in_encoder = {id(p) in encoder for p in params}
        assert len(in_encoder) == 1, "a group is either all encoder or all decoder/head"
        assert group["lr"] == pytest.approx(1e-4 if in_encoder.pop() else 1e-3)
        assert group["weight_decay"] == (0.0 if all(p.ndim <= 1 for p in params) else 0.01)
        seen += len(params)
    assert seen == sum(1 for p in model.parameters() if p.requires_grad)


def test_warmup_then_cosine_to_zero():
    factor = lr_lambda(TrainConfig(warmup_fraction=0.2, schedule="cosine"), total_steps=20)
    assert factor(0) < factor(3) <= 1.0
    assert factor(4) == pytest.approx(1.0)
    assert factor(20) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("processes", [1, 2, 4])
def test_the_schedule_ends_with_the_training_on_any_number_of_processes(monkeypatch, processes):
    # Accelerate steps a prepared scheduler once per process for every optimizer step.
    monkeypatch.setattr(accelerate.scheduler, "AcceleratorState", lambda: SimpleNamespace(num_processes=processes))
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler, steps = build_scheduler(optimizer, TrainConfig(epochs=4, lr=1.0, warmup_fraction=0), 16, processes)
    prepared = AcceleratedScheduler(scheduler, SimpleNamespace(step_was_skipped=False), split_batches=False)
    lrs = []
    for _ in range(steps):
        optimizer.step()
        prepared.step()
        lrs.append(prepared.get_last_lr()[0])
    assert steps == 4 * 16 // processes, "each process takes its share of the optimizer steps"
    assert lrs[steps // 2 - 1] == pytest.approx(0.5, abs=0.1), "half-way through the training, half-way down"
    assert lrs[-2] > 0 and lrs[-1] == pytest.approx(0.0, abs=1e-9)


def test_keep_hands_on_the_best_or_the_final_epochs_weights(tmp_path):
    from lesion.train.engine import FitResult

    history = [{"epoch": e, "val/jaccard": j} for e, j in enumerate([0.5, 0.7, 0.6])]
    result = FitResult(0.7, 1, history, tmp_path / "best", tmp_path / "last")
    best, last = result.kept("best"), result.kept("last")
    assert (best.dir, best.epoch, best.record["val/jaccard"]) == (tmp_path / "best", 1, 0.7)
    assert (last.dir, last.epoch, last.record["val/jaccard"]) == (tmp_path / "last", 2, 0.6)


@pytest.mark.parametrize("entry", ["FinetuneConfig", "SelftrainConfig", "TuneConfig", "SweepConfig"])
def test_patience_with_keep_last_is_a_one_line_error(entry):
    import lesion.config as C
    from lesion.errors import ConfigError

    make = getattr(C, entry)
    with pytest.raises(ConfigError, match="patience=5 needs keep=best") as err:
        make(train=TrainConfig(patience=5, keep="last"))
    assert "\n" not in str(err.value)
    assert make(train=TrainConfig(patience=5, keep="best")).train.patience == 5
