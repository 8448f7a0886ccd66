"""The label-efficiency report, built from the tracking store (lesion/sweep.py runs what feeds it).

For every finetune run and every self-training stage it reads the label
fraction, the validation Jaccard/Dice of the weights it handed on (keep) and, where the data
has a labelled test split, the same checkpoint's test Jaccard/Dice, and where runs were given an
`external` set (another source or clinic) its Jaccard and share of degenerate masks, then draws what users of
label-efficient methods compare: metric against label fraction, one line per
method (supervised from random init, from SSL init, self-trained teacher,
student, student*), the gain of each student over its teacher, and a gallery
of the champion's worst-segmented validation images. Everything is logged to
a `report` run (PNG figures, a CSV table and an HTML page) and the table is
printed.
"""

from __future__ import annotations

import base64
import csv
import html
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from lesion.config import MAX_PIXELS, SEGMENTER, ReportConfig
from lesion.data.cache import PreprocessCache
from lesion.data.sources import default_cache_dir
from lesion.data.splits import read_manifest, select
from lesion.errors import ConfigError
from lesion.inference import predict_images
from lesion.metrics import per_image_scores, score_image
from lesion.plots import overlay_grid
from lesion.registry import alias_version, load_model
from lesion.tracking import TAG_ENTRY, TAG_STAGE, Tracker, configure_tracking

METHOD_ORDER = ["supervised (random init)", "supervised (ImageNet init)", "supervised (SSL init)",
                "self-trained teacher", "student", "student*", "student**"]


def _method(run) -> str | None:
    tags, params = run.data.tags, run.data.params
    entry, stage = tags.get(TAG_ENTRY), tags.get(TAG_STAGE, "")
    if entry == "finetune":
        init = params.get("encoder_init", "random")
        return {"random": "supervised (random init)", "imagenet": "supervised (ImageNet init)"}.get(
            init, "supervised (SSL init)")
    if entry == "selftrain" and stage == "teacher":
        return "self-trained teacher"
    if entry == "selftrain" and stage.startswith("student"):
        return "student" + "*" * (int(stage.removeprefix("student")) - 1)
    return None


def collect(client, runs: list) -> list[dict[str, Any]]:
    """One row per scored run: method, label fraction, metrics, and its selftrain parent (for gains)."""
    rows = []
    for run in runs:
        method = _method(run)
        # model/*: the weights the run handed on; best/* in runs from before keep=best|last.
        prefix = "model" if "model/val_jaccard" in run.data.metrics else "best"
        metrics = {k.removeprefix(f"{prefix}/"): v for k, v in run.data.metrics.items() if k.startswith(f"{prefix}/")}
        if method is None or "val_jaccard" not in metrics:
            continue
        params = run.data.params
        fraction = params.get("label_fraction")
        parent = run.data.tags.get("mlflow.parentRunId")
        if fraction is None and parent:
            fraction = client.get_run(parent).data.params.get("label_fraction")
        # Which weights were scored: runs of before `keep` existed, and keep=best runs, scored their best epoch.
        weights = "best epoch" if prefix == "best" or params.get("keep") == "best" else "last"
        rows.append({"method": method, "label_fraction": float(fraction or 1.0), "weights": weights,
                     "run_id": run.info.run_id,
                     "parent": parent or "", "val_jaccard": metrics["val_jaccard"],
                     **{k: metrics.get(k, float("nan")) for k in SCORES if k != "val_jaccard"},
                     "data": params.get("data", "")})
    return rows


SCORES = ("val_jaccard", "val_dice", "test_jaccard", "test_dice", "external_jaccard", "external_degenerate")
HELD_OUT = ("test", "external")  # columns shown only where some run was scored on such a set


def _mean(values: list[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def has_split(table: list[dict[str, Any]], split: str) -> bool:
    return any(np.isfinite(v) for t in table for k, v in t.items() if split in k and isinstance(v, float))


def scores_heading(table: list[dict[str, Any]]) -> str:
    """'Validation', 'Validation and test', 'Validation, test and external': the sets the table holds."""
    sets = ["Validation", *(split for split in HELD_OUT if has_split(table, split))]
    return ", ".join(sets[:-1]) + " and " + sets[-1] if len(sets) > 1 else sets[0]


def _visible(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Test and external columns only where some run was scored on such a set."""
    hidden = [split for split in HELD_OUT if not has_split(rows, split)]
    return [{k: v for k, v in r.items() if not any(split in k for split in hidden)} for r in rows]


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean over repeated runs of the same (method, label fraction, weights scored: last or best epoch)."""
    groups: dict[tuple[str, float, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["method"], r["label_fraction"], r.get("weights", "last"))].append(r)
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    table = [{"method": m, "label_fraction": f, "weights": w, "runs": len(g),
              **{k: _mean([r.get(k, float("nan")) for r in g]) for k in SCORES}}
             for (m, f, w), g in groups.items()]
    return sorted(table, key=lambda t: (order.get(t["method"], 99), t["label_fraction"], t["weights"]))


def gains(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each student's val Jaccard minus its own teacher's (same selftrain run)."""
    by_parent: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        if r["parent"]:
            by_parent[r["parent"]][r["method"]] = r
    out = []
    for stages in by_parent.values():
        teacher = stages.get("self-trained teacher")
        for name, r in stages.items():
            if teacher and name.startswith("student"):
                out.append({"stage": name, "label_fraction": r["label_fraction"],
                            "gain_jaccard": r["val_jaccard"] - teacher["val_jaccard"],
                            "gain_dice": r["val_dice"] - teacher["val_dice"],
                            "gain_test_jaccard": r["test_jaccard"] - teacher["test_jaccard"]})
    return sorted(out, key=lambda g: (g["label_fraction"], g["stage"]))


def curves_figure(table: list[dict[str, Any]]) -> plt.Figure:
    """Metric against label fraction, one line per method: validation, plus test where runs were scored on one."""
    panels = [("val_jaccard", "validation Jaccard"), ("val_dice", "validation Dice")]
    if has_split(table, "test"):
        panels += [("test_jaccard", "test Jaccard"), ("test_dice", "test Dice")]
    if has_split(table, "external"):
        panels += [("external_jaccard", "external Jaccard"), ("external_degenerate", "external: degenerate masks")]
    fig, axes = plt.subplots(len(panels) // 2, 2, figsize=(11, 4 * len(panels) // 2), squeeze=False)
    axes = axes.ravel()
    for ax, (key, title) in zip(axes, panels):
        for method in [m for m in METHOD_ORDER if any(t["method"] == m for t in table)]:
            points = sorted((t["label_fraction"], t[key]) for t in table
                            if t["method"] == method and np.isfinite(t[key]))
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
        ax.set_xscale("log")
        ax.set_xlabel("label fraction")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("label efficiency")
    fig.tight_layout()
    return fig


def worst_gallery(count: int) -> tuple[np.ndarray | None, list[dict[str, Any]]]:
    """The champion's worst validation images (by Jaccard at original resolution) as overlays.

    The validation images are the ones the champion's own run held out: its logged manifest says which.
    """
    champion = alias_version(SEGMENTER, "champion")
    if champion is None or count <= 0:
        return None, []
    model, meta = load_model(f"models:/{SEGMENTER}/{champion.version}")
    with tempfile.TemporaryDirectory(prefix="lesion-") as tmp:
        try:
            manifest = mlflow.artifacts.download_artifacts(run_id=champion.run_id, artifact_path="data/manifest.csv",
                                                           dst_path=tmp)
        except Exception as err:  # MLflow raises many types; the user needs one line
            raise ConfigError(f"the champion's run {champion.run_id} has no data/manifest.csv "
                              f"({type(err).__name__}); pass gallery=0 or re-train the champion with lesion") from None
        rows = select(read_manifest(manifest), "val", labelled=True)
    cache = PreprocessCache(default_cache_dir(), int(meta["image_size"]), MAX_PIXELS)
    samples = [cache.load(r.image, r.mask) for r in rows]
    probs = predict_images(model, [s.image for s in samples], cache.size, color_constancy=model.config.color_constancy)
    scores = [per_image_scores(score_image(p, cache.original_mask(r.image, r.mask),
                                           postprocess=model.config.postprocess))["jaccard"][0]
              for p, r in zip(probs, rows)]
    worst = np.argsort(scores, kind="stable")[:count]
    picture = overlay_grid([samples[i].image for i in worst], [samples[i].mask.astype(bool) for i in worst],
                           [probs[i] >= 0.5 for i in worst], titles=[f"{rows[i].id} J={scores[i]:.2f}" for i in worst])
    return picture, [{"id": rows[i].id, "jaccard": float(scores[i])} for i in worst]


def _img_tag(path: Path) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}" style="max-width:100%">'


def _html_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>none</p>"
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{v:.4f}</td>" if isinstance(v, float) else f"<td>{html.escape(str(v))}</td>"
                                    for v in r.values()) + "</tr>" for r in rows)
    return f"<table border=1 cellpadding=4 style='border-collapse:collapse'><tr>{head}</tr>{body}</table>"


def format_table(table: list[dict[str, Any]]) -> str:
    keys = [k for k in SCORES if not any(split in k and not has_split(table, split) for split in HELD_OUT)]
    lines = ["| method | label fraction | weights | runs | " + " | ".join(k.replace("_", "/") for k in keys) + " |",
             "|---|---|---|---|" + "---|" * len(keys)]
    lines += [f"| {t['method']} | {t['label_fraction']:g} | {t.get('weights', 'last')} | {t['runs']} | "
              + " | ".join(f"{t[k]:.4f}" for k in keys) + " |" for t in table]
    return "\n".join(lines)


def _get_run(client, run_id: str):
    try:
        return client.get_run(run_id)
    except MlflowException:
        raise ConfigError(f"run {run_id!r} not found in {client._tracking_client.tracking_uri}; copy run ids from "
                          "`mlflow ui`, or pass experiment= instead of runs=") from None


def run_report(cfg: ReportConfig) -> dict[str, Any]:
    configure_tracking()
    client = MlflowClient()
    if cfg.runs:
        runs = [_get_run(client, r.strip()) for r in cfg.runs.split(",") if r.strip()]
        children = [c for r in runs for c in client.search_runs([r.info.experiment_id],
                                                                f"tags.`mlflow.parentRunId` = '{r.info.run_id}'")]
        runs += children
    else:
        names = [n.strip() for n in cfg.experiment.split(",") if n.strip()]
        experiments = [e for e in client.search_experiments() if not names or e.name in names]
        if names and not experiments:
            raise ConfigError(f"experiment(s) {names} not found in {client._tracking_client.tracking_uri}; "
                              "see `mlflow ui` for the names")
        runs = client.search_runs([e.experiment_id for e in experiments], max_results=5000)
    rows = collect(client, runs)
    if not rows:
        raise ConfigError("no finetune or selftrain runs with validation scores found; run some first "
                          "(mlflow run . -e sweep)")
    table, stage_gains = summarize(rows), gains(rows)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "label_efficiency.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    fig = curves_figure(table)
    fig.savefig(out / "label_efficiency.png", dpi=110)
    plt.close(fig)
    gallery, worst = worst_gallery(cfg.gallery)
    if gallery is not None:
        plt.imsave(out / "champion_worst.png", gallery)
    page = ["<html><head><meta charset='utf-8'><title>lesion: label-efficiency report</title></head>",
            "<body style='font-family:sans-serif;max-width:1100px;margin:auto'>",
            "<h1>Label-efficiency report</h1>",
            f"<h2>{scores_heading(table)} scores by method and label fraction</h2>",
            "<p>Each run's kept weights (keep: the final epoch's, or the best by validation Jaccard); ISIC metrics "
            "at the masks' original resolution, "
            "macro-averaged over images; the mean over runs with the same method and label fraction.</p>",
            _html_table(_visible(table)), _img_tag(out / "label_efficiency.png"),
            "<h2>Gain of each student over its teacher</h2>", _html_table(_visible(stage_gains))]
    if gallery is not None:
        page += ["<h2>The champion's worst validation images</h2>",
                 "<p>green: ground truth, red: prediction</p>", _img_tag(out / "champion_worst.png")]
    (out / "report.html").write_text("\n".join(page + ["</body></html>"]))
    tracker = Tracker()
    with tracker.run("report", experiment=cfg.experiment.split(",")[0] if cfg.experiment else "lesion-report",
                     params={"experiment": cfg.experiment, "runs": cfg.runs, "scored_runs": len(rows)}):
        tracker.log_artifact(out, "report")
    print(format_table(table))
    for g in stage_gains:
        print(f"gain of {g['stage']} over its teacher at {g['label_fraction']:g}: "
              f"{g['gain_jaccard']:+.4f} Jaccard, {g['gain_dice']:+.4f} Dice (validation)"
              + (f", {g['gain_test_jaccard']:+.4f} test Jaccard" if np.isfinite(g["gain_test_jaccard"]) else ""))
    print(f"[lesion] report: {out / 'report.html'}")
    return {"table": table, "gains": stage_gains, "worst": worst, "out": str(out), "run_id": tracker.run_id}
