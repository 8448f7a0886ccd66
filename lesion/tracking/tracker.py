"""MLflow runs: start or resume a run, nested stages, and logging; a no-op on every process but the main one.

Only the main process talks to MLflow: a Tracker built with enabled=False
(every other rank) does nothing.

Runs are found again by their tags (`lesion.entry_point`, `lesion.run_name`,
`lesion.stage`): re-running the same command with the same run_name resumes
the unfinished run instead of starting a new one, which is what makes
crash-resume possible, also under `mlflow run` (which always opens a fresh
run: when the work goes into an older run, or into a fresh one because a
preset changed a parameter mlflow run had logged, its run is tagged with the
run that holds the work and deleted, so no empty run stays behind).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import mlflow
import torch
from mlflow.tracking import MlflowClient

from lesion.config import same_value
from lesion.errors import ConfigError, LesionError
from lesion.plots import close_figure
from lesion.tracking.store import configure_tracking

TAG_ENTRY, TAG_RUN_NAME, TAG_STAGE = "lesion.entry_point", "lesion.run_name", "lesion.stage"


def git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


# What a CPU run's numbers depend on beyond the code: a rebuilt environment with the same commit gave another
# validation Jaccard (0.5818 -> 0.5756, benchmarks/README.md), so every run records these versions.
STACK = ("torch", "torchvision", "timm", "segmentation-models-pytorch", "albumentations", "albucore",
         "opencv-python-headless", "numpy", "pillow", "scipy", "accelerate", "torchmetrics", "mlflow", "optuna")


def environment_tags() -> dict[str, str]:
    """lesion.env.<package> = its installed version for the stack, plus python, platform and torch threads."""
    tags = {"lesion.env.python": platform.python_version(), "lesion.env.platform": platform.platform(),
            "lesion.env.torch_threads": str(torch.get_num_threads()),
            "lesion.env.cuda": torch.version.cuda or "none"}
    for package in STACK:
        try:
            tags[f"lesion.env.{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            tags[f"lesion.env.{package}"] = "not installed"
    return tags


def _get_or_create_experiment(name: str) -> str:
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return mlflow.create_experiment(name)
    except Exception:  # another worker created it first
        return mlflow.get_experiment_by_name(name).experiment_id


def filter_literal(value: str) -> str | None:
    """value as a string constant of MLflow's filter grammar, or None where the grammar cannot hold it.

    MLflow takes the text between a constant's quotes verbatim (single or double
    quotes, no escapes), and sqlparse reads a backslash before a quote as an escape:
    a value with both quote kinds, or with a backslash, cannot be written.
    """
    if "\\" in value:
        return None
    for quote in ("'", '"'):
        if quote not in value:
            return f"{quote}{value}{quote}"
    return None


def find_runs(filters: dict[str, str], experiment_ids: list[str] | None = None, statuses: tuple[str, ...] = ()) -> list:
    """Runs whose tags equal filters (newest first), optionally restricted to statuses.

    Tag values are quoted for MLflow's filter grammar (a run name may hold an
    apostrophe); a value it cannot hold is matched here instead, as is every value
    again (equality, exactly), so the answer never depends on the grammar.
    """
    client = MlflowClient()
    if experiment_ids is None:
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
    clauses = [f"tags.`{k}` = {literal}" for k, v in filters.items() if (literal := filter_literal(v)) is not None]
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string=" and ".join(clauses),
                                  order_by=["attributes.start_time DESC"], page_token=token)
        runs += [r for r in page if all(r.data.tags.get(k) == v for k, v in filters.items())]
        token = page.token
        if not token:
            break
    return [r for r in runs if not statuses or r.info.status in statuses]


def finished_stage(entry_point: str, run_name: str, stage: str, parent_run_id: str) -> Any:
    """The FINISHED nested run of a stage under parent_run_id, or None: how a re-run skips done stages."""
    runs = find_runs({TAG_ENTRY: entry_point, TAG_RUN_NAME: run_name, TAG_STAGE: stage,
                      "mlflow.parentRunId": parent_run_id}, statuses=("FINISHED",))
    return runs[0] if runs else None


_DELETE_AFTER_EXIT = """
import sys, time
from mlflow.tracking import MlflowClient  # imported first: the run goes as soon as its owner has exited
pid, run_id = int(sys.argv[1]), sys.argv[2]

def alive():
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False

while alive():
    time.sleep(0.2)
try:
    MlflowClient().delete_run(run_id)
except Exception:
    pass
"""


def run_owner(run_id: str) -> int | None:
    """The process that made the run MLFLOW_RUN_ID names: the nearest of this process and its ancestors that
    was not started with MLFLOW_RUN_ID=run_id (`mlflow run`, or a caller of mlflow.projects.run). None without
    /proc."""
    marker = f"MLFLOW_RUN_ID={run_id}".encode()
    pid = os.getpid()
    for _ in range(64):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return None
        if marker not in environ:
            return pid
        if ppid <= 1:
            return None
        pid = ppid
    return None


def drop_empty_run(run_id: str) -> None:
    """Delete a run that mlflow run opened for an attempt whose work went into another run (an older one that
    it resumes, or a fresh one that logs what a preset changed).

    Not at once: after its command exits, mlflow run marks its run terminated (always:
    MLflow 3 compares the status string with status numbers, so it never sees one
    already finished), and it cannot do that to a deleted run: it would fail with a
    traceback. So the run is deleted by a small helper as soon as the process that
    made it has exited, or at once when that is this process. Without /proc (not
    Linux) it stays, FINISHED and tagged lesion.resumed_into.
    """
    owner = run_owner(run_id)
    if owner is None:
        return
    if owner == os.getpid():
        MlflowClient().delete_run(run_id)
        return
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}
    env["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
    subprocess.Popen([sys.executable, "-c", _DELETE_AFTER_EXIT, str(owner), run_id], env=env,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True)  # outlives this job, and a kill of its process group


def holds_nothing(client: MlflowClient, run_id: str) -> bool:
    """Whether the run has no metric and no artifact yet (its params say only what was asked)."""
    return not client.get_run(run_id).data.metrics and not client.list_artifacts(run_id)


def drop_unused_env_run() -> None:
    """mlflow run's run, when its command stopped on a user error before any work went into it: tagged, then
    dropped (drop_empty_run), so that bad input leaves no empty run in the UI. Best effort: the one-line error
    is what matters."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id or os.environ.get("RANK", "0") != "0":
        return
    try:
        configure_tracking()
        client = MlflowClient()
        if not holds_nothing(client, run_id):
            return
        client.set_tag(run_id, "lesion.stopped", "a user error before any work (the message is in the console)")
        drop_empty_run(run_id)
    except Exception:  # noqa: BLE001 - a store that cannot be reached changes nothing for the user's fix
        pass


def same_param(logged: str, value: Any) -> bool:
    """Whether a logged parameter says value (config.same_value: `mlflow run` logs its -P values shell-quoted and
    untyped); MLflow keeps only the first 6000 characters of a value."""
    return logged == str(value)[:6000] or same_value(logged, value)


# How the run was found, not what it computes: a run started without them logged '' (its name was generated,
# its experiment the default), and the re-run that names them is the same run.
IDENTITY_PARAMS = ("run_name", "experiment")


def _changed(params: dict[str, Any], logged: dict[str, str]) -> dict[str, tuple[str, str]]:
    """The params whose logged value says something else: name -> (logged, new)."""
    return {k: (logged[k], str(v)) for k, v in params.items()
            if k in logged and k not in IDENTITY_PARAMS and not same_param(logged[k], v)}


def _unfinished_run(entry_point: str, run_name: str, stage: str, parent: str | None, experiment_id: str,
                    reopen_finished: bool):
    """The newest run of this entry point, run_name and stage (under parent, for a nested one) that an earlier
    attempt left unfinished (with reopen_finished: or finished), or None."""
    if not run_name:
        return None
    filters = {TAG_ENTRY: entry_point, TAG_RUN_NAME: run_name, **({TAG_STAGE: stage} if stage else {}),
               **({"mlflow.parentRunId": parent} if parent else {})}
    statuses = ("RUNNING", "FAILED", "KILLED") + (("FINISHED",) if reopen_finished else ())
    found = [r for r in find_runs(filters, [experiment_id], statuses)
             if r.data.tags.get(TAG_STAGE, "") == stage]  # a parent is not its stages
    return found[0] if found else None


def _run_tags(entry_point: str, run_name: str, stage: str, tags: dict[str, str] | None) -> dict[str, str]:
    """What finds the run again (entry point, run_name, stage), the caller's tags, the git commit and the
    package versions (environment_tags)."""
    all_tags = {TAG_ENTRY: entry_point, TAG_RUN_NAME: run_name, **({TAG_STAGE: stage} if stage else {}),
                **(tags or {}), **environment_tags()}
    commit = git_commit()
    if commit:
        all_tags.setdefault("mlflow.source.git.commit", commit.removesuffix("-dirty"))
        all_tags["lesion.git_commit"] = commit
    return all_tags


def _leave_empty(client: MlflowClient, env_run: str, work_run: str, resumed: bool) -> None:
    """mlflow run's run holds none of the work (it went into work_run): say where it went, then drop it."""
    if not resumed:  # the fresh run is mlflow run's in all but id: its project and source tags
        mlflow.set_tags({k: v for k, v in client.get_run(env_run).data.tags.items()
                         if k.startswith("mlflow.") and k not in ("mlflow.runName", "mlflow.parentRunId")})
    client.set_tag(env_run, "lesion.resumed_into" if resumed else "lesion.moved_into", work_run)
    print(f"[lesion] mlflow run's run {env_run} is left empty: the work goes into run {work_run} ("
          + ("an unfinished run of this run_name, resumed)" if resumed else
             "a fresh run: the preset set parameters other than those mlflow run logged)"))
    client.set_terminated(env_run, "FINISHED")
    drop_empty_run(env_run)  # or it stays in the UI beside the run that holds the work


class Tracker:
    """A thin MLflow facade that is a no-op when not enabled (non-main processes)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.run_id: str | None = None
        self.resumed = False
        self._logged_steps: dict[str, set[int]] = {}

    # ---------------------------------------------------------------- runs
    @contextmanager
    def run(self, entry_point: str, run_name: str = "", experiment: str = "", params: dict[str, Any] | None = None,
            tags: dict[str, str] | None = None, nested: bool = False, stage: str = "",
            strict_params: bool = True, title: str = "", reopen_finished: bool = False) -> Iterator["Tracker"]:
        """Start (or resume) a run; it ends FINISHED, or FAILED/KILLED on an exception.

        A run that an earlier, unfinished attempt with the same run_name left behind is
        resumed (with reopen_finished, a finished one too: a study's run, which every
        worker joins). With strict_params, resuming with other parameter values is an
        error: the logged parameters must describe every step of the run. (Workers
        joining one Optuna study share a run with their own sampler seeds: not strict.)
        The run's name in the MLflow UI is title, else the stage of a nested run, else run_name.
        """
        if not self.enabled:
            yield self
            return

        configure_tracking()
        client = MlflowClient()
        outer = (self.run_id, self.resumed, self._logged_steps)  # restored when a nested run ends
        env_run = None if nested else os.environ.get("MLFLOW_RUN_ID")
        active = mlflow.active_run()
        if env_run:
            experiment_id = client.get_run(env_run).info.experiment_id
        elif nested and active is not None:
            experiment_id = active.info.experiment_id
        else:
            experiment_id = _get_or_create_experiment(experiment or f"lesion-{entry_point}")
        parent = active.info.run_id if nested and active is not None else None
        previous = _unfinished_run(entry_point, run_name, stage, parent, experiment_id, reopen_finished)
        resumed = previous is not None and previous.info.run_id != env_run
        if resumed and params and strict_params:  # refused before anything changes: the old run stays as it was
            self._check_same_params(params, previous.data.params, run_name)
        # mlflow run logged its -P values and MLproject defaults; a preset (config=) may have set others, and a
        # logged param cannot change: then the work goes into a fresh run that logs the values it used.
        env_params_differ = bool(env_run and not resumed and params
                                 and _changed(params, client.get_run(env_run).data.params))
        self._logged_steps = {}
        self.resumed = resumed
        if env_run:  # start_run reads it for any run it starts, and nested ones would re-attach to it: its job is done
            os.environ.pop("MLFLOW_RUN_ID", None)
        if resumed:
            mlflow.start_run(run_id=previous.info.run_id, nested=nested)
        elif env_run and not env_params_differ:
            mlflow.start_run(run_id=env_run)
        else:
            mlflow.start_run(experiment_id=experiment_id, run_name=run_name or None, nested=nested)
        self.run_id = mlflow.active_run().info.run_id
        if env_run and self.run_id != env_run:
            _leave_empty(client, env_run, self.run_id, resumed)
        name = title or (stage if nested else "") or run_name
        if name:  # also under mlflow run, whose run would keep a random name
            mlflow.set_tag("mlflow.runName", name)
        mlflow.set_tags(_run_tags(entry_point, run_name, stage, tags))
        if not nested:
            print(f"[lesion] {entry_point} run {name or self.run_id!r} (MLflow run {self.run_id}"
                  + (", resumed" if resumed else "") + (f"); after a crash, the same command with run_name={run_name} "
                                                        "resumes it" if run_name else ")"), flush=True)
        status, empty = "FINISHED", False
        try:
            if params:
                self.log_params(params)
            yield self
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        except LesionError:
            status = "FAILED"
            empty = not resumed and not nested and holds_nothing(MlflowClient(), self.run_id)
            raise
        except BaseException:
            status = "FAILED"
            raise
        finally:
            mlflow.end_run(status)
            if empty:  # a user error before any work (bad data, say): the fix is a new command, not this run
                drop_empty_run(self.run_id)
            if nested:
                self.run_id, self.resumed, self._logged_steps = outer

    @property
    def active(self) -> bool:
        return self.enabled and self.run_id is not None

    @staticmethod
    def _check_same_params(params: dict[str, Any], logged: dict[str, str], run_name: str) -> None:
        changed = _changed(params, logged)
        if changed:
            listed = ", ".join(f"{k}={new} (logged: {old})" for k, (old, new) in sorted(changed.items())[:5])
            raise ConfigError(f"run_name {run_name!r} is an unfinished run being resumed, but with other parameters: "
                              f"{listed}; re-run it unchanged, or pass a new run_name to start a new run")

    # ---------------------------------------------------------------- logging
    def log_params(self, params: dict[str, Any]) -> None:
        if not self.active:
            return

        existing = MlflowClient().get_run(self.run_id).data.params
        new = {k: str(v) for k, v in params.items() if k not in existing}
        if new:
            mlflow.log_params(new)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log each metric once per step, also across resumes (steps already in the store are skipped)."""
        if not self.active:
            return

        client = MlflowClient()
        fresh = {}
        for key, value in metrics.items():
            if key not in self._logged_steps:
                self._logged_steps[key] = {m.step for m in client.get_metric_history(self.run_id, key)}
            if step not in self._logged_steps[key]:
                fresh[key] = float(value)
                self._logged_steps[key].add(step)
        if fresh:
            mlflow.log_metrics(fresh, step=step)

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.active:
            mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def tags(self) -> dict[str, str]:
        if not self.active:
            return {}
        return MlflowClient().get_run(self.run_id).data.tags

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.active:
            p = Path(path)
            (mlflow.log_artifacts if p.is_dir() else mlflow.log_artifact)(str(p), artifact_path)

    def log_dict(self, data: dict[str, Any], name: str) -> None:
        if self.active:
            mlflow.log_dict(data, name)

    def log_text(self, text: str, name: str) -> None:
        if self.active:
            mlflow.log_text(text, name)

    def log_figure(self, figure: Any, name: str) -> None:
        if self.active:
            mlflow.log_figure(figure, name)
            close_figure(figure)

    def log_image(self, image: Any, name: str) -> None:
        """A uint8 (H, W, 3) array as a PNG artifact."""
        if self.active:
            mlflow.log_image(image, name)

