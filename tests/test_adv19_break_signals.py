"""interrupt_guard's resend of a swallowed Interrupted (outputs._unraisable, H41 review of 9906455).

The timer sent the signal again 20 ms later whatever happened meanwhile: when the run had already stopped
(raise_if_interrupted, or the user's second ^C) the resend raised a second Interrupted inside that one's
cleanup (cli's plan.discard(), a finally); when the guard had ended it went to the restored handler
(SIG_DFL for SIGTERM: the process died after the guarded call returned)."""
from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT

_PRELUDE = r"""
import os, signal, sys, time, weakref
from collapse_passes.outputs import Interrupted, finish_run, interrupt_guard, raise_if_interrupted

class Box:
    pass

def swallow(sig):
    # the handler's Interrupted raised in a weakref callback: Python only hands it to sys.unraisablehook
    def callback(_ref):
        os.kill(os.getpid(), sig)
        for _ in range(100000):
            pass
    box = Box()
    ref = weakref.ref(box, callback)
    del box

def busy(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
"""


def _run(body: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _PRELUDE + body], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": ROOT})


def test_the_resend_does_not_interrupt_the_cleanup_of_a_stop_already_under_way():
    p = _run(r"""
cleaned = False
try:
    with interrupt_guard():
        try:
            swallow(signal.SIGINT)
            raise_if_interrupted()   # the run's own check stops it before the resend comes
        except Interrupted:
            busy(0.3)   # cleanup longer than the 20 ms timer
            cleaned = True
            raise
except Interrupted as exc:
    print("stopped", exc.signum, "cleaned", cleaned)
busy(0.1)
print("alive")
""")
    assert p.returncode == 0, p.stderr
    assert "stopped 2 cleaned True" in p.stdout and "alive" in p.stdout, p.stdout + p.stderr
    assert "Traceback" not in p.stderr, p.stderr


def test_a_second_signal_before_the_resend_is_one_stop():
    p = _run(r"""
stops = 0
try:
    with interrupt_guard():
        swallow(signal.SIGINT)
        try:
            os.kill(os.getpid(), signal.SIGINT)   # the user's second ^C, before the timer
            busy(1.0)
        except Interrupted:
            stops += 1
            busy(0.3)   # the resend must not land here
            print("cleanup done")
except Interrupted:
    stops += 1
print("stops", stops)
""")
    assert p.returncode == 0, p.stderr
    assert "cleanup done" in p.stdout and "stops 1" in p.stdout, p.stdout + p.stderr


def test_a_guard_that_ends_before_the_resend_ends_with_the_interruption_not_a_later_kill():
    p = _run(r"""
try:
    with interrupt_guard():
        swallow(signal.SIGTERM)   # the block ends within the 20 ms
except Interrupted as exc:
    print("block ended with", exc.signum)
busy(0.2)   # SIG_DFL is back for SIGTERM: a late resend killed the process here
print("alive", sys.unraisablehook is sys.__unraisablehook__)
""")
    assert p.returncode == 0, (p.returncode, p.stderr)
    assert "block ended with 15" in p.stdout and "alive True" in p.stdout, p.stdout + p.stderr


def test_a_finished_run_is_not_interrupted_by_a_pending_resend():
    p = _run(r"""
with interrupt_guard():
    swallow(signal.SIGTERM)
    finish_run(0)   # everything written, the message printed
busy(0.2)
print("alive")
""")
    assert p.returncode == 0, (p.returncode, p.stderr)
    assert "alive" in p.stdout


def test_the_resend_still_stops_a_run_that_went_on():
    p = _run(r"""
where = "before"
try:
    with interrupt_guard():
        swallow(signal.SIGINT)
        where = "after the callback"
        busy(2.0)
        where = "finished"
except Interrupted as exc:
    print("interrupted", exc.signum, where)
""")
    assert "interrupted 2 after the callback" in p.stdout, p.stdout + p.stderr


def test_a_signal_after_a_dropped_resend_still_interrupts():
    """The resend dropped (the run had stopped once and went on, as code that catches Interrupted does): a later
    signal of the user's is raised as before, not taken for that resend."""
    p = _run(r"""
with interrupt_guard():
    swallow(signal.SIGINT)
    try:
        raise_if_interrupted()
    except Interrupted:
        pass   # caught and gone on (a library's except BaseException)
    busy(0.2)   # the timer comes and sends nothing
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        busy(1.0)
        print("not interrupted")
    except Interrupted as exc:
        print("interrupted", exc.signum)
""")
    assert "interrupted 15" in p.stdout, p.stdout + p.stderr
