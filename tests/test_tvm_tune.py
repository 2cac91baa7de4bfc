"""TVM integration: MetaSchedule tuning, database reuse, RPC runner, tracker errors.

Budget: one module-scoped tuning run (8 trials on a 1x3x16x16, 8-channel CNN,
weight prepacking on), one 2-trial run of a second model on a copy of its
database, one RPC run (2 trials); about 2-4 minutes on 2 cores.
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
from tvm_integration.tuning import (  # noqa: E402
    DB_ENV,
    check_tracker,
    database_key,
    default_database_dir,
    parse_tracker,
    plan_trials,
    tune,
    tune_with_report,
)

TRIALS = 8
#: the evolutionary search's population in these runs (tune_with_report's default is 64 for budgets this small):
#: the tests here check records, reuse, prepacking and RPC plumbing, not how good the schedules are, and a round's
#: search over a population of 64 took 7-19 s per conv kernel on a loaded 2-core host, 1 s over 8
POPULATION = 8


@pytest.fixture(scope="module", autouse=True)
def _private_shared_database(tmp_path_factory):
    """Tests never touch the user's ~/.cache: the shared database goes to a temp dir."""
    mp = pytest.MonkeyPatch()
    mp.setenv(DB_ENV, str(tmp_path_factory.mktemp("shared_tvm_db")))
    yield
    mp.undo()


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

    from tvm_integration.tuning import TaskReport, TuneReport, open_database

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
                mod, target, info, work_dir=str(work), trials=TRIALS, progress=False,
                shared_database=False, population_size=POPULATION,
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
        mod, target, info, work_dir=str(tuned["work"]), trials=TRIALS, progress=False,
        shared_database=False,
    )
    elapsed = time.perf_counter() - t0
    if tuned["report"].note:  # a task got no trial the first time: it is tuned now
        pytest.skip(f"first run did not cover every task: {tuned['report'].note}")
    assert rep2.tasks_tuned == 0 and rep2.new_records == 0
    assert rep2.tasks_reused == tuned["report"].tasks_tuned
    assert len(db2) == before
    assert elapsed < 20, elapsed  # no builder/runner started
    assert sorted(rep2.tasks_from_database()) == sorted(t.name for t in rep2.tasks if not t.skipped)


# --------------------------------------------------------------------------- prepacking, shared database


def test_trial_plan_gives_every_task_several_rounds():
    per_iter, per_task = plan_trials(1024, 17)
    # >= 2 rounds per task: one round-robin round each, the rest picked by the gradient scheduler
    assert 1024 / (17 * per_iter) >= 2
    assert per_iter >= 16  # rounds are not made tiny: each costs a fixed search time
    assert per_task < 1024 and per_task >= 3 * 1024 // 17  # capped, but heavy tasks may take 3x
    tiny_iter, tiny_cap = plan_trials(8, 4)
    assert tiny_iter * 4 <= 8 and tiny_cap >= tiny_iter  # tiny budgets still reach every task
    assert plan_trials(100, 4, num_trials_per_iter=5, max_trials_per_task=30) == (5, 30)


@pytest.mark.parametrize("spec", ["cuda", {"kind": "cuda", "arch": "sm_86"}])
def test_cuda_targets_carry_the_block_limits_metaschedule_needs(spec, mod, tmp_path):
    """A bare {"kind": "cuda", "arch"} target compiles but MetaSchedule's thread binding refuses it
    (``missing attribute max_threads_per_block``, seen on an H100): the design spaces must generate
    without a GPU."""
    from tvm.s_tir import meta_schedule as ms

    from tvm_integration import _worker
    from tvm_integration.compile import prepare
    from tvm_integration.tuning import MODULE_EQUALITY

    target, info = resolve_target(spec, cuda_arch="sm_90" if spec == "cuda" else None)
    _worker.preload_intrinsics(info.intrin_modules)  # as tune_with_report does (the full import is slow)
    assert int(target.attrs["max_threads_per_block"]) == 1024
    if spec == "cuda":  # TVM's H100 tag refines the defaults
        assert int(target.attrs["l2_cache_size_bytes"]) == 50 * 2**20
    tasks = list(ms.relax_integration.extract_tasks(prepare(mod, target, prepack=False, layout=None),
                                                     target, module_equality=MODULE_EQUALITY))
    assert tasks
    for task in tasks:  # TuneContext initialises the default CUDA rules (AutoBind among them)
        ctx = ms.TuneContext(mod=task.dispatched[0], target=target, space_generator="post-order-apply",
                             task_name=task.task_name)
        assert ctx.generate_design_space()


def test_missing_xgboost_fails_before_any_measurement(monkeypatch, mod, cpu, tmp_path):
    """Without xgboost MetaSchedule would measure a whole round, then die inside its cost model
    (seen on a GPU machine): the tuner says so up front, in one line, and creates nothing."""
    import sys

    monkeypatch.setitem(sys.modules, "xgboost", None)   # `import xgboost` raises ImportError
    with pytest.raises(TVMError, match="needs xgboost.*pip install xgboost"):
        tune_with_report(mod, cpu[0], cpu[1], work_dir=str(tmp_path / "db"), trials=TRIALS)
    assert not (tmp_path / "db").exists()


def _vm_function_text(text: str, name: str) -> str:
    """The instructions of one function in ``VMExecutable.as_text()``."""
    lines, inside = [], False
    for line in text.splitlines():
        if line.startswith("@"):
            inside = line == f"@{name}:"
        elif inside:
            lines.append(line)
    return "\n".join(lines)


def test_prepacked_build_equals_unpacked(tuned, cnn, mod, cpu):
    """Weight prepacking re-lays out the weights at compile time; the numbers must not change."""
    model, inputs = cnn
    target, _ = cpu
    assert tuned["report"].prepack
    packed = tc.build(mod, target, database=tuned["db"], prepack=True)
    plain = tc.build(mod, target, database=tuned["db"], prepack=False)
    assert packed.tuned_functions and plain.tuned_functions
    # The layout rewrite happened: tuned kernels read pre-packed weights.
    assert "_prepacked" in packed.executable.as_text()
    assert "_prepacked" not in plain.executable.as_text()
    # The folded weights are plain constants of main, not a tuple rebuilt on every call.
    assert "tuple_getitem" not in _vm_function_text(packed.executable.as_text(), "main")
    got_packed, got_plain = tc.run(packed, inputs)[0], tc.run(plain, inputs)[0]
    np.testing.assert_allclose(got_packed, got_plain, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_packed, tc.run_ort(model, inputs)[0], rtol=1e-4, atol=1e-5)


def _second_model():
    """Shares both convolutions (shapes) with the fixture CNN, but not its weights, first
    epilogue (LeakyReLU instead of BN+ReLU) or classifier (6 classes instead of 4)."""
    import torch
    from torch import nn

    from tvm_integration.testing import export_onnx

    torch.manual_seed(3)
    m = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.LeakyReLU(0.1),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 6),
    ).eval()
    x = torch.randn(1, 3, 16, 16)
    return export_onnx(m, (x,)), {"input": x.numpy()}


def test_shared_database_is_reused_by_a_second_model(tuned, cpu, tmp_path):
    """A model with the same convs takes them from the shared database: no new trials for them."""
    if tuned["report"].note:
        pytest.skip(f"first run did not cover every task: {tuned['report'].note}")
    target, info = cpu
    shared = tmp_path / "shared"
    shared.mkdir()
    for f in ("database_workload.json", "database_tuning_record.json"):
        shutil.copy(tuned["work"] / f, shared / f)
    model2, inputs2 = _second_model()
    mod2 = tc.import_onnx(model2)
    db, rep = tune_with_report(mod2, target, info, work_dir=str(tmp_path / "run"), trials=2,
                               progress=False, shared_database=str(shared), population_size=POPULATION)
    convs = [t for t in rep.tasks if "conv2d" in t.name]
    assert len(convs) == 2
    for t in convs:  # both convs (one with another epilogue) came from the shared database
        assert t.reused and t.source == "shared", t
    assert set(t.name for t in convs) <= set(rep.to_dict()["tasks_from_shared_database"])
    # Only the kernels the fixture model lacks were tuned (the 8->6 classifier).
    tuned_now = [t.name for t in rep.tasks if not t.reused and not t.skipped]
    assert tuned_now and not any("conv2d" in n for n in tuned_now), tuned_now
    ex = tc.build(mod2, target, database=db)
    assert sum("conv2d" in f for f in ex.tuned_functions) == 2, ex.tuned_functions
    np.testing.assert_allclose(tc.run(ex, inputs2)[0], tc.run_ort(model2, inputs2)[0], rtol=1e-4, atol=1e-5)
    # What was tuned now was published to the shared database for the next model.
    assert rep.published == len(tuned_now)


def test_default_database_dir_is_per_target_and_overridable(monkeypatch, tmp_path):
    monkeypatch.delenv(DB_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    cpu2 = {"kind": "llvm", "num-cores": 2, "mcpu": "znver3"}
    d = default_database_dir(cpu2)
    assert d.startswith(str(tmp_path / "xdg" / "collapse_passes" / "tvm-db"))
    assert default_database_dir({"kind": "llvm", "num-cores": 4, "mcpu": "znver3"}) != d
    assert database_key(cpu2, prepack=False) != database_key(cpu2, prepack=True)
    monkeypatch.setenv(DB_ENV, str(tmp_path / "mine"))
    assert default_database_dir(cpu2).startswith(str(tmp_path / "mine"))


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
    # the tuned library, unless it measured slower than the untuned one (then a note says it shipped that)
    assert report["export"]["library_is_tuned"] or any("exported the untuned library" in n for n in report["notes"])
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
        rpc_tracker=spec, rpc_key=key, progress=False, population_size=POPULATION,
    )
    assert rep.rpc is not None and rep.rpc["servers"] >= 1
    assert rep.new_records >= 1, rep.note
    assert any(t.best_us is not None for t in rep.tasks)


def test_light_inspect_stack_is_restored_when_threads_overlap():
    """Two threads parsing intrinsics at once must not leave inspect.stack patched."""
    import inspect
    import threading

    from tvm_integration._worker import _light_inspect_stack

    real, entered = inspect.stack, threading.Event()

    def first():
        with _light_inspect_stack():
            entered.set()
            time.sleep(0.2)

    def second():
        entered.wait()
        with _light_inspect_stack():
            assert inspect.stack is not real

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert inspect.stack is real
    with pytest.raises(ModuleNotFoundError):
        with _light_inspect_stack():
            import tvm_integration.does_not_exist  # noqa: F401
    assert inspect.stack is real
