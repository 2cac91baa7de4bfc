"""TVM integration: MetaSchedule tuning, database reuse, RPC runner, tracker errors.

Budget: one module-scoped tuning run (8 trials on a 1x3x16x16, 8-channel CNN),
one RPC run (2 trials); about 2-3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import time

import numpy as np
import pytest

pytestmark = pytest.mark.tvm

tvm = pytest.importorskip("tvm")
pytest.importorskip("xgboost")
pytest.importorskip("cloudpickle")
pytest.importorskip("psutil")

from tvm_integration import cli_hook  # noqa: E402
from tvm_integration import compile as tc  # noqa: E402
from tvm_integration.errors import TVMError  # noqa: E402
from tvm_integration.targets import AARCH64_CXX, resolve_target  # noqa: E402
from tvm_integration.testing import tiny_cnn_onnx  # noqa: E402
from tvm_integration.tune import check_tracker, parse_tracker, tune, tune_with_report  # noqa: E402

TRIALS = 8


@pytest.fixture(scope="module")
def cnn():
    pytest.importorskip("torch")
    return tiny_cnn_onnx(channels=8, size=16)


@pytest.fixture(scope="module")
def cpu():
    return resolve_target("cpu")


@pytest.fixture(scope="module")
def mod(cnn):
    return tc.import_onnx(cnn[0])


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, mod, cpu):
    """One real tuning run shared by the tests below.

    Under pytest-xdist the workers share it: the first one tunes (under a file
    lock) and saves its report; the others load that report and the database.
    """
    import dataclasses
    import fcntl

    from tvm_integration.tune import TaskReport, TuneReport, open_database

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    shared = root / "tvm_tune_shared"
    shared.mkdir(exist_ok=True)
    work = shared / "db"
    saved = shared / "first_report.json"
    target, info = cpu
    with open(shared / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if saved.exists():
            d = json.loads(saved.read_text())
            d["tasks"] = [TaskReport(**t) for t in d["tasks"]]
            report, db, seconds = TuneReport(**d), open_database(str(work)), None
        else:
            t0 = time.perf_counter()
            db, report = tune_with_report(
                mod, target, info, work_dir=str(work), trials=TRIALS, progress=False
            )
            seconds = time.perf_counter() - t0
            saved.write_text(json.dumps(dataclasses.asdict(report)))
    return {"db": db, "report": report, "work": work, "seconds": seconds}


def _free_closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return port


# --------------------------------------------------------------------------- local tuning


def test_tuning_produces_records(tuned):
    rep = tuned["report"]
    assert rep.tasks_tuned >= 1 and rep.tasks_reused == 0
    assert rep.new_records >= 1, rep.note
    assert os.path.exists(tuned["work"] / "database_workload.json")
    assert os.path.exists(tuned["work"] / "database_tuning_record.json")
    summary = json.loads((tuned["work"] / "tune_summary.json").read_text())
    assert summary["trials_requested"] == TRIALS and summary["seconds"] > 0
    # The heaviest tasks (convolutions) get the budget first.
    measured = [t for t in rep.tasks if t.best_us is not None]
    assert any("conv2d" in t.name for t in measured)


def test_tuned_build_applies_records_and_is_correct(tuned, cnn, mod, cpu):
    model, inputs = cnn
    ex = tc.build(mod, cpu[0], database=tuned["db"])
    assert any("conv2d" in f for f in ex.tuned_functions), ex.tuned_functions
    got = tc.run(ex, inputs)
    np.testing.assert_allclose(got[0], tc.run_ort(model, inputs)[0], rtol=1e-4, atol=1e-5)
    assert tc.measure_latency(ex, inputs, repeat=3) > 0


def test_rerun_with_same_dir_reuses_records(tuned, mod, cpu):
    target, info = cpu
    before = len(tuned["db"])
    t0 = time.perf_counter()
    db2, rep2 = tune_with_report(
        mod, target, info, work_dir=str(tuned["work"]), trials=TRIALS, progress=False
    )
    elapsed = time.perf_counter() - t0
    if tuned["report"].note:  # a task got no trial the first time: it is tuned now
        pytest.skip(f"first run did not cover every task: {tuned['report'].note}")
    assert rep2.tasks_tuned == 0 and rep2.new_records == 0
    assert rep2.tasks_reused == tuned["report"].tasks_tuned
    assert len(db2) == before
    assert elapsed < 20, elapsed  # no builder/runner started


def test_zero_trials_returns_existing_database_or_none(tuned, mod, cpu, tmp_path):
    target, info = cpu
    db = tune(mod, target, info, work_dir=str(tuned["work"]), trials=0, progress=False)
    assert db is not None and len(db) == len(tuned["db"])
    assert tune(mod, target, info, work_dir=str(tmp_path / "empty"), trials=0) is None
    assert not (tmp_path / "empty").exists()


def test_cli_hook_with_tuning_dir_reports_tuned_latency(tuned, cnn, tmp_path):
    model, inputs = cnn
    p = argparse.ArgumentParser()
    cli_hook.add_arguments(p)
    args = p.parse_args(
        ["--target", "cpu", "--tune-trials", str(TRIALS), "--tune-dir", str(tuned["work"]),
         "--export", str(tmp_path / "out"), "--tvm-repeat", "3"]
    )
    report = cli_hook.run_from_args(args, model, model, inputs, console=lambda _m: None)
    assert report["tuning"]["tasks_tuned"] == 0 or tuned["report"].note
    assert report["latency_ms"]["collapsed"]["tvm_tuned"] > 0
    assert report["verification"]["collapsed_tvm_tuned_vs_onnxruntime"]["ok"]
    assert report["export"]["library_is_tuned"]
    files = sorted(os.listdir(tmp_path / "out" / "tuning"))
    assert "database_tuning_record.json" in files and "database_workload.json" in files


# --------------------------------------------------------------------------- RPC


def test_parse_tracker():
    assert parse_tracker("127.0.0.1:9190") == ("127.0.0.1", 9190)
    for bad in ("localhost", "host:port", "h:0", "h:70000"):
        with pytest.raises(TVMError):
            parse_tracker(bad)


def test_unreachable_tracker_fails_fast_with_one_line(mod, cpu, tmp_path):
    target, info = cpu
    port = _free_closed_port()
    t0 = time.perf_counter()
    with pytest.raises(TVMError) as ei:
        tune(mod, target, info, work_dir=str(tmp_path / "w"), trials=4,
             rpc_tracker=f"127.0.0.1:{port}", rpc_key="nokey", progress=False)
    assert time.perf_counter() - t0 < 10
    msg = str(ei.value)
    assert "unreachable" in msg and f"127.0.0.1:{port}" in msg and "\n" not in msg


def test_rpc_key_without_tracker(cnn):
    model, inputs = cnn
    p = argparse.ArgumentParser()
    cli_hook.add_arguments(p)
    args = p.parse_args(["--target", "cpu", "--rpc-key", "k"])
    with pytest.raises(TVMError, match="--rpc-tracker"):
        cli_hook.run_from_args(args, model, model, inputs, console=lambda _m: None)


@pytest.mark.skipif(shutil.which(AARCH64_CXX) is None, reason=f"{AARCH64_CXX} not installed")
def test_cross_target_needs_rpc_to_tune(mod, tmp_path):
    target, info = resolve_target("aarch64")
    with pytest.raises(TVMError, match="--rpc-tracker"):
        tune(mod, target, info, work_dir=str(tmp_path / "w"), trials=4, progress=False)


@pytest.fixture(scope="module")
def rpc_tracker_and_server():
    pytest.importorskip("tornado", reason="tvm.rpc.tracker needs tornado (pip install tornado)")
    from tvm.rpc.server import Server
    from tvm.rpc.tracker import Tracker

    tracker = Tracker("127.0.0.1", port=19190, port_end=19990, silent=True)
    server = Server(
        "127.0.0.1", port=20190, port_end=20990, tracker_addr=("127.0.0.1", tracker.port),
        key="collapse-test", silent=True,
    )
    spec = f"127.0.0.1:{tracker.port}"
    deadline = time.time() + 30
    while True:  # the server registers asynchronously
        try:
            check_tracker(spec, "collapse-test", timeout=2)
            break
        except TVMError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)
    yield spec, "collapse-test"
    server.terminate()
    tracker.terminate()


def test_no_server_for_key_is_a_clear_error(rpc_tracker_and_server):
    spec, _ = rpc_tracker_and_server
    with pytest.raises(TVMError, match="no RPC server is registered under key 'other'"):
        check_tracker(spec, "other", timeout=3)


def test_tuning_through_rpc(rpc_tracker_and_server, mod, cpu, tmp_path):
    spec, key = rpc_tracker_and_server
    target, info = cpu
    db, rep = tune_with_report(
        mod, target, info, work_dir=str(tmp_path / "rpc"), trials=2,
        rpc_tracker=spec, rpc_key=key, progress=False,
    )
    assert rep.rpc is not None and rep.rpc["servers"] >= 1
    assert rep.new_records >= 1, rep.note
    assert any(t.best_us is not None for t in rep.tasks)
