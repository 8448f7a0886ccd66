"""Optuna studies: trials, pruning, failures, best params for selftrain, and two workers on PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

import lesion.selftrain.rounds as rounds_module
from lesion.config import SelftrainConfig, TuneConfig, from_flat
from lesion.errors import TrainingError
from lesion.selftrain.loop import apply_params
from lesion.selftrain.rounds import stage_configs
from tests.conftest import subprocess_env
from tuning.study import TEACHER_ATTR, Study

TINY = {"data": "synthetic:n=24,size=64,seed=6", "label_fraction": 0.5, "epochs": 1, "batch_size": 8,
        "trial_epochs": 2, "tta": "false", "space": '{"min_confidence": [0.0, 0.3]}'}


def tiny(tmp_path, **overrides) -> TuneConfig:
    return from_flat(TuneConfig, {**TINY, "storage": f"sqlite:///{tmp_path / 'optuna.db'}",
                                  "output_dir": str(tmp_path / "out"), **overrides})


def test_search_space_overrides():
    from lesion.errors import ConfigError
    from tuning.space import SearchSpace

    space = SearchSpace.from_json('{"threshold": [0.7, 0.8], "student_lr": [1e-4, 1e-3, "log"], "noise": 1.5}')
    trial = optuna.create_study().ask()
    params = space.suggest(trial)
    assert 0.7 <= params["threshold"] <= 0.8 and params["noise"] == 1.5 and "noise" not in trial.params
    with pytest.raises(ConfigError, match="'treshold' is unknown"):
        SearchSpace.from_json('{"treshold": [0.1, 0.2]}')


def test_the_study_plots_raise_no_experimental_warnings():
    import warnings
    from types import SimpleNamespace

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: t.suggest_float("x", 0, 1) + t.suggest_float("y", 0, 1), n_trials=4)
    logged = []
    tracker = SimpleNamespace(active=True, log_figure=lambda figure, path: logged.append(path),
                              log_text=lambda text, path: logged.append(path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Study._plots(SimpleNamespace(study=study, tracker=tracker))
    assert "tune/plots/optimization_history.png" in logged and "tune/plots/slice.png" in logged
    assert not [w for w in caught if issubclass(w.category, optuna.exceptions.ExperimentalWarning)]


def nested_runs(stage_prefix: str) -> list:
    client = MlflowClient()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return [r for r in runs if r.data.tags.get("lesion.stage", "").startswith(stage_prefix)]


@pytest.mark.slow
def test_three_trials_one_teacher_and_best_params_for_selftrain(tmp_path, tracking):
    out = Study(tiny(tmp_path, n_trials=3, study="s3", pruner="none")).run()
    assert out["trials"] == 3 and out["states"] == {"COMPLETE": 3}
    study = optuna.load_study(study_name="s3", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert TEACHER_ATTR in study.user_attrs
    assert all(len(t.intermediate_values) == 2 for t in study.trials), "a value per epoch, for the pruner"

    trials = nested_runs("trial")
    assert len(trials) == 3 and all("threshold" in r.data.params and "noise" in r.data.params for r in trials)
    client = MlflowClient()
    plots = {a.path for a in client.list_artifacts(out["run_id"], "tune/plots")}
    assert "tune/plots/optimization_history.png" in plots and "tune/plots/param_importances.png" in plots

    best = tmp_path / "out" / "tune" / "s3" / "best_params.json"
    cfg = apply_params(from_flat(SelftrainConfig, {"params": str(best)}))
    assert cfg.pseudo.threshold == pytest.approx(out["params"]["threshold"])
    assert cfg.noise.noise == pytest.approx(out["params"]["noise"])
    teacher, student = stage_configs(cfg)
    assert teacher.train.lr == TuneConfig().train.lr, "the tuned lr is the student's: the teacher stays as tuned against"
    assert student.train.lr == pytest.approx(out["params"]["student_lr"])

    Study(tiny(tmp_path, n_trials=1, study="s3", pruner="none")).run()  # a second worker joins
    assert len(optuna.load_study(study_name="s3", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials) == 4
    assert len(nested_runs("teacher")) == 1, "the teacher is trained once per study"


def test_pruned_and_failed_trials_do_not_stop_the_study(tmp_path, tracking, monkeypatch):
    real = rounds_module.train_segmenter

    def flaky(cfg, accelerator, tracker, workdir, *args, **kwargs):
        if Path(workdir).name == "trial-1":
            raise TrainingError("loss became nan at epoch 1; lower lr")
        return real(cfg, accelerator, tracker, workdir, *args, **kwargs)

    monkeypatch.setattr(rounds_module, "train_segmenter", flaky)
    out = Study(tiny(tmp_path, n_trials=3, study="sp"), pruner=optuna.pruners.ThresholdPruner(lower=1.01)).run()
    study = optuna.load_study(study_name="sp", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    states = [t.state.name for t in study.trials]
    assert states == ["PRUNED", "FAIL", "PRUNED"], out
    tags = {r.data.tags["lesion.stage"]: r for r in nested_runs("trial")}
    assert tags["trial0"].data.tags["lesion.trial_state"] == "PRUNED" and tags["trial0"].info.status == "FINISHED"
    assert tags["trial1"].info.status == "FAILED"


@pytest.mark.slow
def test_two_workers_share_a_study_on_postgresql(tmp_path, tracking, postgres):
    args = [sys.executable, "-m", "lesion.cli", "tune", "--storage", postgres, "--study", "pg", "--n_trials", "2",
            "--pruner", "none", "--trial_epochs", "1", "--output_dir", str(tmp_path / "out")]
    for k, v in TINY.items():
        if k != "trial_epochs":
            args += [f"--{k}", str(v)]
    # The first worker makes the teacher; the second starts while it works and waits on the lock.
    workers = [subprocess.Popen(args, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)]
    time.sleep(3)
    workers.append(subprocess.Popen(args, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True))
    for w in workers:
        output, _ = w.communicate(timeout=600)
        assert w.returncode == 0, output[-3000:]
    study = optuna.load_study(study_name="pg", storage=postgres)
    numbers = sorted(t.number for t in study.trials)
    assert numbers == [0, 1, 2, 3], "every trial of both workers, none lost or duplicated"
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert len(nested_runs("teacher")) == 1
