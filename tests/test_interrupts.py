"""Ctrl-C and SIGTERM as exceptions (lesion/interrupts.py): raised once, with the clean-up after them protected,
and held across steps that must happen together."""

from __future__ import annotations

import os
import signal

import pytest

from lesion.interrupts import Terminated, interrupts_raise, uninterrupted


def test_sigterm_raises_terminated_and_ctrl_c_keyboardinterrupt_then_the_old_handlers_return(ctrl_c_enabled):
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(Terminated), interrupts_raise():
        os.kill(os.getpid(), signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt) as caught, interrupts_raise():
        os.kill(os.getpid(), signal.SIGINT)
    assert not isinstance(caught.value, Terminated)
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_a_second_signal_does_not_cut_the_clean_up_short(ctrl_c_enabled):
    """accelerate sends SIGTERM right after a Ctrl-C: the first interrupt's clean-up (ending the run) must finish."""
    cleaned = []
    with pytest.raises(KeyboardInterrupt) as caught, interrupts_raise():
        try:
            os.kill(os.getpid(), signal.SIGINT)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)
            cleaned.append(True)
    assert cleaned and not isinstance(caught.value, Terminated), "the first signal names the interrupt"


def test_a_signal_inside_uninterrupted_comes_after_the_block():
    steps = []
    with pytest.raises(Terminated), interrupts_raise():
        with uninterrupted():
            steps.append("logged")
            os.kill(os.getpid(), signal.SIGTERM)
            steps.append("tagged")
        steps.append("after")
    assert steps == ["logged", "tagged"]


def test_an_ignored_sigint_stays_ignored():
    """A background job (`nohup lesion ... &`) ignores Ctrl-C from its shell; lesion must not turn it back on."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupts_raise():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)  # nothing happens
    finally:
        signal.signal(signal.SIGINT, previous)
