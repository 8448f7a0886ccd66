"""Noisy Student end to end on tiny synthetic data: stages, registry, pseudo-label filters, resume."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from lesion.config import SelftrainConfig, from_flat
from lesion.selftrain.pseudo import PseudoStats, select_pseudo_labels
from lesion.selftrain.loop import run_selftrain
from tests.conftest import subprocess_env

TINY = {"data": "synthetic:n=32,size=64,seed=3", "image_size": 64, "label_fraction": 0.4, "epochs": 1,
        "batch_size": 8, "lr": 3e-3, "iterations": 2, "min_confidence": 0.5, "tta": "false"}


def tiny(tmp_path, **overrides) -> SelftrainConfig:
    return from_flat(SelftrainConfig, {**TINY, "output_dir": str(tmp_path / "outputs"), **overrides})


def children(client: MlflowClient, parent_id: str) -> dict[str, object]:
    exp = client.get_run(parent_id).info.experiment_id
    runs = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    return {r.data.tags["lesion.stage"]: r for r in runs}


@pytest.mark.slow
def test_full_loop_registers_stages_and_logs_pseudo_labels(tmp_path, tracking):
    out = run_selftrain(tiny(tmp_path, run_name="st"))
    assert list(out["stages"]) == ["teacher", "student", "student*"]
    client = MlflowClient()
    stages = children(client, out["run_id"])
    assert set(stages) == {"teacher", "pseudo1", "student1", "pseudo2", "student2"}
    assert all(r.info.status == "FINISHED" for r in stages.values())

    teacher_v = client.get_model_version_by_alias("lesion-segmenter", "teacher")
    student_v = client.get_model_version_by_alias("lesion-segmenter", "student")
    assert teacher_v.tags["role"] == "teacher" and student_v.tags["role"] == "student"
    assert teacher_v.tags["parent_run"] == student_v.tags["parent_run"] == out["run_id"], "the selftrain run"
    assert teacher_v.run_id == stages["teacher"].info.run_id, "and the version's own run is its stage"
    assert student_v.tags["round"] == "2" and str(student_v.version) == out["stages"]["student*"]["version"]
    first_student = client.get_model_version("lesion-segmenter", out["stages"]["student"]["version"])
    assert first_student.tags["teacher_version"] == str(teacher_v.version)
    assert first_student.tags["pseudo_labels"].startswith("runs:/" + stages["pseudo1"].info.run_id)
    assert client.get_model_version_by_alias("lesion-segmenter", "champion") is not None

    pseudo_files = {a.path for a in client.list_artifacts(stages["pseudo1"].info.run_id, "pseudo_labels")}
    assert "pseudo_labels/pseudo_labels.csv" in pseudo_files
    parent_artifacts = {a.path for a in client.list_artifacts(out["run_id"], "plots")}
    assert "plots/stage_comparison.png" in parent_artifacts
    gates = {a.path for a in client.list_artifacts(out["run_id"], "registry")}
    assert gates == {f"registry/champion_gate_{s}.json" for s in ("teacher", "student", "studentstar")}, \
        "every stage's gate decision is kept"
    parent_tags = client.get_run(out["run_id"]).data.tags
    assert {parent_tags[f"lesion.champion_gate.{s}"] for s in ("teacher", "student", "studentstar")} <= {"promoted",
                                                                                                      "kept"}


def _stats(n=20):
    return [PseudoStats(f"U{i}", "", "", mean_confidence=0.5 + i * 0.025, lesion_area=0.002 * i) for i in range(n)]


def test_min_confidence_and_min_area_change_what_is_kept(tmp_path):
    stats = _stats()
    loose = select_pseudo_labels(stats, min_confidence=0.0, min_area=0.0)
    strict_conf = select_pseudo_labels(stats, min_confidence=0.8, min_area=0.0)
    strict_area = select_pseudo_labels(stats, min_confidence=0.0, min_area=0.02, decisions_csv=tmp_path / "d.csv")
    assert len(loose.kept) == 20
    assert len(strict_conf.kept) == 8 and len(strict_conf.dropped["low_confidence"]) == 12
    assert len(strict_area.kept) == 10 and len(strict_area.dropped["small_area"]) == 10
    rows = list(csv.DictReader(open(tmp_path / "d.csv")))
    assert {r["reason"] for r in rows if r["decision"] == "dropped"} == {"small_area"}


def test_pixel_threshold_changes_the_loss_mask():
    import numpy as np

    from lesion.data.datasets import pseudo_valid

    prob = np.linspace(0, 1, 101, dtype=np.float32)
    assert pseudo_valid(prob, 0.5).mean() == 1.0
    assert 0.15 < pseudo_valid(prob, 0.9).mean() < 0.25


@pytest.mark.slow
def test_resume_after_kill_skips_finished_stages(tmp_path, tracking):
    """kill -9 during the first student, then the same command again: teacher and pseudo1 are not re-run,
    and the student ends exactly as an uninterrupted run does."""
    def command(run_name: str) -> list[str]:
        args = [sys.executable, "-m", "lesion.cli", "selftrain", "--run_name", run_name, "--output_dir",
                str(tmp_path / "outputs"), "--iterations", "1", "--epochs", "3"]
        for k, v in TINY.items():
            if k not in ("iterations", "epochs"):
                args += [f"--{k}", str(v)]
        return args

    env = subprocess_env()
    reference = subprocess.run(command("reference"), env=env, capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stdout[-3000:] + reference.stderr[-3000:]
    args = command("crash")
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    student_state = tmp_path / "outputs" / "selftrain" / "crash" / "student1" / "state" / "progress.json"
    deadline = time.time() + 400
    while not student_state.exists():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline, "the student never checkpointed"
        time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stages = tmp_path / "outputs" / "selftrain" / "crash"
    assert not (stages / "teacher" / "state").exists(), "a finished stage drops its resume state"
    assert (stages / "teacher" / "best" / "model.safetensors").is_file(), "and keeps what the next stages read"

    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert "stage teacher: finished" in log and "stage pseudo1: finished" in log
    assert "resuming student at epoch" in log
    assert not list(stages.rglob("state")), "no resume state left once every stage has finished"

    client = MlflowClient()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              "tags.`lesion.run_name` = 'crash'")
    stages = [r.data.tags.get("lesion.stage") for r in runs if r.data.tags.get("lesion.stage")]
    assert sorted(stages) == ["pseudo1", "student1", "teacher"], "one nested run per stage, none duplicated"
    student = next(r for r in runs if r.data.tags.get("lesion.stage") == "student1")
    assert student.info.status == "FINISHED"
    resumed_scores = sorted(client.get_metric_history(student.info.run_id, "val/jaccard"), key=lambda m: m.step)
    assert [m.step for m in resumed_scores] == [0, 1, 2]
    uninterrupted = next(r for r in client.search_runs([student.info.experiment_id], "tags.`lesion.run_name` = 'reference'")
                         if r.data.tags.get("lesion.stage") == "student1")
    reference_scores = sorted(client.get_metric_history(uninterrupted.info.run_id, "val/jaccard"), key=lambda m: m.step)
    assert [m.value for m in resumed_scores] == pytest.approx([m.value for m in reference_scores], abs=1e-6)
    versions = client.search_model_versions("name='lesion-segmenter'")
    assert sorted(v.tags["role"] for v in versions) == ["student", "student", "teacher", "teacher"]


def test_a_student_can_start_from_its_teacher(tmp_path, tracking, capsys):
    out = run_selftrain(tiny(tmp_path, run_name="warm", iterations=1, student_init="teacher", register="false"))
    summary = [line for line in capsys.readouterr().out.splitlines() if "val/jaccard" in line][-2:]
    assert all(line.endswith("(not registered)") for line in summary), summary  # not "lesion-segmenter vNone"
    client = MlflowClient()
    stages = children(client, out["run_id"])
    tags = stages["student1"].data.tags
    assert tags["lesion.init.loaded"] == "segmenter", "every tensor of the teacher, not only its encoder"
    assert tags["lesion.init.source"].endswith("teacher/best")


def test_a_student_from_its_teacher_must_share_its_encoder(tmp_path):
    from lesion.errors import ConfigError

    with pytest.raises(ConfigError, match="student_init=teacher needs the teacher's encoder"):
        run_selftrain(tiny(tmp_path, student_init="teacher", student_encoder="resnet34"))


@pytest.mark.slow
def test_when_every_pseudo_label_is_dropped_the_error_says_what_to_change(tmp_path, tracking):
    from lesion.errors import ConfigError

    with pytest.raises(ConfigError, match=r"every pseudo-label was filtered out .*lower min_confidence \(0.9999\)"):
        run_selftrain(tiny(tmp_path, iterations=1, min_confidence=0.9999, register="false"))
    pictures = list((tmp_path / "outputs").rglob("pseudo_labels.csv"))
    assert pictures, "the decisions are still written, to see why"


class PictureTracker:
    def __init__(self):
        self.images: dict[str, object] = {}

    def log_image(self, image, path):
        self.images[path] = image

    def log_figure(self, figure, path):
        pass


@pytest.fixture
def titles_drawn(monkeypatch):
    """The column titles every grid of the self-training pictures is drawn with."""
    import lesion.plots as plots
    import lesion.selftrain.loop as loop

    drawn, real = [], plots.titled_grid

    def spy(columns, titles, row_titles=None):
        drawn.append(list(titles))
        return real(columns, titles, row_titles)

    monkeypatch.setattr(plots, "titled_grid", spy)
    monkeypatch.setattr(loop, "titled_grid", spy)  # bound at import
    return drawn


def tiny_data(tmp_path, cache_dir):
    from lesion.config import DataConfig
    from lesion.data.prepare import prepare_data

    cfg = DataConfig(data="synthetic:n=24,size=64,seed=5", label_fraction=0.5, cache_dir=str(cache_dir))
    return prepare_data(cfg, 0, tmp_path, progress=False)


def has_title_band(picture, rows: int, columns: int, tile: int = 64) -> bool:
    band = picture[: picture.shape[0] - rows * tile]
    return (picture.shape == (band.shape[0] + rows * tile, columns * tile, 3) and band.shape[0] > 0
            and all((band[:, c * tile:(c + 1) * tile] > 200).any() for c in range(columns)))


def test_the_stage_comparison_names_its_columns(tmp_path, cache_dir, monkeypatch, titles_drawn):
    import numpy as np

    import lesion.selftrain.loop as loop

    data = tiny_data(tmp_path, cache_dir)
    from types import SimpleNamespace

    # predictions need no trained model here, only its input conventions
    fake = SimpleNamespace(config=SimpleNamespace(color_constancy="none"))
    monkeypatch.setattr(loop, "load_model", lambda source: (fake, {}))
    monkeypatch.setattr(loop, "predict_images",
                        lambda model, images, size, **_: [np.full(im.shape[:2], 0.9, np.float32) for im in images])
    history = [loop.StageRecord(name, {"model_dir": name, "val_jaccard": 0.5, "val_dice": 0.6})
               for name in ("teacher", "student", "student*")]
    tracker = PictureTracker()
    loop._log_comparison(history, data, tracker)
    picture = tracker.images["pictures/stages_truth_teacher_student_studentstar.png"]
    assert titles_drawn == [["truth", "teacher", "student", "student*"]]
    assert has_title_band(picture, rows=4, columns=4), "a band above the images names each column"


def test_the_pseudo_label_picture_does_not_call_a_pseudo_label_truth(tmp_path, cache_dir, titles_drawn):
    import numpy as np

    from lesion.data.splits import unlabelled_pool
    from lesion.plots import GREEN, RED
    from lesion.selftrain.loop import _pseudo_picture
    from lesion.selftrain.pseudo import write_probability

    data = tiny_data(tmp_path, cache_dir)
    stats = []
    for i, row in enumerate(unlabelled_pool(data.rows)[:3]):
        prob = np.zeros((64, 64), np.uint8)
        prob[16:48, 16:48] = 240
        write_probability(tmp_path / f"{row.id}.png", prob)
        stats.append(PseudoStats(row.id, row.image, str(tmp_path / f"{row.id}.png"), 0.9 - 0.3 * i, 0.25))
    picture = _pseudo_picture(stats, select_pseudo_labels(stats, min_confidence=0.5, min_area=0.0), data)
    assert titles_drawn == [["image", "pseudo-label", "probability"]]
    assert has_title_band(picture, rows=3, columns=3)
    pseudo_column = picture[picture.shape[0] - 3 * 64:, 64:128]
    assert (pseudo_column == RED).all(axis=-1).any(), "drawn as a prediction (red contour)"
    assert not (pseudo_column == GREEN).all(axis=-1).any(), "never as ground truth (green contour)"
