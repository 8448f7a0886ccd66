"""The label-efficiency report on a small tracking store made by a tiny sweep."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from lesion.config import ReportConfig, SweepConfig, from_flat
from lesion.errors import ConfigError
from lesion.report import run_report, run_sweep


@pytest.mark.slow
def test_sweep_then_report(tmp_path, tracking, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = run_sweep(from_flat(SweepConfig, {
        "data": "synthetic:n=24,size=64,seed=8", "epochs": 1, "batch_size": 8, "ssl_epochs": 1, "iterations": 1,
        "min_confidence": 0.0, "tta": "false", "label_fractions": "0.5,1.0", "output_dir": str(tmp_path / "out")}))
    methods = {(t["method"], t["label_fraction"]) for t in out["table"]}
    assert methods == {("supervised (random init)", 0.5), ("supervised (random init)", 1.0),
                       ("supervised (SSL init)", 0.5), ("supervised (SSL init)", 1.0),
                       ("self-trained teacher", 0.5), ("student", 0.5)}
    assert [g["stage"] for g in out["gains"]] == ["student"]
    scores = [w["jaccard"] for w in out["worst"]]
    assert len(scores) == 5 and scores == sorted(scores), "all 5 validation images, worst first"
    artifacts = {a.path for a in MlflowClient().list_artifacts(out["run_id"], "report")}
    assert {"report/report.html", "report/label_efficiency.png", "report/label_efficiency.csv",
            "report/champion_worst.png"} <= artifacts
    html = (tmp_path / "outputs" / "report" / "report.html").read_text()
    assert "supervised (SSL init)" in html and "data:image/png;base64" in html


def test_report_without_runs_is_a_clear_error(tmp_path, tracking):
    with pytest.raises(ConfigError, match="no finetune or selftrain runs"):
        run_report(ReportConfig(out=str(tmp_path / "r")))
