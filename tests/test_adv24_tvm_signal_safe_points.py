"""The two safe points where a signal recorded during MetaSchedule tuning (outputs.signals_deferred) stops the
run, each checked on its own: the pooled builder's build (the next batch) and the measure callback (after a
batch's records are committed). test_adv11_tvm_signals times a whole interrupted run, where the scheduler reaches
only one of them first (the builder while it gives every task its first round, the callback after): with the
other removed that run still stops in time. Here removing either one fails."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

pytestmark = pytest.mark.tvm
pytest.importorskip("tvm")


@pytest.fixture
def recorded_sigterm():
    """Inside the CLIs' guard, a SIGTERM received while MetaSchedule runs: recorded, nothing raised yet."""
    from collapse_passes import outputs

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach Python handlers only in the main thread")
    try:
        with outputs.interrupt_guard():
            with outputs.signals_deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.2)   # the handler ran here and only recorded it
                yield
    finally:
        outputs.finish_run(0)   # as main() does: later library calls in this process are not "interrupted"


def test_the_pooled_builder_stops_at_its_next_batch(recorded_sigterm):
    from collapse_passes.outputs import Interrupted
    from tvm_integration import _worker
    from tvm_integration.tuning import _make_pooled_builder

    builder = _make_pooled_builder(max_workers=1, timeout_sec=30, initializer=_worker.make_initializer(("x86",)))
    try:
        with pytest.raises(Interrupted):
            # the Python method (derived_object's _inst) that MetaSchedule calls through TVM's FFI, where the
            # Interrupted arrives as TVM's RuntimeError; before any candidate is handed to a worker
            builder._inst.build([])
    finally:
        builder.shutdown()


def test_the_measure_callback_stops_after_a_batch(recorded_sigterm):
    from collapse_passes.outputs import Interrupted
    from tvm_integration.tuning import _stop_on_interrupt_callback

    with pytest.raises(Interrupted):
        _stop_on_interrupt_callback()._inst.apply(None, 0, [], [], [])


def test_without_a_signal_both_let_tuning_go_on():
    from tvm_integration import _worker
    from tvm_integration.tuning import _make_pooled_builder, _stop_on_interrupt_callback

    builder = _make_pooled_builder(max_workers=1, timeout_sec=30, initializer=_worker.make_initializer(("x86",)))
    try:
        assert builder._inst.build([]) == []
    finally:
        builder.shutdown()
    assert _stop_on_interrupt_callback()._inst.apply(None, 0, [], [], []) is None
