"""The sweep entry point: each method (supervised, SSL init, self-training) at each label fraction, then the report.

Every run of the sweep is an ordinary finetune, pretrain or selftrain run in
one experiment; re-running the same sweep (same run_name) skips the runs it
finished before.
"""

from __future__ import annotations

import json
from dataclasses import fields, replace
from typing import Any

from lesion.config import (FinetuneConfig, NoiseConfig, PretrainConfig, ReportConfig, ScheduleConfig, SelftrainConfig,
                           SSLConfig, SweepConfig)
from lesion.errors import ConfigError
from lesion.finetune import run_finetune
from lesion.pretrain import run_pretrain
from lesion.report import run_report
from lesion.runs import RunFinished, default_run_name
from lesion.selftrain.loop import run_selftrain
from lesion.selftrain.rounds import check_student


def run_sweep(cfg: SweepConfig) -> dict[str, Any]:
    """The comparison the report is for: each method at each label fraction, in one experiment."""
    try:
        fractions = [float(f) for f in cfg.label_fractions.split(",") if f.strip()]
    except ValueError:
        raise ConfigError(f"label_fractions={cfg.label_fractions!r} must be comma-separated numbers in (0, 1], "
                          "e.g. 0.05,0.1,0.2,1.0") from None
    if any(not 0 < f <= 1 for f in fractions):
        raise ConfigError(f"label_fractions={cfg.label_fractions!r}: every fraction must be in (0, 1]")
    methods = [m.strip() for m in cfg.methods.split(",") if m.strip()]
    unknown = set(methods) - {"supervised", "ssl", "selftrain"}
    if unknown or not fractions:
        raise ConfigError(f"methods {sorted(unknown)} unknown or no label_fractions; use supervised, ssl, selftrain")
    if "selftrain" in methods:  # its students' settings fail before the first of the sweep's runs, not after
        check_student(cfg)
    prefix = cfg.run.run_name or default_run_name("sweep")

    def once(run, stage_cfg):
        """Each run of the sweep once: re-running a sweep (same run_name) skips the runs it finished before."""
        try:
            return run(stage_cfg)
        except RunFinished as done:
            print(f"[lesion] sweep: {stage_cfg.run.run_name} finished before, skipped")
            result = done.workdir / "result.json"
            return json.loads(result.read_text()) if result.is_file() else {}

    encoder = ""
    if "ssl" in methods:
        # The fine-tunes' schedule for ssl_epochs; their patience and keep are not pretraining's (it has no val/jaccard).
        schedule = {f.name: getattr(cfg.train, f.name) for f in fields(ScheduleConfig)}
        ssl_train = ScheduleConfig(**{**schedule, "epochs": cfg.ssl_epochs})
        pre = once(run_pretrain, PretrainConfig(data=cfg.data, ssl=SSLConfig(encoder=cfg.model.encoder,
                                                                             color_constancy=cfg.model.color_constancy),
                                                train=ssl_train, run=replace(cfg.run, run_name=f"{prefix}-ssl")))
        encoder = pre.get("encoder_dir", "")
    for fraction in fractions:
        data = replace(cfg.data, label_fraction=fraction)
        tag = f"{prefix}-{fraction:g}"
        if "supervised" in methods:
            once(run_finetune, FinetuneConfig(data=data, model=cfg.model, train=cfg.train, noise=NoiseConfig(),
                                              run=replace(cfg.run, run_name=f"{tag}-random")))
        if "ssl" in methods:
            once(run_finetune, FinetuneConfig(data=data, model=replace(cfg.model, encoder_init=encoder),
                                              train=cfg.train, noise=NoiseConfig(),
                                              run=replace(cfg.run, run_name=f"{tag}-ssl-init")))
        if "selftrain" in methods and fraction < 1.0:
            once(run_selftrain, SelftrainConfig(data=data, model=cfg.model, train=cfg.train, pseudo=cfg.pseudo,
                                                run=replace(cfg.run, run_name=f"{tag}-selftrain")))
    return run_report(ReportConfig(experiment=cfg.run.experiment))
