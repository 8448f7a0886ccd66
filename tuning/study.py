"""The study runner: Optuna over the student's noise and the pseudo-label filters.

A trial costs one short student training, not a whole pipeline: the teacher
and its pseudo-label probabilities are made once per study (the first worker
makes them under a lock and records where they are in the study's user
attributes; every other trial and worker reuses them). A trial only changes
which pseudo-labels are kept (min_confidence), which pixels count
(threshold), how batches mix them (pseudo_ratio) and how the student is
noised, then reports val/jaccard every epoch so the pruner can stop it.

Scale-out: start the same command on more processes or machines with the same
`storage` (PostgreSQL) and `study`; they join it (load_if_exists). Workers on
other machines need the output_dir on a shared file system for the teacher.
"""

from __future__ import annotations

import fcntl
import shutil
import warnings
from contextlib import contextmanager
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Iterator

import optuna

from lesion.config import SelftrainConfig, TrainingRunConfig, TuneConfig, replace_flat, to_flat
from lesion.data.prepare import PreparedData
from lesion.data.splits import unlabelled_pool
from lesion.errors import ConfigError
from lesion.outputs import write_json
from lesion.selftrain.pseudo import STATS, PseudoStats, read_stats, select_pseudo_labels
from lesion.selftrain.rounds import check_student, pseudo_round, stage_configs, student_for, train_student, train_teacher
from lesion.stage import stage
from lesion.tracking import Tracker
from lesion.train.callbacks import Pruning
from lesion.train.engine import make_accelerator
from tuning.space import SearchSpace

TEACHER_ATTR = "lesion.teacher"


def make_pruner(name: str, trial_epochs: int) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, trial_epochs))
    return optuna.pruners.NopPruner()


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def selftrain_view(cfg: TuneConfig) -> SelftrainConfig:
    """The study's runs as selftrain's, never registered: a trial's student is scored, not kept."""
    run = TrainingRunConfig(**{f.name: getattr(cfg.run, f.name) for f in fields(cfg.run)}, register=False)
    return SelftrainConfig(data=cfg.data, model=cfg.model, train=cfg.train, noise=cfg.noise, pseudo=cfg.pseudo, run=run)


class Study:
    """One worker of a study: its data, the shared teacher, and the objective."""

    def __init__(self, cfg: TuneConfig, pruner: optuna.pruners.BasePruner | None = None,
                 space: SearchSpace | None = None):
        self.cfg = cfg
        self.space = space or SearchSpace.from_json(cfg.tune.space)
        self.base = selftrain_view(cfg)
        check_student(self.base)
        self.teacher_info: dict[str, Any] = {}
        self.accelerator = make_accelerator(cfg.train)
        self.tracker = Tracker(enabled=self.accelerator.is_main_process)
        self.workdir = Path(cfg.run.output_dir) / "tune" / cfg.tune.study
        try:
            self.study = optuna.create_study(
                study_name=cfg.tune.study, storage=cfg.tune.storage, direction="maximize", load_if_exists=True,
                sampler=optuna.samplers.TPESampler(seed=cfg.tune.sampler_seed),
                pruner=pruner or make_pruner(cfg.tune.pruner, cfg.tune.trial_epochs))
        except (ImportError, ModuleNotFoundError) as err:
            raise ConfigError(f"storage {cfg.tune.storage!r} needs a database driver ({err.name}); "
                              "pip install psycopg2-binary for PostgreSQL") from None
        except Exception as err:  # SQLAlchemy's many connection errors: the user needs one line
            if "sqlalchemy" not in type(err).__module__ and "optuna" not in type(err).__module__:
                raise
            raise ConfigError(f"cannot open Optuna storage {cfg.tune.storage!r}: {str(err).splitlines()[0]}; "
                              "check the URL, the server and the database") from None

    # ------------------------------------------------------------------ the teacher, once per study
    def teacher(self, data: PreparedData) -> dict[str, Any]:
        with file_lock(self.workdir / ".teacher.lock"):
            info = self.study.user_attrs.get(TEACHER_ATTR)
            if info and (Path(info["pseudo_folder"]) / STATS).is_file():
                return info
            teacher_cfg, _ = stage_configs(self.base)
            folder = self.workdir / "teacher"
            shutil.rmtree(folder, ignore_errors=True)
            with self.tracker.run("tune", self.cfg.tune.study, params=to_flat(teacher_cfg), nested=True,
                                  stage="teacher", strict_params=False):
                result = train_teacher(self.base, self.accelerator, self.tracker, folder, data)
                pseudo_round(self.base, str(result.kept.dir), unlabelled_pool(data.rows), data, self.accelerator,
                             folder / "pseudo")
                info = {"model_dir": str(result.kept.dir), "pseudo_folder": str(folder / "pseudo"),
                        "val_jaccard": result.kept.record["val/jaccard"], "run_id": self.tracker.run_id}
            self.study.set_user_attr(TEACHER_ATTR, info)
            return info

    # ------------------------------------------------------------------ one trial
    def objective(self, trial: optuna.Trial, data: PreparedData, stats: list[PseudoStats]) -> float:
        params = self.space.suggest(trial)
        cfg = replace_flat(self.base, **params)
        _, student_cfg = stage_configs(cfg)
        teacher_dir = self.teacher_info.get("model_dir") or self.teacher_info.get("best_dir", "")  # best_dir: old studies
        student_cfg = student_for(student_cfg, cfg.pseudo, teacher_dir)
        student_cfg = replace(student_cfg, train=replace(student_cfg.train, epochs=self.cfg.tune.trial_epochs))
        selection = select_pseudo_labels(stats, cfg.pseudo.min_confidence, cfg.pseudo.min_area)
        if not selection.kept:
            raise optuna.TrialPruned(f"min_confidence={cfg.pseudo.min_confidence:.3f} keeps no pseudo-label")
        folder = self.workdir / f"trial-{trial.number}"
        pruned: optuna.TrialPruned | None = None
        with self.tracker.run("tune", self.cfg.tune.study, params={**params, "trial": trial.number,
                                                                   "kept_pseudo_labels": len(selection.kept)},
                              nested=True, stage=f"trial{trial.number}", strict_params=False):
            try:
                result = train_student(cfg, student_cfg, self.accelerator, self.tracker, folder, data, selection,
                                       unlabelled_pool(data.rows), callbacks=[Pruning(trial, optuna.TrialPruned)])
            except optuna.TrialPruned as err:
                pruned = err
                self.tracker.set_tags({"lesion.trial_state": "PRUNED", "lesion.trial_note": str(err)})
            else:
                self.tracker.set_tags({"lesion.trial_state": "COMPLETE"})
                value = result.kept.record["val/jaccard"]  # the weights the trial's student hands on
                self.tracker.log_metrics({"trial/value": value}, step=trial.number)
            finally:
                shutil.rmtree(folder, ignore_errors=True)  # trials keep their numbers in MLflow, not weights
        if pruned is not None:
            raise pruned
        return value

    # ------------------------------------------------------------------ the worker
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        # Workers of one study share its one run (stage(join=...)): so tune takes no run lock, sharing is the point.
        with stage("tune", cfg, accelerator=self.accelerator, join=cfg.tune.study,
                   tags={"lesion.study": cfg.tune.study, "lesion.storage": _safe_url(cfg.tune.storage)}) as ctx:
            self.tracker = ctx.tracker
            if not unlabelled_pool(ctx.data.rows):
                raise ConfigError(f"{cfg.data.data}: no unlabelled images; lower label_fraction or pass unlabeled=FOLDER")
            teacher = self.teacher_info = self.teacher(ctx.data)
            stats = read_stats(teacher["pseudo_folder"])
            self.tracker.set_tags({"lesion.teacher_run": teacher["run_id"]})
            self.study.optimize(lambda t: self.objective(t, ctx.data, stats), n_trials=cfg.tune.n_trials,
                                timeout=cfg.tune.timeout or None, catch=(Exception,), gc_after_trial=True)
            out = self.summarize()
        return out

    def summarize(self) -> dict[str, Any]:
        trials = self.study.get_trials(deepcopy=False)
        states = {s.name: sum(t.state == s for t in trials) for s in optuna.trial.TrialState}
        out: dict[str, Any] = {"study": self.cfg.tune.study, "trials": len(trials),
                               "states": {k: v for k, v in states.items() if v}, "run_id": self.tracker.run_id}
        complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        if complete:
            best = self.study.best_trial
            out.update(best_value=best.value, best_trial=best.number, params=best.params)
            path = write_json(self.workdir / "best_params.json", {"study": self.cfg.tune.study, "value": best.value,
                                                                  "trial": best.number, "params": best.params})
            self.tracker.log_artifact(path, "tune")
            self.tracker.log_metrics({"tune/best_value": best.value}, step=len(trials))
            print(f"[lesion] best val/jaccard {best.value:.4f} (trial {best.number}); "
                  f"apply with: mlflow run . -e selftrain -P params={path}")
        self._plots()
        print(f"[lesion] study {self.cfg.tune.study}: {out['states']}")
        return out

    def _plots(self) -> None:
        if not self.tracker.active:
            return
        import matplotlib.pyplot as plt
        from optuna.visualization import matplotlib as ov

        for name, plot in (("optimization_history", ov.plot_optimization_history),
                           ("param_importances", ov.plot_param_importances), ("slice", ov.plot_slice),
                           ("contour", ov.plot_contour), ("intermediate_values", ov.plot_intermediate_values)):
            try:
                with warnings.catch_warnings():  # "... is experimental": one warning per plot, nothing to act on
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    axes = plot(self.study)
            except Exception as err:  # too few finished trials for this plot yet
                self.tracker.log_text(f"{name}: not drawn ({err})\n", f"tune/plots/{name}.txt")
                continue
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).get_figure()
            figure.set_size_inches(10, 6)
            self.tracker.log_figure(figure, f"tune/plots/{name}.png")
            plt.close("all")


def _safe_url(url: str) -> str:
    """The storage URL without its password, for tags."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def run_tune(cfg: TuneConfig) -> dict[str, Any]:
    return Study(cfg).run()

