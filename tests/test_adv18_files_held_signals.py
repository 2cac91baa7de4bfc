"""Signals "held" around a rename (outputs.signals_blocked) must really be held.

pthread_sigmask blocks SIGINT/SIGTERM for the calling thread only. A run always has other threads
(onnxruntime's pools, TVM's workers) that do not block them, so a signal sent to the process went to one
of those, and CPython ran the handler in the main thread at its next instruction: inside the block. Seen:
Interrupted raised between a rename and its bookkeeping (the message said "nothing written" with the
model in place), and between a temp file's creation and its record (the temp file was left behind).
"""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from collapse_passes import outputs


@pytest.fixture
def other_thread():
    """A thread that does not block the signals, as onnxruntime's pool threads."""
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, daemon=True)
    t.start()
    yield t
    stop.set()
    t.join()


def test_a_signal_delivered_to_another_thread_waits_for_the_end_of_the_block(other_thread):
    steps = []
    with pytest.raises(outputs.Interrupted) as exc:
        with outputs.interrupt_guard():
            with outputs.signals_blocked():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)   # the other thread has the signal by now
                for _ in range(1000):
                    pass
                steps.append("block done")
            steps.append("after block")
    assert steps == ["block done"]   # raised when the block ended, not inside it and not later
    assert exc.value.signum == signal.SIGTERM


def test_a_signal_during_a_rename_names_the_file_renamed(tmp_path, monkeypatch, other_thread):
    """A real SIGTERM while the model is renamed into place: the message names it (it was written)."""
    from test_file_safety import cli, small_model
    import onnx

    onnx.save(small_model(), tmp_path / "m.onnx")

    def rename(src, dst):
        if os.path.basename(dst) == "o.onnx":
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
        os.replace(src, dst)

    monkeypatch.setattr(outputs.OutputPlan, "_rename", staticmethod(rename))
    rc, _, err = cli("m.onnx", "--collapse", "block.relu", "-o", "o.onnx", "--save-scores", "s.json",
                     "--report", "r.json", "--scores", _scores(tmp_path), cwd=tmp_path)
    assert rc == 128 + signal.SIGTERM, err
    last = err.strip().splitlines()[-1]
    # the renames before the report land together; the report (renamed last, after TVM) does not
    assert last == "interrupted (SIGTERM); wrote o.onnx (model), s.json (scores)", last
    assert (tmp_path / "o.onnx").exists() and (tmp_path / "s.json").exists() and not (tmp_path / "r.json").exists()
    assert not [f for f in os.listdir(tmp_path) if outputs.is_temp_name(f)]


def _scores(tmp_path) -> str:
    import json

    p = tmp_path / "k.json"
    p.write_text(json.dumps({"scores": {"block.relu": 0.0, "out_act": 1.0}}))
    return "k.json"


def test_a_signal_while_a_temp_file_is_created_leaves_no_temp_file(tmp_path, monkeypatch, other_thread):
    real = os.open

    def slow_open(path, *a, **k):
        fd = real(path, *a, **k)
        if outputs.is_temp_name(os.path.basename(os.fspath(path))):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
        return fd

    plan = outputs.OutputPlan()
    plan.add_output("report", "--report", tmp_path / "r.json")
    monkeypatch.setattr(os, "open", slow_open)
    with pytest.raises(outputs.Interrupted):
        with outputs.interrupt_guard():
            try:
                plan.stage("report", b"{}")
            finally:
                plan.discard()
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


@pytest.mark.tvm
def test_a_signal_while_export_library_makes_its_temp_dir_leaves_nothing(tmp_path, monkeypatch, other_thread):
    """The temp dir was made under signals_blocked() but its cleanup (try/finally) began after the block: a
    signal held over the mkdir was raised in between and left `.m.so.~cp<pid>-*.tmpdir` behind."""
    pytest.importorskip("tvm")
    from tvm_integration import compile as tc

    real = os.mkdir

    def mkdir(path, *a, **k):
        real(path, *a, **k)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)

    monkeypatch.setattr(os, "mkdir", mkdir)
    with pytest.raises(outputs.Interrupted):
        with outputs.interrupt_guard():
            tc.export_library(None, tmp_path / "m.so")   # interrupted before the executable is used
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


def test_a_signal_while_the_export_temp_dir_is_made_leaves_nothing(tmp_path, monkeypatch, other_thread):
    """atomic_directory (--export): its temp dir's cleanup began after the mkdir; a signal in between left
    `.exp.~cp<pid>-*.tmpdir` behind."""
    from tvm_integration.cli_hook import atomic_directory

    real = os.mkdir

    def mkdir(path, *a, **k):
        real(path, *a, **k)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)

    monkeypatch.setattr(os, "mkdir", mkdir)
    with pytest.raises(outputs.Interrupted):
        with outputs.interrupt_guard():
            with atomic_directory(tmp_path / "exp"):
                pass
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("writer", ["write_text_atomic", "atomic_path"])
def test_a_signal_while_a_library_writer_makes_its_temp_file_leaves_nothing(tmp_path, monkeypatch, other_thread,
                                                                           writer):
    """The library writers (onnx/graph.write_text_atomic: the tuning summary, plots; outputs.atomic_path: the
    model scripts) created the temp file before their cleanup began."""
    from collapse_passes.onnx.graph import write_text_atomic

    real = os.open

    def slow_open(path, *a, **k):
        fd = real(path, *a, **k)
        name = os.path.basename(os.fspath(path))
        if outputs.is_temp_name(name) and name.startswith(".t.json."):   # not the folder probe's temp file
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
        return fd

    monkeypatch.setattr(os, "open", slow_open)
    with pytest.raises(outputs.Interrupted):
        with outputs.interrupt_guard():
            if writer == "write_text_atomic":
                write_text_atomic("{}", tmp_path / "t.json")
            else:
                with outputs.atomic_path(tmp_path / "t.json") as tmp:
                    open(tmp, "w").close()
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


def test_a_block_in_another_thread_does_not_hold_the_main_threads_signal():
    """Python runs handlers in the main thread only: a worker's signals_blocked() (a library writer called from
    a pool) must neither hold the main thread's Interrupted nor raise it in the worker."""
    got = []

    def worker():
        try:
            with outputs.signals_blocked():
                time.sleep(0.3)
            got.append("worker done")
        except outputs.Interrupted:
            got.append("worker interrupted")

    t = threading.Thread(target=worker)
    with pytest.raises(outputs.Interrupted):
        with outputs.interrupt_guard():
            t.start()
            time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100):
                time.sleep(0.01)
            got.append("main went on")
    t.join()
    assert got == ["worker done"]
