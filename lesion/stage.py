"""One run's lifecycle, the same for every entry point: `with stage(entry, cfg) as ctx:`.

    accelerator -> run name agreed by all ranks -> the run's folder claimed (lock, finished check)
    -> MLflow run started or resumed -> leftovers of an unfinished attempt cleared
    -> data prepared, its manifest and summary logged -> (the entry point's work) -> folder marked finished

Every rank enters it with the same arguments and gets the same context: the
accelerator, the tracker (a no-op off the main process), the run name, the
run folder output_dir/<entry>/<run_name> and the prepared data. A study
worker (tune) joins its study's one run instead of owning a run: no lock, no
clean-up, no finished mark (`join=`).
"""

from __future__ import annotations

import os
import shutil
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from lesion.config import DataConfig, to_flat
from lesion.data.prepare import PreparedData, prepare_data
from lesion.errors import ConfigError, LesionError
from lesion.runs import check_not_finished, default_run_name, mark_finished, run_lock, stage_dir
from lesion.tracking import Tracker
from lesion.train.engine import make_accelerator


@dataclass
class StageContext:
    accelerator: Accelerator
    tracker: Tracker
    run_name: str
    workdir: Path
    data: PreparedData

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process


def shared_run_name(accelerator: Accelerator, given: str, prefix: str) -> str:
    """The given run_name, or one fresh unique name agreed by all processes."""
    name = [given or default_run_name(prefix)]
    if accelerator.num_processes > 1:
        broadcast_object_list(name)
    return name[0]


@contextmanager
def claim_run(accelerator: Accelerator, output_dir: str, entry: str, run_name: str) -> Iterator[Path]:
    """The run's folder output_dir/<entry>/<run_name>, owned by this run for the with-block.

    Entered before the MLflow run starts: the main process takes the run's lock
    (another live process with this run_name is refused) and refuses a run_name
    whose folder holds a finished run, so neither ever reaches MLflow or the folder.
    """
    workdir = stage_dir(output_dir, entry, run_name)
    with ExitStack() as stack:
        error: list[str | None] = [None]
        if accelerator.is_main_process:
            try:
                stack.enter_context(run_lock(output_dir, entry, run_name))
                check_not_finished(workdir, run_name)
            except LesionError as err:
                if accelerator.num_processes == 1:
                    raise
                error[0] = str(err)
        if accelerator.num_processes > 1:  # every rank stops, none waits for a main process that left
            broadcast_object_list(error)
            if error[0] is not None:
                raise ConfigError(error[0])
        yield workdir


def fresh_workdir(accelerator: Accelerator, tracker: Tracker, workdir: Path) -> None:
    """A resumed run keeps its checkpoints; a new run clears what an unfinished run of its name left, nothing else.

    claim_run has refused a finished run's folder, and workdir is output_dir/<entry>/<run_name>.
    """
    resumed = [tracker.resumed]
    if accelerator.num_processes > 1:
        broadcast_object_list(resumed)
    if accelerator.is_main_process and not resumed[0] and workdir.exists():
        print(f"[lesion] {workdir}: removing the leftovers of an unfinished run with this name (no unfinished "
              "MLflow run to resume it in this experiment)")
        shutil.rmtree(workdir)
    accelerator.wait_for_everyone()


@contextmanager
def stage(entry: str, cfg: Any, *, data: DataConfig | None = None, accelerator: Accelerator | None = None,
          tags: dict[str, Any] | None = None, need_labels: bool = True, join: str = "",
          setup: Callable[[], tuple[DataConfig, dict[str, Any]]] | None = None) -> Iterator[StageContext]:
    """The run of entry point `entry` with config cfg (its params), from start to finished mark.

    data: the data to prepare (default cfg.data); accelerator: default one built from cfg.train;
    need_labels=False accepts a source without masks (pretraining). join=NAME: join the one
    shared run NAME (a study's) with this process's folder output_dir/<entry>/<NAME>/worker-<pid>.
    setup: work that must follow the claim but precede the MLflow run (evaluate loads its model there: a busy
    run is refused first, and a model that does not load leaves no run); returns the data and extra tags.
    """
    accelerator = accelerator or make_accelerator(cfg.train)
    main = accelerator.is_main_process
    tracker = Tracker(enabled=main)
    tags = {"lesion.num_processes": accelerator.num_processes, **(tags or {})}
    with ExitStack() as stack:
        if join:
            run_name, workdir = join, Path(cfg.run.output_dir) / entry / join / f"worker-{os.getpid()}"
            # Workers of one study share its run (each with its own sampler seed), also one that joins after the
            # others finished: not strict about parameters, and a finished run is reopened.
            stack.enter_context(tracker.run(entry, run_name, cfg.run.experiment, params=to_flat(cfg), tags=tags,
                                            strict_params=False, reopen_finished=True))
        else:
            run_name = shared_run_name(accelerator, cfg.run.run_name, entry)
            workdir = stack.enter_context(claim_run(accelerator, cfg.run.output_dir, entry, run_name))
            if setup is not None:
                data, more_tags = setup()
                tags.update(more_tags)
            stack.enter_context(tracker.run(entry, run_name, cfg.run.experiment, params=to_flat(cfg), tags=tags))
            fresh_workdir(accelerator, tracker, workdir)
        prepared = prepare_data(data or cfg.data, cfg.run.seed, workdir, main, accelerator.wait_for_everyone,
                                need_labels=need_labels)
        tracker.log_artifact(prepared.manifest, "data")
        tracker.log_params({f"data.{k}": v for k, v in prepared.summary().items()})
        yield StageContext(accelerator, tracker, run_name, workdir, prepared)
        if join:
            shutil.rmtree(workdir, ignore_errors=True)  # the worker's manifest: the study's run holds the results
        else:
            if main:  # the run's last step: its folder is never cleaned or reused after this
                mark_finished(workdir, run_name, tracker.run_id)
            accelerator.wait_for_everyone()
