import pytest

import lesion.sweep as sweep
from lesion.config import ScheduleConfig, SweepConfig, TrainConfig, replace_flat
from lesion.errors import ConfigError


def test_the_sweeps_pretraining_takes_its_schedule_not_its_early_stopping(monkeypatch):
    seen = {}

    def record(name):
        def run(cfg):
            seen[name] = cfg
            return {"encoder_dir": "/encoder"} if name == "pretrain" else {}
        return run

    for name in ("pretrain", "finetune", "selftrain", "report"):
        monkeypatch.setattr(sweep, f"run_{name}", record(name))
    cfg = replace_flat(SweepConfig(), methods="ssl", label_fractions="0.5", ssl_epochs=2, epochs=7, lr=0.002,
                       patience=3, keep="best", run_name="s")
    sweep.run_sweep(cfg)
    pretrain = seen["pretrain"].train
    assert type(pretrain) is ScheduleConfig and (pretrain.epochs, pretrain.lr) == (2, 0.002)
    finetune = seen["finetune"]
    assert isinstance(finetune.train, TrainConfig) and (finetune.train.patience, finetune.train.keep) == (3, "best")
    assert finetune.model.encoder_init == "/encoder" and finetune.data.label_fraction == 0.5


def test_a_student_the_teacher_cannot_start_fails_before_the_first_run(monkeypatch):
    ran = []
    for name in ("pretrain", "finetune", "selftrain", "report"):
        monkeypatch.setattr(sweep, f"run_{name}", lambda cfg, name=name: ran.append(name) or {})
    cfg = replace_flat(SweepConfig(), methods="supervised,selftrain", label_fractions="0.5", student_encoder="resnet34")
    with pytest.raises(ConfigError, match="student_init encoder_init"):
        sweep.run_sweep(cfg)
    assert ran == []
    sweep.run_sweep(replace_flat(cfg, student_init="encoder_init"))
    assert ran == ["finetune", "selftrain", "report"]
