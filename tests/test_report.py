"""The label-efficiency report on a small tracking store made by a tiny sweep."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from lesion.config import ReportConfig, SweepConfig, from_flat
from lesion.errors import ConfigError
from lesion.report import run_report
from lesion.sweep import run_sweep


def test_sweep_then_report(tmp_path, tracking, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = run_sweep(from_flat(SweepConfig, {
        "data": "synthetic:n=24,size=64,seed=8", "epochs": 1, "batch_size": 8, "ssl_epochs": 1, "iterations": 1,
        "min_confidence": 0.0, "tta": "false", "label_fractions": "0.5,1.0", "test_fraction": 0.2,
        "output_dir": str(tmp_path / "out")}))
    methods = {(t["method"], t["label_fraction"]) for t in out["table"]}
    assert methods == {("supervised (random init)", 0.5), ("supervised (random init)", 1.0),
                       ("supervised (SSL init)", 0.5), ("supervised (SSL init)", 1.0),
                       ("self-trained teacher", 0.5), ("student", 0.5)}
    assert [g["stage"] for g in out["gains"]] == ["student"]
    assert all(0 <= t["test_jaccard"] <= 1 and 0 <= t["test_dice"] <= 1 for t in out["table"]), "test split scored"
    assert -1 <= out["gains"][0]["gain_test_jaccard"] <= 1
    scores = [w["jaccard"] for w in out["worst"]]
    assert len(scores) == 5 and scores == sorted(scores), "all 5 validation images, worst first"
    artifacts = {a.path for a in MlflowClient().list_artifacts(out["run_id"], "report")}
    assert {"report/report.html", "report/label_efficiency.png", "report/label_efficiency.csv",
            "report/champion_worst.png"} <= artifacts
    html = (tmp_path / "outputs" / "report" / "report.html").read_text()
    assert "supervised (SSL init)" in html and "data:image/png;base64" in html
    assert "test_jaccard" in html and "Validation and test scores" in html


def test_report_without_runs_is_a_clear_error(tmp_path, tracking):
    with pytest.raises(ConfigError, match="no finetune or selftrain runs"):
        run_report(ReportConfig(out=str(tmp_path / "r")))


def test_test_columns_appear_only_where_a_test_split_was_scored():
    from lesion.report import format_table, summarize

    rows = [{"method": "student", "label_fraction": 0.1, "run_id": "a", "parent": "p", "data": "d",
             "val_jaccard": 0.5, "val_dice": 0.6, "test_jaccard": float("nan"), "test_dice": float("nan")}]
    assert "test" not in format_table(summarize(rows))
    scored = rows + [{**rows[0], "run_id": "b", "val_jaccard": 0.7, "test_jaccard": 0.4, "test_dice": 0.5}]
    table = summarize(scored)
    assert table[0]["val_jaccard"] == pytest.approx(0.6) and table[0]["test_jaccard"] == 0.4, "mean of scored runs"
    assert format_table(table).splitlines()[2] == "| student | 0.1 | last | 2 | 0.6000 | 0.6000 | 0.4000 | 0.5000 |"


def test_bad_sweep_and_report_arguments_are_clear_errors(tmp_path, tracking):
    with pytest.raises(ConfigError, match="label_fractions='0.1,abc' must be comma-separated numbers"):
        run_sweep(from_flat(SweepConfig, {"label_fractions": "0.1,abc"}))
    with pytest.raises(ConfigError, match=r"every fraction must be in \(0, 1\]"):
        run_sweep(from_flat(SweepConfig, {"label_fractions": "0.1,2"}))
    with pytest.raises(ConfigError, match="run 'nope' not found"):
        run_report(ReportConfig(runs="nope", out=str(tmp_path / "r")))
