"""The finetune stage end to end in-process: learning, logging, registry, crash-resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

import lesion.finetune as finetune_module
import lesion.train.segmentation as segmentation
from lesion.config import from_flat, FinetuneConfig
from lesion.errors import ConfigError
from lesion.finetune import run_finetune
from lesion.tracking import TAG_RUN_NAME, find_runs
from lesion.train.engine import Callback

TINY = {"data": "synthetic:n=40,size=64,seed=1", "image_size": 64, "batch_size": 8, "epochs": 3, "lr": 3e-3,
        "picture_every": 1}


def tiny_config(tmp_path, **overrides) -> FinetuneConfig:
    return from_flat(FinetuneConfig, {**TINY, "output_dir": str(tmp_path / "outputs"), **overrides})


@pytest.mark.slow
def test_finetune_learns_logs_and_registers(tmp_path, tracking):
    out = run_finetune(tiny_config(tmp_path, run_name="ft"))
    history = out["history"]
    assert len(history) == 3
    assert history[-1]["train/loss"] < history[0]["train/loss"]
    assert out["best_val_jaccard"] > 0.3, "a U-Net should find dark blobs on skin after 3 epochs"

    client = MlflowClient()
    run = client.get_run(out["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == "3" and run.data.params["arch"] == "unet"
    assert "lesion.git_commit" in run.data.tags or "mlflow.source.git.commit" in run.data.tags
    for key in ("val/jaccard", "val/threshold_jaccard", "val/dice", "val/sensitivity", "val/specificity",
                "val/accuracy", "val/miou2", "train/loss"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [0, 1, 2], key
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"data", "pictures", "plots", "plan"} <= artifacts
    pictures = [a.path for a in client.list_artifacts(run.info.run_id, "pictures")]
    assert len(pictures) == 3

    version = client.get_model_version("lesion-segmenter", out["version"])
    assert version.tags["role"] == "supervised" and version.tags["parent_run"] == run.info.run_id
    assert str(client.get_model_version_by_alias("lesion-segmenter", "champion").version) == out["version"]
    assert out["test"] is None and "model/test_jaccard" not in run.data.metrics, "no test split, no test score"


@pytest.mark.slow
def test_the_kept_weights_are_scored_on_the_test_split_as_evaluate_scores_them(tmp_path, tracking):
    from lesion.config import EvaluateConfig
    from lesion.evaluate import run_evaluate

    out = run_finetune(tiny_config(tmp_path, run_name="ft-test", epochs=2, test_fraction=0.25))
    metrics = MlflowClient().get_run(out["run_id"]).data.metrics
    version = MlflowClient().get_model_version("lesion-segmenter", out["version"])
    evaluated = run_evaluate(from_flat(EvaluateConfig, {
        "model": f"models:/lesion-segmenter/{out['version']}", "data": TINY["data"], "split": "test",
        "test_fraction": 0.25, "output_dir": str(tmp_path / "outputs")}))
    assert evaluated["images"] == 10
    for name in ("jaccard", "dice", "threshold_jaccard", "sensitivity", "specificity", "accuracy", "miou2"):
        assert metrics[f"model/test_{name}"] == pytest.approx(evaluated["metrics"][f"test/{name}"], abs=1e-6), name
        assert out["test"][name] == metrics[f"model/test_{name}"]
    assert float(version.tags["test_jaccard"]) == pytest.approx(metrics["model/test_jaccard"], abs=1e-6)


@pytest.mark.parametrize("keep", ["best", "last"])
def test_keep_decides_which_weights_are_registered_scored_and_reported(tmp_path, tracking, monkeypatch, keep):
    import hashlib

    import mlflow

    # The first epoch scores best on validation, as a 10%-label run whose validation peaks early.
    real_validate = segmentation.Segmentation.validate
    monkeypatch.setattr(segmentation.Segmentation, "validate", lambda self, model, epoch: {
        **real_validate(self, model, epoch), "val/jaccard": 0.9 - 0.1 * epoch})
    out = run_finetune(tiny_config(tmp_path, run_name=f"keep-{keep}", epochs=3, keep=keep))
    history = out["history"]
    assert out["best_epoch"] == 0
    epoch = 0 if keep == "best" else 2
    assert out["epoch"] == epoch and out["val_jaccard"] == pytest.approx(history[epoch]["val/jaccard"])
    metrics = MlflowClient().get_run(out["run_id"]).data.metrics
    assert metrics["model/epoch"] == epoch + 1
    assert metrics["model/val_jaccard"] == pytest.approx(history[epoch]["val/jaccard"])
    version = MlflowClient().get_model_version("lesion-segmenter", out["version"])
    assert version.tags["epoch"] == str(epoch + 1)
    workdir = tmp_path / "outputs" / "finetune" / f"keep-{keep}"
    folder = workdir / keep
    registered = mlflow.artifacts.download_artifacts(f"models:/lesion-segmenter/{out['version']}", dst_path=str(tmp_path / "dl"))
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (folder / "model.safetensors",
                                                                   next(Path(registered).rglob("model.safetensors")))]
    assert digest[0] == digest[1], f"the registered weights are the {keep} epoch's"


def test_a_run_that_ends_early_still_logs_its_final_picture(tmp_path, tracking):
    out = run_finetune(tiny_config(tmp_path, run_name="short", epochs=3, max_steps=1, picture_every=0,
                                   register=False))
    assert len(out["history"]) == 1
    pictures = [a.path for a in MlflowClient().list_artifacts(out["run_id"], "pictures")]
    assert pictures == ["pictures/supervised_epoch_001.png"]


def test_a_diverging_loss_is_one_clear_line_and_a_failed_run(tmp_path, tracking, monkeypatch):
    import torch

    from lesion.errors import TrainingError

    monkeypatch.setattr(segmentation, "segmentation_loss", lambda *args: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(TrainingError, match=r"^loss became nan at epoch 1; lower lr \(now 0.003\)") as err:
        run_finetune(tiny_config(tmp_path, run_name="nan", epochs=1))
    assert "\n" not in str(err.value)
    runs = MlflowClient().search_runs([e.experiment_id for e in MlflowClient().search_experiments()],
                                      "tags.`lesion.run_name` = 'nan'")
    assert [r.info.status for r in runs] == ["FAILED"]


class Crash(Exception):
    pass


class CrashAfter(Callback):
    """A crash once `epoch` is checkpointed and logged (where a pruned trial stops)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_checkpoint(self, fit):
        if fit.state.epoch == self.epoch:
            raise Crash(f"simulated crash after epoch {self.epoch + 1}")


def crashing_after(real_fit, epoch: int):
    def crashing_fit(model, task, loaders, cfg, ctx, callbacks):
        return real_fit(model, task, loaders, cfg, ctx, [*callbacks, CrashAfter(epoch)])
    return crashing_fit


@pytest.mark.slow
def test_resume_after_a_crash_continues_the_same_run_with_the_same_result(tmp_path, tracking, monkeypatch, capsys):
    reference = run_finetune(tiny_config(tmp_path / "a", run_name="reference", register=False))

    real_fit = finetune_module.fit
    monkeypatch.setattr(finetune_module, "fit", crashing_after(real_fit, epoch=1))
    with pytest.raises(Crash):
        run_finetune(tiny_config(tmp_path / "b", run_name="crashy", register=False))
    monkeypatch.setattr(finetune_module, "fit", real_fit)
    crashed = MlflowClient().search_runs([r.info.experiment_id for r in [MlflowClient().get_run(reference["run_id"])]],
                                         "tags.`lesion.run_name` = 'crashy'")
    assert len(crashed) == 1 and crashed[0].info.status == "FAILED"

    workdir = tmp_path / "b" / "outputs" / "finetune" / "crashy"
    assert (workdir / "state" / "progress.json").is_file(), "an unfinished stage keeps what it resumes from"

    with pytest.raises(ConfigError, match=r"run_name 'crashy' is an unfinished run .* lr=0.001 \(logged: 0.003\)"):
        run_finetune(tiny_config(tmp_path / "b", run_name="crashy", register=False, lr=1e-3))

    # Resumed, it trains its last epoch, then crashes again while logging the model.
    def crash_while_logging(*args):
        raise Crash("simulated crash while logging the model")

    real_log = finetune_module.log_segmenter
    monkeypatch.setattr(finetune_module, "log_segmenter", crash_while_logging)
    with pytest.raises(Crash):
        run_finetune(tiny_config(tmp_path / "b", run_name="crashy", register=False))
    assert not (workdir / "state").exists(), "the training is over: its resume state (3x the model) is dropped"
    monkeypatch.setattr(finetune_module, "log_segmenter", real_log)

    resumed = run_finetune(tiny_config(tmp_path / "b", run_name="crashy", register=False))
    assert "supervised finished its epochs before" in capsys.readouterr().out, "not trained a second time"
    assert resumed["run_id"] == crashed[0].info.run_id
    assert [h["val/jaccard"] for h in resumed["history"]] == pytest.approx(
        [h["val/jaccard"] for h in reference["history"]], abs=1e-6)
    steps = [m.step for m in MlflowClient().get_metric_history(resumed["run_id"], "val/jaccard")]
    assert steps == [0, 1, 2], "nothing lost, nothing logged twice"

    # What a finished stage keeps: best, and last only if it differs; the kept one hard-linked to the logged copy.
    assert sorted(p.name for p in workdir.iterdir() if p.is_dir()) == (
        ["best"] if resumed["best_epoch"] == 2 else ["best", "last"])
    kept = Path(resumed["model_dir"]) / "model.safetensors"
    assert kept.stat().st_nlink == 2, "one copy of the handed-on weights on this disk"


@pytest.mark.slow
def test_resuming_with_another_model_is_a_clear_error(tmp_path, tracking, monkeypatch):
    real_fit = finetune_module.fit
    monkeypatch.setattr(finetune_module, "fit", crashing_after(real_fit, epoch=0))
    with pytest.raises(Crash):
        run_finetune(tiny_config(tmp_path, run_name="changed", register=False, epochs=2))
    monkeypatch.setattr(finetune_module, "fit", real_fit)
    with pytest.raises(ConfigError, match=r"unfinished run being resumed, but with other parameters: "
                                          r"arch=deeplabv3plus \(logged: unet\)"):
        run_finetune(tiny_config(tmp_path, run_name="changed", register=False, epochs=2, arch="deeplabv3plus"))

    # A checkpoint that does not fit the model (another lesion version wrote it): one line, not a torch traceback.
    from lesion.config import ModelConfig, TrainConfig
    from lesion.models import build_model
    from lesion.train.checkpoint import load_checkpoint
    from lesion.train.engine import make_accelerator

    accelerator = make_accelerator(TrainConfig())
    accelerator.prepare(build_model(ModelConfig(arch="deeplabv3plus")))
    with pytest.raises(ConfigError, match="cannot resume from this checkpoint .* pass a new run_name"):
        load_checkpoint(accelerator, tmp_path / "outputs" / "finetune" / "changed")


def test_a_sigterm_while_the_model_is_registered_waits_for_its_tags(tmp_path, tracking, monkeypatch, capsys):
    """A resume trusts lesion.model_uri and lesion.model_version: an interrupt between logging, registering and
    tagging would leave a registered version that no run points to, and a resume that skips the champion gate."""
    import os
    import signal

    from lesion.cli import run_entry_point

    registered = finetune_module.register

    def register_then_sigterm(*args, **kwargs):
        version = registered(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # a scheduler's pre-emption, just then
        return version

    monkeypatch.setattr(finetune_module, "register", register_then_sigterm)
    argv = [f"--{k}={v}" for k, v in TINY.items()] + ["--epochs=1", f"--output_dir={tmp_path / 'out'}",
                                                       "--run_name=preempted"]
    assert run_entry_point("finetune", argv) == 143
    [run] = find_runs({TAG_RUN_NAME: "preempted"})
    assert run.info.status == "KILLED"
    assert run.data.tags["lesion.model_version"] == "1" and "lesion.model_uri" in run.data.tags


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps one precision per process: a bf16 run after this process's fp32 runs needs a fresh state."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.slow
def test_a_bf16_run_logs_and_registers_the_scores_evaluate_gives(tmp_path, tracking, monkeypatch,
                                                                 fresh_accelerate_state):
    """bf16 trains faster (AMX CPUs, GPUs); the kept weights are still scored in fp32, as evaluate scores them."""
    from lesion.config import EvaluateConfig
    from lesion.evaluate import run_evaluate

    autocast_while_scoring = []
    real_predict = segmentation.predict_probabilities

    def recording_predict(model, images, tta=False):
        autocast_while_scoring.append(torch.is_autocast_enabled("cpu"))
        return real_predict(model, images, tta)

    monkeypatch.setattr(segmentation, "predict_probabilities", recording_predict)
    out = run_finetune(tiny_config(tmp_path, run_name="ft-bf16", epochs=2, mixed_precision="bf16"))
    assert autocast_while_scoring and not any(autocast_while_scoring), "validation ran under the run's bf16 autocast"
    version = MlflowClient().get_model_version("lesion-segmenter", out["version"])
    evaluated = run_evaluate(from_flat(EvaluateConfig, {
        "model": f"models:/lesion-segmenter/{out['version']}", "data": TINY["data"], "split": "val",
        "output_dir": str(tmp_path / "outputs")}))
    logged = out["history"][out["epoch"]]
    for name in ("jaccard", "dice", "sensitivity", "specificity"):
        assert logged[f"val/{name}"] == pytest.approx(evaluated["metrics"][f"val/{name}"], abs=1e-6), name
    assert float(version.tags["val_jaccard"]) == pytest.approx(evaluated["metrics"]["val/jaccard"], abs=1e-6)


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is valid on a CUDA GPU")
def test_fp16_on_a_cpu_is_one_clear_error_before_any_run(tmp_path, tracking):
    # Accelerate would quietly train in fp32 while plan.json and the params said fp16.
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU; on a CPU use mixed_precision=bf16 or no"):
        run_finetune(tiny_config(tmp_path, run_name="ft-fp16", mixed_precision="fp16"))
    assert not find_runs({TAG_RUN_NAME: "ft-fp16"})
