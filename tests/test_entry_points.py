"""The entry points as users run them: `mlflow run`, `lesion ...`, and two real processes (gloo on CPU)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from lesion.config import TrainConfig
from lesion.metrics import score_folders
from lesion.tracking import TAG_RUN_NAME, find_runs
from tests.conftest import REPO, subprocess_env

BIN = Path(sys.executable).parent
DATA = "synthetic:n=30,size=64,seed=2"


def run(cmd: list[str], cwd: Path, timeout: int = 600) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-4000:]}"
    return output


def champion_metrics(eval_dir: Path) -> dict:
    return json.loads(next(eval_dir.rglob("metrics.json")).read_text())["metrics"]


@pytest.mark.slow
def test_mlflow_run_finetune_then_evaluate_and_predict(tmp_path, tracking, cache_dir):
    out = tmp_path / "outputs"
    preset = tmp_path / "tiny.json"  # a preset changes values that mlflow run has already logged as the defaults
    preset.write_text(json.dumps({"epochs": 2, "batch_size": 8, "student_epochs": 1}))
    log = run([str(BIN / "mlflow"), "run", str(REPO), "-e", "finetune", "--env-manager", "local",
               "--experiment-name", "e2e", "-P", f"data={DATA}", "-P", f"config={preset}", "-P", f"output_dir={out}",
               "-P", "run_name=e2e-ft"], cwd=tmp_path)
    client = MlflowClient()
    champion = client.get_model_version_by_alias("lesion-segmenter", "champion")
    run_info = client.get_run(champion.run_id)
    assert run_info.data.tags["lesion.run_name"] == "e2e-ft"
    assert run_info.data.params["epochs"] == "2" and run_info.data.params["batch_size"] == "8", "the preset's values"
    assert run_info.data.tags["mlflow.project.entryPoint"] == "finetune"
    assert "the work goes into run " + champion.run_id in log
    experiment = client.get_experiment_by_name("e2e").experiment_id
    deadline = time.time() + 30  # mlflow run's empty run goes once mlflow run has exited (drop_empty_run)
    while len(client.search_runs([experiment])) > 1 and time.time() < deadline:
        time.sleep(0.2)
    assert [r.info.run_id for r in client.search_runs([experiment])] == [champion.run_id], "one run, no empty one"

    masks = tmp_path / "masks"
    run([str(BIN / "lesion"), "evaluate", "--data", DATA, "--split", "val", "--out", str(masks),
         "--output_dir", str(out)], cwd=tmp_path)
    metrics = champion_metrics(out / "evaluate")
    manifest = next((out / "evaluate").rglob("manifest.csv")).read_text().splitlines()[1:]
    val = [line.split(",") for line in manifest if line.split(",")[3] == "val"]
    assert sorted(p.name for p in masks.iterdir()) == sorted(f"{row[0]}_segmentation.png" for row in val)

    # The written ISIC-format masks score the same as the logged metrics.
    truth = tmp_path / "truth"
    truth.mkdir()
    for row in val:
        shutil.copy(row[2], truth / f"{row[0]}_segmentation.png")
    _, summary = score_folders(masks, truth)
    assert summary["jaccard"] == pytest.approx(metrics["val/jaccard"], abs=1e-6)

    images = Path(val[0][1]).parent
    predictions = tmp_path / "pred"
    run([str(BIN / "lesion"), "predict", "--input", str(images), "--out", str(predictions), "--batch_size", "16"],
        cwd=tmp_path)
    count = len(list(images.glob("*.png")))
    assert len(list(predictions.glob("*_segmentation.png"))) == count
    assert len(list(predictions.glob("*_overlay.png"))) == count


@pytest.mark.slow
def test_two_processes_train_together_and_evaluate_like_one(tmp_path, tracking):
    out = tmp_path / "outputs"
    log = run([str(BIN / "lesion"), "launch", "finetune", "--num_processes", "2", "--",
               "--data", DATA, "--epochs", "2", "--warmup_fraction", "0", "--batch_size", "4", "--output_dir", str(out),
               "--run_name", "two"],
              cwd=tmp_path)
    client = MlflowClient()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.`lesion.run_name` = 'two'")
    assert len(runs) == 1, log[-2000:]
    assert runs[0].data.tags["lesion.num_processes"] == "2", "accelerate must form one group of two processes"
    lrs = [m.value for m in sorted(client.get_metric_history(runs[0].info.run_id, "train/lr"), key=lambda m: m.step)]
    half = TrainConfig().lr / 2
    assert lrs[0] == pytest.approx(half, rel=0.1), "after 1 of 2 epochs the cosine schedule is half-way, not over"
    assert lrs[1] == pytest.approx(0.0, abs=1e-12)

    results = {}
    for n in (1, 2):
        run([str(BIN / "lesion"), "launch", "evaluate", "--num_processes", str(n), "--", "--data", DATA,
             "--batch_size", "4", "--output_dir", str(out / f"eval{n}"), "--run_name", f"eval{n}"], cwd=tmp_path)
        results[n] = champion_metrics(out / f"eval{n}")
    n_val = round(results[1]["val/images"])
    assert n_val % 8 != 0, "an odd count exercises the padding of the last batch"
    assert results[2]["val/images"] == n_val
    for key, value in results[1].items():
        assert results[2][key] == pytest.approx(value, abs=1e-9), key


@pytest.mark.slow
def test_mlflow_run_selftrain_nests_every_stage_under_its_run(tmp_path, tracking):
    """The main job as `make demo` runs it, its output to a file as under CI or nohup: each stage a child of the
    run that `mlflow run` opened, and a log a person can read (one line per epoch, no progress bars)."""
    cmd = [str(BIN / "mlflow"), "run", str(REPO), "-e", "selftrain", "--env-manager", "local",
           "--experiment-name", "demo", "-P", "data=synthetic:n=24,size=64,seed=5", "-P", "epochs=2",
           "-P", "iterations=1", "-P", "label_fraction=0.5", "-P", "min_confidence=0.5",
           "-P", f"output_dir={tmp_path / 'out'}"]
    with open(tmp_path / "log.txt", "w") as fh:
        code = subprocess.run(cmd, cwd=tmp_path, env=subprocess_env(), stdout=fh, stderr=subprocess.STDOUT,
                              timeout=600).returncode
    log = (tmp_path / "log.txt").read_text()
    assert code == 0, log[-4000:]
    assert "\r" not in log, "progress bars in a log file"
    for stage in ("teacher", "student"):
        epoch_lines = [line for line in log.splitlines() if f"{stage} epoch " in line]
        assert [line.split(f"{stage} epoch ")[1].split()[0] for line in epoch_lines] == ["1/2", "2/2"], log[-4000:]
    client = MlflowClient()
    experiment = client.get_experiment_by_name("demo")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, log[-2000:]
    children = {r.data.tags["lesion.stage"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert set(children) == {"teacher", "pseudo1", "student1"}
    teacher_pictures = [a.path for a in client.list_artifacts(children["teacher"].info.run_id, "pictures")]
    assert teacher_pictures, "the teacher's pictures belong to the teacher's run"
    stage_dirs = [tmp_path / "out" / "selftrain" / parents[0].data.tags["lesion.run_name"] / s for s in ("teacher", "student1")]
    assert all((d / "best" / "model.safetensors").is_file() for d in stage_dirs)
    assert not [d for d in stage_dirs if (d / "state").exists()], "finished stages keep no resume state"


def start_and_stop_after_the_first_epoch(cmd: list[str], state: Path, stop: signal.Signals, cwd: Path,
                                        to_group: bool = False, **env: str) -> tuple[int, str]:
    """Start cmd, send stop once it has saved an epoch to resume from (state), to the process or, as a terminal's
    Ctrl-C does, to its whole process group; return its exit status and output."""
    # Ctrl-C enabled, as in a terminal, even where the tests run as a background job (which ignores SIGINT)
    proc = subprocess.Popen(cmd, cwd=cwd, env=subprocess_env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=to_group, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while not state.exists():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline, "no epoch was saved"
        time.sleep(0.2)
    if to_group:
        os.killpg(proc.pid, stop)
    else:
        proc.send_signal(stop)
    output = proc.communicate(timeout=120)[0]
    return proc.returncode, output


@pytest.mark.slow
def test_sigterm_marks_the_run_killed_and_the_same_command_resumes_it(tmp_path, tracking):
    """A scheduler pre-empts a training (SIGTERM): one line, exit 143, the run KILLED; the same command finishes it."""
    out = tmp_path / "outputs"
    cmd = [str(BIN / "lesion"), "finetune", "--data", DATA, "--epochs", "3", "--batch_size", "4", "--output_dir", str(out),
           "--run_name", "preempted"]
    code, output = start_and_stop_after_the_first_epoch(cmd, out / "finetune" / "preempted" / "state" / "progress.json",
                                                        signal.SIGTERM, tmp_path)
    assert code == 143, output[-3000:]
    assert "Traceback" not in output and output.strip().splitlines()[-1].startswith("lesion finetune: stopped by SIGTERM; ")
    [stopped] = find_runs({TAG_RUN_NAME: "preempted"})
    assert stopped.info.status == "KILLED"

    assert "resuming" in run(cmd, cwd=tmp_path)
    [done] = find_runs({TAG_RUN_NAME: "preempted"})
    assert (done.info.run_id, done.info.status) == (stopped.info.run_id, "FINISHED")


@pytest.mark.slow
def test_ctrl_c_on_a_two_process_launch_is_one_line(tmp_path, tracking):
    """torch elastic turns the launcher's Ctrl-C into its own exception and stops the ranks: one line, no traceback."""
    out = tmp_path / "outputs"
    cmd = [str(BIN / "lesion"), "launch", "finetune", "--num_processes", "2", "--", "--data", DATA, "--epochs", "20",
           "--batch_size", "4", "--output_dir", str(out), "--run_name", "two-stopped"]
    code, output = start_and_stop_after_the_first_epoch(cmd, out / "finetune" / "two-stopped" / "state" / "progress.json",
                                                        signal.SIGINT, tmp_path)
    assert code == 130, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert output.strip().splitlines()[-1].startswith("lesion launch: finetune stopped by SIGINT; ")
    [stopped] = find_runs({TAG_RUN_NAME: "two-stopped"})
    assert stopped.info.status == "KILLED"


@pytest.mark.slow
@pytest.mark.parametrize("num_processes", ["1", "0"])  # 0: the accelerate config's count, one process on a CPU
def test_ctrl_c_on_a_one_process_launch_is_one_line_and_the_run_ends_killed(tmp_path, tracking, num_processes):
    """A terminal's Ctrl-C reaches the launcher and its process, and accelerate then sends that process SIGTERM: the
    run must still end KILLED, and the user read one line that names Ctrl-C."""
    out = tmp_path / "outputs"
    hf_home = tmp_path / "hf"  # an accelerate config of one process (read by --num_processes 0), not the user's
    (hf_home / "accelerate").mkdir(parents=True)
    (hf_home / "accelerate" / "default_config.yaml").write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: 'NO'\nnum_machines: 1\nnum_processes: 1\n"
        "mixed_precision: 'no'\nuse_cpu: true\n")
    cmd = [str(BIN / "lesion"), "launch", "finetune", "--num_processes", num_processes, "--", "--data", DATA,
           "--epochs", "20", "--batch_size", "4", "--output_dir", str(out), "--run_name", "one-stopped"]
    code, output = start_and_stop_after_the_first_epoch(cmd, out / "finetune" / "one-stopped" / "state" / "progress.json",
                                                        signal.SIGINT, tmp_path, to_group=True, HF_HOME=str(hf_home))
    assert code == 130, output[-3000:]
    lines = [line for line in output.splitlines() if line.startswith("lesion ")]
    assert "Traceback" not in output and len(lines) == 1, output[-3000:]
    assert lines[0].startswith("lesion finetune: interrupted by Ctrl-C (SIGINT); ")
    [stopped] = find_runs({TAG_RUN_NAME: "one-stopped"})
    assert stopped.info.status == "KILLED"
