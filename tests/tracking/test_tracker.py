"""A run's life (tracking/tracker.py): its name, its one owner, its resume, also through `mlflow run` after kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from lesion.config import EvaluateConfig, FinetuneConfig, PretrainConfig, SelftrainConfig, from_flat, to_flat
from lesion.errors import ConfigError
from lesion.tracking import TAG_ENTRY, TAG_RUN_NAME, TAG_STAGE, Tracker, find_runs
from tests.conftest import REPO, subprocess_env

BIN = Path(sys.executable).parent


def all_runs(client: MlflowClient, view: int = ViewType.ACTIVE_ONLY) -> list:
    return client.search_runs([e.experiment_id for e in client.search_experiments()], run_view_type=view)


# --------------------------------------------------------------------------- names in the store


def test_find_runs_matches_run_names_with_quotes_exactly(tracking):
    client = MlflowClient()
    experiment = client.create_experiment("quotes")
    names = ["o'brien run", 'say "hi"', "both ' and \"", "back\\slash", "back\\", "plain", "o'brien", "o'brien run2"]
    ids = {}
    for name in names:
        ids[name] = client.create_run(experiment, tags={TAG_ENTRY: "finetune", TAG_RUN_NAME: name}).info.run_id
    for name in names:
        found = find_runs({TAG_ENTRY: "finetune", TAG_RUN_NAME: name}, [experiment])
        assert [r.info.run_id for r in found] == [ids[name]], name


def test_an_apostrophe_in_a_run_name_resumes_its_run(tracking):
    name = "o'brien run"
    with pytest.raises(RuntimeError):
        with Tracker().run("finetune", name, "names", params={"epochs": 2}) as first:
            raise RuntimeError("crash")
    with Tracker().run("finetune", name, "names", params={"epochs": 2}) as again:
        assert again.resumed and again.run_id == first.run_id
    run = MlflowClient().get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.runName"] == name


def test_every_run_records_the_versions_its_numbers_depend_on(tracking):
    import torch

    with Tracker().run("finetune", "versions", "env", params={"epochs": 1}) as run:
        pass
    tags = MlflowClient().get_run(run.run_id).data.tags
    assert tags["lesion.env.torch"] == torch.__version__.split("+")[0]
    assert tags["lesion.env.segmentation-models-pytorch"] == "0.6.0"
    assert tags["lesion.env.albumentations"] == "2.0.8"
    assert tags["lesion.env.torch_threads"] == str(torch.get_num_threads())
    assert all(tags[f"lesion.env.{p}"] != "not installed" for p in ("timm", "numpy", "opencv-python-headless"))


def mlflow_run_params(entry: str, given: dict[str, str]) -> dict[str, str]:
    """The parameters `mlflow run -e entry -P k=v ...` logs: its own strings, from -P and the MLproject defaults."""
    from mlflow.projects._project_spec import load_project

    params, extra = load_project(str(REPO)).get_entry_point(entry).compute_parameters(given, storage_dir=None)
    return {**params, **extra}


@pytest.mark.parametrize("name", ["crashed", "o'brien run"])
def test_a_run_started_by_mlflow_run_resumes_with_the_same_command(name, tracking, monkeypatch):
    """mlflow run logs '' for an empty string, true for True, 1 for epochs=1: the same values as lesion's, in
    other words. The fresh run that mlflow run opens for the re-run is deleted once the work goes to the old one."""
    given = {"run_name": name, "epochs": "1", "lr": "1e-3", "data": "synthetic:n=24,size=64,seed=5"}
    cfg = from_flat(FinetuneConfig, given)
    client = MlflowClient()
    experiment = client.create_experiment("via-mlflow-run")
    crashed = client.create_run(experiment, tags={TAG_ENTRY: "finetune", TAG_RUN_NAME: cfg.run.run_name})
    for key, value in mlflow_run_params("finetune", given).items():
        client.log_param(crashed.info.run_id, key, value)
    assert client.get_run(crashed.info.run_id).data.params["experiment"] == "''", "what mlflow run logs for ''"
    client.set_terminated(crashed.info.run_id, "FAILED")

    changed = from_flat(FinetuneConfig, {**given, "epochs": "2"})
    fresh = client.create_run(experiment).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", fresh)
    with pytest.raises(ConfigError, match=r"other parameters: epochs=2 \(logged: 1\);"):
        with Tracker().run("finetune", cfg.run.run_name, params=to_flat(changed)):
            pass
    assert client.get_run(crashed.info.run_id).info.status == "FAILED", "a refused resume leaves the run as it was"

    retry = client.create_run(experiment).info.run_id  # mlflow run opens a fresh run for every attempt
    monkeypatch.setenv("MLFLOW_RUN_ID", retry)
    with Tracker().run("finetune", cfg.run.run_name, params=to_flat(cfg)) as tracker:
        assert tracker.resumed and tracker.run_id == crashed.info.run_id
    resumed = client.get_run(crashed.info.run_id)
    assert resumed.info.status == "FINISHED" and resumed.data.tags["mlflow.runName"] == name
    left = client.get_run(retry)
    assert left.info.lifecycle_stage == "deleted", "no empty run beside the resumed one"
    assert left.info.status == "FINISHED", "mlflow run leaves a finished run alone: it exits 0"
    assert left.data.tags["lesion.resumed_into"] == crashed.info.run_id
    active = [r.info.run_id for r in all_runs(client) if r.info.experiment_id == experiment]
    assert retry not in active


def test_a_preset_under_mlflow_run_moves_the_work_into_a_fresh_run_that_logs_its_values(tracking, monkeypatch):
    """mlflow run logs the MLproject defaults before lesion reads the preset (config=), and a logged param cannot
    change: the work goes into a fresh run with the values it used, and mlflow run's empty run is dropped."""
    from lesion.cli import parameter_names
    from lesion.config import load_preset

    given = {"run_name": "with-preset", "data": "synthetic:n=24,size=64,seed=5", "config": "configs/cpu.json"}
    cfg = from_flat(FinetuneConfig, {**load_preset(str(REPO / "configs/cpu.json"), FinetuneConfig, parameter_names()),
                                     "run_name": "with-preset", "data": given["data"]})
    client = MlflowClient()
    experiment = client.create_experiment("preset-via-mlflow-run")
    env_run = client.create_run(experiment, tags={"mlflow.source.name": "file:///project",
                                                  "mlflow.project.entryPoint": "finetune"}).info.run_id
    logged = mlflow_run_params("finetune", given)
    for key, value in logged.items():
        client.log_param(env_run, key, value)
    assert logged["epochs"] != str(cfg.train.epochs), "the preset must change a logged value for this test"
    monkeypatch.setenv("MLFLOW_RUN_ID", env_run)
    with Tracker().run("finetune", cfg.run.run_name, params=to_flat(cfg)) as tracker:
        work_run = tracker.run_id
        assert work_run != env_run and not tracker.resumed
    work = client.get_run(work_run)
    assert work.info.status == "FINISHED" and work.info.experiment_id == experiment
    assert work.data.params["epochs"] == str(cfg.train.epochs), "the run logs the preset's value"
    assert work.data.tags["mlflow.runName"] == "with-preset"
    assert work.data.tags["mlflow.project.entryPoint"] == "finetune", "mlflow run's tags come along"
    left = client.get_run(env_run)
    assert left.data.tags["lesion.moved_into"] == work_run
    assert left.info.status == "FINISHED" and left.info.lifecycle_stage == "deleted"
    assert "MLFLOW_RUN_ID" not in os.environ


def test_a_run_with_a_generated_name_resumes_when_that_name_is_given(tracking):
    """A run started without run_name logged run_name='' (the name was generated): the re-run that names it is the
    same run, not one "with other parameters"."""
    with pytest.raises(RuntimeError):
        with Tracker().run("finetune", "finetune-20261202-1200-ab12", "generated",
                           params={"run_name": "", "experiment": "", "epochs": 2}) as first:
            raise RuntimeError("crash")
    with Tracker().run("finetune", "finetune-20261202-1200-ab12", "generated",
                       params={"run_name": "finetune-20261202-1200-ab12", "experiment": "generated", "epochs": 2}) as again:
        assert again.resumed and again.run_id == first.run_id
    with pytest.raises(RuntimeError):
        with Tracker().run("finetune", "other", "generated", params={"epochs": 2}) as crashed:
            raise RuntimeError("crash")
    with pytest.raises(ConfigError, match=r"other parameters: epochs=3 \(logged: 2\)"):
        with Tracker().run("finetune", "other", "generated", params={"epochs": 3}):
            pass
    assert MlflowClient().get_run(crashed.run_id).info.status == "FAILED"


def test_a_user_error_before_any_work_leaves_no_run_and_one_after_keeps_it(tracking):
    client = MlflowClient()
    with pytest.raises(ConfigError):
        with Tracker().run("finetune", "bad-data", "errors", params={"data": "/no/such/folder"}) as refused:
            raise ConfigError("data=/no/such/folder: no such folder")
    assert client.get_run(refused.run_id).info.lifecycle_stage == "deleted", "nothing in it: no empty run stays"
    with pytest.raises(ConfigError):
        with Tracker().run("finetune", "late", "errors", params={"epochs": 2}) as worked:
            worked.log_metrics({"train/loss": 0.5}, step=1)
            raise ConfigError("every pseudo-label was dropped")
    kept = client.get_run(worked.run_id)
    assert kept.info.lifecycle_stage == "active" and kept.info.status == "FAILED", "it holds work: resumable"
    with pytest.raises(RuntimeError):
        with Tracker().run("finetune", "a-bug", "errors", params={"epochs": 2}) as bug:
            raise RuntimeError("shape mismatch")
    assert client.get_run(bug.run_id).info.lifecycle_stage == "active", "a crash keeps its run, for its traceback"


def test_default_run_names_do_not_collide_within_a_second():
    from lesion.stage import shared_run_name

    class OneProcess:
        num_processes = 1

    names = [shared_run_name(OneProcess(), "", "finetune") for _ in range(20)]
    assert len(set(names)) == 20, names
    assert shared_run_name(OneProcess(), "mine", "finetune") == "mine"


# --------------------------------------------------------------------------- one owner per run


@pytest.mark.parametrize("entry", ["finetune", "selftrain", "pretrain", "evaluate"])
def test_every_stage_refuses_a_run_that_a_live_process_holds(entry, tmp_path, tracking):
    from lesion.evaluate import run_evaluate
    from lesion.runs import RunInProgress, run_lock
    from lesion.selftrain.loop import run_selftrain
    from lesion.finetune import run_finetune
    from lesion.pretrain import run_pretrain

    config, function = {"finetune": (FinetuneConfig, run_finetune), "selftrain": (SelftrainConfig, run_selftrain),
                        "pretrain": (PretrainConfig, run_pretrain), "evaluate": (EvaluateConfig, run_evaluate)}[entry]
    cfg = from_flat(config, {"run_name": "busy", "output_dir": str(tmp_path / "out")})
    with run_lock(tmp_path / "out", entry, "busy"):  # flock: a second open file conflicts, also in one process
        with pytest.raises(RunInProgress, match=rf"run 'busy' is in progress \(pid {os.getpid()}\)"):
            function(cfg)
    assert not all_runs(MlflowClient()), "refused before any MLflow run was made"
    assert not (tmp_path / "out" / entry / "busy").exists()


# --------------------------------------------------------------------------- mlflow run, as users run it


def mlflow_run(entry: str, experiment: str, params: dict[str, object]) -> list[str]:
    return [str(BIN / "mlflow"), "run", str(REPO), "-e", entry, "--env-manager", "local", "--experiment-name",
            experiment, *[part for k, v in params.items() for part in ("-P", f"{k}={v}")]]


def deleted_runs(client: MlflowClient, experiment: str, count: int) -> list:
    """The deleted runs of experiment, once there are count: the run that a resuming mlflow run opened goes when
    that mlflow run has exited (a helper process deletes it)."""
    deadline = time.time() + 180
    while len(runs := client.search_runs([experiment], run_view_type=ViewType.DELETED_ONLY)) < count:
        assert time.time() < deadline, "the run of the second mlflow run was never deleted"
        time.sleep(0.5)
    return runs


def finished(proc: subprocess.CompletedProcess) -> str:
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    return output


@pytest.mark.slow
def test_mlflow_run_selftrain_resumes_after_kill_9_into_the_same_run(tmp_path, tracking):
    """The main job, killed -9 while the teacher trains, then the identical `mlflow run` again: the work goes on
    in the same parent run and the same teacher run, nothing is logged twice, every stage finishes, and the UI
    shows the run_name and each stage's name."""
    name = "o'brien run"  # an apostrophe goes through mlflow run's shell quoting and MLflow's filter strings
    out = tmp_path / "out"
    cmd = mlflow_run("selftrain", "resume", {
        "data": "synthetic:n=24,size=64,seed=5", "label_fraction": 0.5, "epochs": 3, "student_epochs": 1,
        "iterations": 2, "batch_size": 8, "min_confidence": 0.0, "min_area": 0.0, "tta": "false",
        "output_dir": out, "run_name": name})
    first = subprocess.Popen(cmd, cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    progress = out / "selftrain" / name / "teacher" / "state" / "progress.json"
    deadline = time.time() + 600
    try:
        while not progress.exists():
            assert first.poll() is None, first.communicate()[0][-3000:]
            assert time.time() < deadline, "the teacher never checkpointed"
            time.sleep(0.1)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # mlflow run, accelerate and the training process, at once
        first.wait()
    client = MlflowClient()
    experiment = client.get_experiment_by_name("resume").experiment_id
    crashed = [r for r in client.search_runs([experiment]) if "mlflow.parentRunId" not in r.data.tags]
    assert [r.info.status for r in crashed] == ["RUNNING"]

    log = finished(subprocess.run(cmd, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True,
                                  timeout=1200))
    assert "resuming teacher at epoch" in log, "the killed teacher resumes from its checkpoint (no stale lock)"
    left = deleted_runs(client, experiment, 1)
    assert [r.data.tags.get("lesion.resumed_into") for r in left] == [crashed[0].info.run_id], \
        "the run the second mlflow run opened is not left behind empty"
    runs = client.search_runs([experiment])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [r.info.run_id for r in parents] == [crashed[0].info.run_id], "one parent run holds the work"
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["mlflow.runName"] == name

    stages = {r.data.tags[TAG_STAGE]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert {s: r.data.tags["mlflow.runName"] for s, r in stages.items()} == {
        "teacher": "teacher", "pseudo1": "pseudo1", "student1": "student", "pseudo2": "pseudo2", "student2": "student*"}
    assert all(r.info.status == "FINISHED" for r in stages.values())
    teacher = stages["teacher"].info.run_id
    for key in ("val/jaccard", "train/loss"):
        steps = [m.step for m in client.get_metric_history(teacher, key)]
        assert sorted(steps) == [0, 1, 2], f"{key}: every epoch once, none twice: {steps}"


@pytest.mark.slow
def test_mlflow_run_tune_workers_join_the_one_run_of_their_study(tmp_path, tracking):
    """Two workers of one study, the second after the first finished: one parent run for the study with a nested
    run per trial, and no empty run from the second `mlflow run` beside it."""
    params = {"data": "synthetic:n=24,size=64,seed=6", "label_fraction": 0.5, "epochs": 1, "batch_size": 8,
              "trial_epochs": 1, "n_trials": 1, "pruner": "none", "tta": "false",
              "space": '{"min_confidence": [0.0, 0.3]}', "storage": f"sqlite:///{tmp_path / 'optuna.db'}",
              "study": "one-study", "output_dir": tmp_path / "out"}
    for seed in (1, 2):
        finished(subprocess.run(mlflow_run("tune", "tune", {**params, "sampler_seed": seed}), cwd=tmp_path,
                                env=subprocess_env(), capture_output=True, text=True, timeout=900))
    client = MlflowClient()
    experiment = client.get_experiment_by_name("tune").experiment_id
    left = deleted_runs(client, experiment, 1)
    runs = client.search_runs([experiment])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.data.tags.get("mlflow.runName") for r in parents]
    assert [r.data.tags.get("lesion.resumed_into") for r in left] == [parents[0].info.run_id]
    assert parents[0].data.tags["mlflow.runName"] == "one-study" and parents[0].info.status == "FINISHED"
    children = sorted(r.data.tags["mlflow.runName"] for r in runs
                      if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id)
    assert children == ["teacher", "trial0", "trial1"]
