"""A run's life: its name, its one owner, its resume (also through `mlflow run` after kill -9), its store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
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


def mlflow_run_params(entry: str, given: dict[str, str]) -> dict[str, str]:
    """The parameters `mlflow run -e entry -P k=v ...` logs: its own strings, from -P and the MLproject defaults."""
    from mlflow.projects._project_spec import load_project

    params, extra = load_project(str(REPO)).get_entry_point(entry).compute_parameters(given, storage_dir=None)
    return {**params, **extra}


@pytest.mark.parametrize("name", ["crashed", "o'brien run"])
def test_a_run_started_by_mlflow_run_resumes_with_the_same_command(name, tracking, monkeypatch):
    """mlflow run logs '' for an empty string, true for True, 1 for epochs=1: the same values as lesion's, in
    other words."""
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
    assert client.get_run(crashed.info.run_id).info.status == "FINISHED"
    assert client.get_run(retry).data.tags["lesion.resumed_into"] == crashed.info.run_id


def test_default_run_names_do_not_collide_within_a_second():
    from lesion.train.finetune import shared_run_name

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
    from lesion.ssl.pretrain import run_pretrain
    from lesion.train.finetune import run_finetune

    config, function = {"finetune": (FinetuneConfig, run_finetune), "selftrain": (SelftrainConfig, run_selftrain),
                        "pretrain": (PretrainConfig, run_pretrain), "evaluate": (EvaluateConfig, run_evaluate)}[entry]
    cfg = from_flat(config, {"run_name": "busy", "output_dir": str(tmp_path / "out")})
    with run_lock(tmp_path / "out", entry, "busy"):  # flock: a second open file conflicts, also in one process
        with pytest.raises(RunInProgress, match=rf"run 'busy' is in progress \(pid {os.getpid()}\)"):
            function(cfg)
    assert not all_runs(MlflowClient()), "refused before any MLflow run was made"
    assert not (tmp_path / "out" / entry / "busy").exists()
