"""Shared bits of the benchmarks: the machine description, the real-data default and the result tables."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import torch

SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
SAMPLE = SHARED_DATA / "isic2017-sample"
EXTERNAL = SHARED_DATA / "ham10000" / "test"  # another source and other cameras: the external test set
EXTERNAL_POOL = SHARED_DATA / "ham10000" / "unlabeled"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores ({cpu}), {gpu}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def set_tag(overrides: list[str]) -> str:
    """NAME=VALUE overrides as a run-name suffix, '-lr=1e-3'; a run name is a folder name, so the separators of a
    URI or path value become dashes (encoder_init=models:/lesion-encoder/3 -> encoder_init=models-lesion-encoder-3)."""
    return "".join("-" + re.sub(r"[/\\:]+", "-", kv) for kv in overrides)


def print_table(header: list[str], rows: list[list[object]]) -> None:
    """A markdown table, ready to paste into benchmarks/README.md."""
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")
