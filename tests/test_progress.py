"""Progress: bars on a terminal, plain lines in a log (one helper for every loop)."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios

import lesion.progress as progress
from tests.conftest import subprocess_env


class Clock:
    def __init__(self, step: float):
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_in_a_log_a_long_loop_prints_a_line_every_30_seconds_and_an_epoch_loop_none(monkeypatch, capsys):
    monkeypatch.setattr(progress, "on_terminal", lambda: False)
    monkeypatch.setattr(progress.time, "monotonic", Clock(10.0))  # each item takes 10 s
    assert list(progress.bar(range(10), "pseudo-label", unit="batches")) == list(range(10))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("[lesion] pseudo-label: 3/10 batches (30%), 30s so far, about 1m10s left")
    assert [line.split(":")[1].split()[0] for line in lines] == ["3/10", "6/10", "9/10", "10/10"]
    assert lines[-1].startswith("[lesion] pseudo-label: 10/10 batches done in")

    looped = progress.bar(range(10), "teacher epoch 1/3", heartbeat=False)
    looped.set_postfix(loss="0.5")
    assert list(looped) == list(range(10))
    monkeypatch.setattr(progress.time, "monotonic", Clock(0.1))
    assert list(progress.bar(range(10), "cache")) == list(range(10))
    assert capsys.readouterr().out == "", "epoch loops and short loops say nothing; the epoch line says it all"


def test_in_a_log_an_epoch_of_minutes_says_how_far_it_is_every_five_minutes(monkeypatch, capsys):
    monkeypatch.setattr(progress, "on_terminal", lambda: False)
    monkeypatch.setattr(progress.time, "monotonic", Clock(100.0))  # each batch takes 100 s
    epoch = progress.bar(range(10), "ssl epoch 1/2", unit="batches", every=progress.EPOCH_HEARTBEAT_S)
    assert list(epoch) == list(range(10))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(": ")[1].split()[0] for line in lines] == ["3/10", "6/10", "9/10", "10/10"]
    assert lines[0].startswith("[lesion] ssl epoch 1/2: 3/10 batches (30%), 5m00s so far, about 11m40s left")

    monkeypatch.setattr(progress.time, "monotonic", Clock(20.0))  # a 200-s epoch: the epoch line says it all
    assert list(progress.bar(range(10), "ssl epoch 2/2", every=progress.EPOCH_HEARTBEAT_S)) == list(range(10))
    assert capsys.readouterr().out == ""


def test_mlflow_download_bars_are_off_in_a_log_unless_asked_for(monkeypatch):
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    monkeypatch.setattr(progress, "on_terminal", lambda: False)
    progress.quiet_library_bars()
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true")
    progress.quiet_library_bars()
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "true"


LOOP = ("from lesion.progress import bar, say\n"
        "for _ in bar(range(3), 'teacher epoch 1/1', heartbeat=False): pass\n"
        "say('[lesion] teacher epoch 1/1 loss 0.5')\n")


def on_a_pty(args: list[str]) -> str:
    """Run args with stdout and stderr on a pseudo-terminal, as in a shell; returns what it showed."""
    parent, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty is 0 columns wide
    proc = subprocess.Popen(args, stdin=child, stdout=child, stderr=child, env=subprocess_env(TERM="xterm"))
    os.close(child)
    chunks = []
    while True:
        ready, _, _ = select.select([parent], [], [], 1.0)
        if ready:
            try:
                data = os.read(parent, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    proc.wait(timeout=60)
    os.close(parent)
    return b"".join(chunks).decode(errors="replace")


def test_a_terminal_gets_a_bar_and_a_file_gets_plain_lines(tmp_path):
    shown = on_a_pty([sys.executable, "-c", LOOP])
    assert "\rteacher epoch 1/1:   0%|" in shown and "| 0/3 [" in shown, shown

    log = tmp_path / "log.txt"
    with open(log, "w") as fh:
        subprocess.run([sys.executable, "-c", LOOP], stdout=fh, stderr=subprocess.STDOUT, env=subprocess_env(),
                       check=True)
    assert log.read_text() == "[lesion] teacher epoch 1/1 loss 0.5\n"
