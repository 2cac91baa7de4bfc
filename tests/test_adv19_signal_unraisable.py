"""A signal whose Interrupted lands where Python only prints exceptions (2026-11-29, a fresh run of
test_file_safety's real-signal test): SIGINT arrived inside importlib's module-lock weakref callback, stderr
got "Exception ignored in ... Traceback ... Interrupted: 2" and the run went on until raise_if_interrupted().
Inside interrupt_guard such an Interrupted is not printed, and the run stops at the next ordinary line."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

from conftest import ROOT

_CHILD = r"""
import gc, os, signal, sys, weakref
from collapse_passes.outputs import Interrupted, interrupt_guard, received_signal

class Box:
    pass

def callback(_ref):
    os.kill(os.getpid(), signal.SIGINT)   # the handler runs inside this callback
    total = 0
    for i in range(100000):
        total += i
    print("callback finished", total)

stage = "before"
try:
    with interrupt_guard():
        box = Box()
        ref = weakref.ref(box, callback)
        del box   # the callback runs here; its Interrupted is unraisable
        stage = "after the callback"
        for _ in range(10 ** 7):   # the signal, sent again, is raised in this loop
            pass
        stage = "finished"
except Interrupted as exc:
    print("interrupted", exc.signum, stage, received_signal())
print("hook restored", sys.unraisablehook is sys.__unraisablehook__)
"""


def test_an_interrupted_in_a_weakref_callback_is_not_printed_and_stops_the_run():
    p = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": ROOT})
    assert p.returncode == 0, p.stderr
    assert "Exception ignored" not in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert "callback finished" not in p.stdout   # the handler did raise inside the callback
    assert f"interrupted {int(signal.SIGINT)} after the callback {int(signal.SIGINT)}" in p.stdout, p.stdout
    assert "hook restored True" in p.stdout


def test_other_unraisable_exceptions_still_reach_the_previous_hook():
    child = r"""
import sys
from collapse_passes.outputs import interrupt_guard
class Bad:
    def __del__(self):
        raise ValueError("from __del__")
with interrupt_guard():
    Bad()
"""
    p = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": ROOT})
    assert p.returncode == 0 and "ValueError: from __del__" in p.stderr, p.stderr
