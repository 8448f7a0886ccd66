"""The `lesion` command: every user action, with the same parameter names as the MLproject.

    lesion data inspect ../data/isic2017
    lesion finetune --data synthetic --epochs 3
    lesion launch finetune --num_processes 2 -- --epochs 3     # through accelerate launch
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import signal
import sys
from dataclasses import dataclass
from typing import Any, Callable

from lesion import config as C
from lesion.errors import LesionError
from lesion.interrupts import RESUME_HINT, RUN_ENDED, Terminated, interrupts_raise
from lesion.launch import in_group, peer_reported_error, report_user_error


@dataclass(frozen=True)
class EntryPoint:
    config: type
    target: str  # "module:function" taking the config
    help: str
    one_process: str = ""  # why it runs as a single process; empty: it runs on any number (Accelerate ranks)

    def function(self) -> Callable[[Any], Any]:
        module, name = self.target.split(":")
        return getattr(importlib.import_module(module), name)


ENTRY_POINTS: dict[str, EntryPoint] = {
    "finetune": EntryPoint(C.FinetuneConfig, "lesion.finetune:run_finetune",
                           "Train a segmenter on the labelled images (random, ImageNet or SSL encoder init)."),
    "evaluate": EntryPoint(C.EvaluateConfig, "lesion.evaluate:run_evaluate",
                           "Score a model on a split with ISIC metrics and write ISIC-format masks."),
    "predict": EntryPoint(C.PredictConfig, "lesion.predict:run_predict",
                          "Write masks and overlays for an image or a folder of images.",
                          "prediction runs on one process; split a large folder and run several"),
    "pretrain": EntryPoint(C.PretrainConfig, "lesion.pretrain:run_pretrain",
                           "Self-supervised encoder pretraining: a jigsaw-invariant auto-encoder on unlabelled images."),
    "selftrain": EntryPoint(C.SelftrainConfig, "lesion.selftrain.loop:run_selftrain",
                            "Noisy Student: teacher on labelled data, pseudo-labels for the unlabelled pool, "
                            "noised students, repeated."),
    "export": EntryPoint(C.ExportConfig, "lesion.export:run_export",
                         "Write a model to ONNX (dynamic batch and size), checked against torch with ONNX Runtime.",
                         "export runs on one process"),
    "report": EntryPoint(C.ReportConfig, "lesion.report:run_report",
                         "Label-efficiency report from the tracking store: table, curves, gains, worst cases.",
                         "the report reads the tracking store on one process"),
    "sweep": EntryPoint(C.SweepConfig, "lesion.sweep:run_sweep",
                        "Run supervised / SSL-init / self-training at several label fractions, then the report.",
                        "the sweep runs on one process; run finetune and selftrain with num_processes for GPUs"),
    "tune": EntryPoint(C.TuneConfig, "tuning.study:run_tune",
                       "Optuna study over noise augmentation, dropout and pseudo-label thresholds (teacher trained once).",
                       "a study worker is one process; scale out with more workers on the same storage and study"),
}


def parameter_names() -> set[str]:
    """Every entry point's flat parameter names: a preset (--config) may hold any of them."""
    return {n for entry in ENTRY_POINTS.values() for n, *_ in C.flat_fields(entry.config)}


def entry_parser(name: str, parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    entry = ENTRY_POINTS[name]
    # The true defaults are in each help line: argparse's own default is None (unset), so no defaults formatter.
    # No abbreviations: --epoch must not quietly mean --epochs (and a later --epoch_x make old commands ambiguous).
    parser = parser or argparse.ArgumentParser(prog=f"lesion {name}", description=entry.help, allow_abbrev=False)
    C.add_arguments(parser, entry.config)
    return parser


def disk_full(err: BaseException | None) -> bool:
    """Whether err, or an error it came from, is "No space left on device" (safetensors wraps it in its own type)."""
    while err is not None:
        if (isinstance(err, OSError) and err.errno == errno.ENOSPC) or "No space left on device" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def _interrupted(name: str, stop: KeyboardInterrupt) -> int:
    """One line instead of a traceback; the shell's 128 + signal number."""
    how, code = ("stopped by SIGTERM", 128 + signal.SIGTERM) if isinstance(stop, Terminated) else \
        ("interrupted by Ctrl-C (SIGINT)", 128 + signal.SIGINT)
    if not in_group():  # a rank of lesion launch's group: the launcher says it once
        print(f"lesion {name}: {how}; {RUN_ENDED}, and for a training run {RESUME_HINT} from its last saved epoch",
              file=sys.stderr, flush=True)
    return code


def run_entry_point(name: str, argv: list[str] | None = None) -> int:
    """Parse argv into the entry point's config and run it; user errors are one line, exit 2; an interrupt
    (Ctrl-C or SIGTERM) is one line, exit 130 or 143, with the MLflow run marked KILLED."""
    parser = entry_parser(name)

    def usage_error(message: str) -> None:  # argparse's, as one line (and once for a group of ranks)
        report_user_error(name, f"{message}; see lesion {name} --help")
        _no_empty_mlflow_run()
        raise SystemExit(2)

    parser.error = usage_error
    args = parser.parse_args(argv)
    try:
        cfg = C.from_args(ENTRY_POINTS[name].config, args, parameter_names())
        with interrupts_raise():
            ENTRY_POINTS[name].function()(cfg)
    except KeyboardInterrupt as stop:
        return _interrupted(name, stop)
    except LesionError as err:
        report_user_error(name, str(err))
        _no_empty_mlflow_run()
        return 2
    except Exception as err:
        if not disk_full(err):
            if peer_reported_error():  # another rank stopped on a user error: this one's broken collective is no news
                return 1
            raise
        # The MLflow run is already marked FAILED and the last epoch's state is on disk: nothing is lost.
        report_user_error(name, f"the disk is full (No space left on device) under output_dir="
                          f"{getattr(args, 'output_dir', '') or '.'} or cache_dir; free space or point them elsewhere, "
                          "then run the same command again: a training run resumes from its last saved epoch")
        return 2
    return 0


def _no_empty_mlflow_run() -> None:
    """Under `mlflow run`, a command refused before its run started leaves mlflow run's run empty: drop it."""
    if os.environ.get("MLFLOW_RUN_ID"):
        from lesion.tracking import drop_unused_env_run

        drop_unused_env_run()


def _data_inspect(args: argparse.Namespace) -> int:
    from lesion.data.inspect import inspect_data

    try:
        report = inspect_data(args.data, args.unlabeled, cache_dir=args.cache_dir or None,
                              max_pixels=args.max_pixels, skip_bad=C.parse_value("skip_bad", bool, args.skip_bad))
    except LesionError as err:
        print(f"lesion data inspect: error: {err}", file=sys.stderr)
        return 2
    print(report.format())
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="lesion", description="Label-efficient skin-lesion segmentation.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data = sub.add_parser("data", help="Inspect data sources.").add_subparsers(dest="data_command", required=True)
    inspect = data.add_parser("inspect", help="Counts, sizes, lesion areas and every problem found; exit 1 if unusable.")
    inspect.add_argument("data", help="Data source (synthetic, a folder, or FORMAT:PATH).")
    inspect.add_argument("--unlabeled", default="", help="Extra unlabelled image folders, comma-separated.")
    inspect.add_argument("--cache_dir", default="", help="Cache folder (synthetic data is written there).")
    inspect.add_argument("--max_pixels", type=int, default=C.MAX_PIXELS, help="Pixel limit per image.")
    inspect.add_argument("--skip_bad", nargs="?", const="true", default="false", metavar="BOOL",
                         help="Report bad files as skipped; usable if any remain (--skip_bad or --skip_bad true).")
    launch = sub.add_parser("launch", help="Run an entry point through `accelerate launch` (multi-process/GPU).")
    launch.add_argument("entry", choices=sorted(ENTRY_POINTS))
    launch.add_argument("--num_processes", type=int, default=1,
                        help="Processes (GPUs); 0 uses your `accelerate config` as it is (default: 1).")
    launch.epilog = "Everything after -- goes to the entry point, e.g. lesion launch finetune --num_processes 2 -- --epochs 3"
    for name, entry in ENTRY_POINTS.items():
        entry_parser(name, sub.add_parser(name, help=entry.help, description=entry.help, allow_abbrev=False))
    if argv and argv[0] in ENTRY_POINTS:
        return run_entry_point(argv[0], argv[1:])
    rest: list[str] = []
    if argv[:1] == ["launch"] and "--" in argv:  # the entry point's own parameters follow --
        cut = argv.index("--")
        argv, rest = argv[:cut], argv[cut + 1:]
    if argv[:1] == ["launch"] and not rest:
        known, extra = parser.parse_known_args(argv)
        if extra:  # the entry point's options given without the -- that separates them from launch's own
            print(f"lesion launch: error: {' '.join(extra)}: put the entry point's options after --, e.g. "
                  f"lesion launch {known.entry} --num_processes {known.num_processes} -- {' '.join(extra)}",
                  file=sys.stderr)
            return 2
    args = parser.parse_args(argv)
    if args.command == "data":
        return _data_inspect(args)
    if args.command == "launch":
        from lesion.launch import launch as do_launch

        if args.num_processes < 0:
            print(f"lesion launch: error: num_processes={args.num_processes}: pass 1 or more processes, or 0 to use "
                  "your `accelerate config`", file=sys.stderr)
            return 2
        reason = ENTRY_POINTS[args.entry].one_process
        if reason and args.num_processes != 1:
            print(f"lesion launch: error: num_processes={args.num_processes}: {reason} (num_processes=1)",
                  file=sys.stderr)
            return 2

        return do_launch(args.entry, args.num_processes, rest)
    return 2


if __name__ == "__main__":
    from lesion.cli import main as _main  # the module, not __main__, holds the registry

    raise SystemExit(_main())
