"""Adversarial round 17 on the TVM hand-off: a tuning database used for another target.

MetaSchedule's JSON database answers a query with a kernel's best record whatever target it was tuned for.
`--tune-dir db` tuned for `cpu` (znver5, 2 cores), then `--target aarch64 --tune-dir db` (or `cuda --cuda-arch
sm_90`, or a JSON llvm dict with 1 core) built the x86 schedules into that target's library, exit 0, and the
report said `library_is_tuned: true` with 8 "tuned" kernels: a CUDA library of CPU loop nests. Two JSON targets of
one arch also shared their *default* tune dir (`<stem>.tvm/llvm-x86_64/`). Now a database of another target is
refused with one line (exit 2 before any work on the CLI; TVMError in `tune_with_report` and `build`) and JSON
targets get a default dir of their own.
"""
from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytestmark = pytest.mark.tvm
tvm = pytest.importorskip("tvm")

OTHER = {"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 8}


def _model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 1, 1)).astype("float32"), "W")
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"]), helper.make_node("Relu", ["c"], ["r"], name="act"),
             helper.make_node("ReduceMean", ["r"], ["y"], axes=[2, 3], keepdims=0)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _database_for(work_dir, target) -> None:
    """A database in `work_dir` with one record of the model's conv kernel tuned for `target` (a one-step
    trace: what matters is the target the record carries)."""
    from tvm.s_tir import Schedule
    from tvm.s_tir import meta_schedule as ms

    from tvm_integration import import_onnx, resolve_target
    from tvm_integration.compile import prepare
    from tvm_integration.tuning import open_database

    t = resolve_target(target)[0]
    tasks = ms.relax_integration.extract_tasks(prepare(import_onnx(_model()), t), t, module_equality="anchor-block")
    kernel = next(k.dispatched[0] for k in tasks if "conv" in k.task_name)
    sch = Schedule(kernel)
    sch.work_on("main")
    sch.parallel(sch.get_loops(sch.get_child_blocks(sch.get_sblock("root"))[0])[0])
    db = open_database(str(work_dir))
    db.commit_tuning_record(ms.database.TuningRecord(sch.trace, db.commit_workload(kernel), [1e-6], t,
                                                     ms.arg_info.ArgInfo.from_prim_func(kernel["main"])))


def test_build_refuses_a_database_of_another_target(tmp_path):
    from tvm_integration import build, import_onnx, resolve_target
    from tvm_integration.errors import TVMError
    from tvm_integration.tuning import open_database

    _database_for(tmp_path / "db", OTHER)
    cpu = resolve_target("cpu")[0]
    with pytest.raises(TVMError, match="records tuned for .*skylake-avx512.*not for"):
        build(import_onnx(_model()), cpu, database=open_database(str(tmp_path / "db")))
    _database_for(tmp_path / "mine", "cpu")   # the target's own records still apply
    ex = build(import_onnx(_model()), cpu, database=open_database(str(tmp_path / "mine")))
    assert any("conv" in f for f in ex.tuned_functions), ex.tuned_functions


def test_tune_with_report_refuses_a_work_dir_of_another_target(tmp_path):
    from tvm_integration import import_onnx, resolve_target
    from tvm_integration.errors import TVMError
    from tvm_integration.tuning import tune_with_report

    _database_for(tmp_path / "db", "cpu")
    target, info = resolve_target(json.dumps(OTHER))
    with pytest.raises(TVMError, match="another --tune-dir"):   # trials=0 returned the cpu records for this target
        tune_with_report(import_onnx(_model()), target, info, work_dir=str(tmp_path / "db"), trials=0,
                         progress=False, shared_database=False)


def test_cli_refuses_a_tune_dir_of_another_target_before_any_work(tmp_path, capfd):
    """The core CLI's main() in this process (a subprocess per target paid a TVM + torch import each, ~6 s),
    its output captured at the file descriptors (capfd): what TVM's C++ side prints is read as before."""
    from collapse_passes.cli import main

    _database_for(tmp_path / "db", "cpu")
    src = tmp_path / "m.onnx"
    onnx.save(_model(), src)
    for target in (["--target", "aarch64"], ["--target", "cuda", "--cuda-arch", "sm_90"],
                   ["--target", json.dumps(OTHER)]):
        if target[1] == "aarch64" and not any(os.access(os.path.join(p, "aarch64-linux-gnu-g++"), os.X_OK)
                                              for p in os.environ.get("PATH", "").split(os.pathsep)):
            continue
        capfd.readouterr()
        try:
            rc = main([str(src), "-o", str(tmp_path / "out.onnx"), "--collapse", "act", *target,
                       "--tune-dir", str(tmp_path / "db"), "--export", str(tmp_path / "exp")])
        except SystemExit as e:   # argparse
            rc = e.code
        err = capfd.readouterr().err
        assert rc == 2, (target, err[-2000:])
        assert "Traceback" not in err and "another --tune-dir" in err, err
        assert not (tmp_path / "out.onnx").exists() and not (tmp_path / "exp").exists()


def test_json_targets_of_one_arch_get_default_tune_dirs_of_their_own():
    from argparse import Namespace

    from tvm_integration import resolve_target
    from tvm_integration.cli_hook import default_tune_dir

    dirs = {default_tune_dir(Namespace(output="/x/m.onnx"), resolve_target(json.dumps(t))[1])
            for t in (OTHER, {**OTHER, "num-cores": 1}, {**OTHER, "mcpu": "znver3"})}
    assert len(dirs) == 3, dirs
