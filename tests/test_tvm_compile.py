"""TVM integration: targets, import, build, run, export (host CPU, aarch64 cross, CUDA compile-only)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import numpy as np
import pytest

pytestmark = pytest.mark.tvm

tvm = pytest.importorskip("tvm")
pytest.importorskip("onnxruntime")

from tvm_integration import cli_hook  # noqa: E402
from tvm_integration import compile as tc  # noqa: E402
from tvm_integration.errors import MissingToolError, TVMError, UnknownTargetError  # noqa: E402
from tvm_integration.targets import AARCH64_CXX, resolve_target  # noqa: E402
from tvm_integration.testing import elf_machine, tiny_cnn_onnx  # noqa: E402

HAS_CROSS = shutil.which(AARCH64_CXX) is not None
HAS_NVCC = shutil.which("nvcc") is not None or os.path.exists("/usr/local/cuda/bin/nvcc")


@pytest.fixture(scope="module")
def cnn():
    pytest.importorskip("torch")
    return tiny_cnn_onnx(channels=8, size=16)


@pytest.fixture(scope="module")
def cpu_target():
    return resolve_target("cpu")


@pytest.fixture(scope="module")
def cnn_mod(cnn):
    return tc.import_onnx(cnn[0])


def _args(**kw):
    p = argparse.ArgumentParser()
    cli_hook.add_arguments(p)
    argv = []
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return p.parse_args(argv)


# --------------------------------------------------------------------------- targets


def test_cpu_target_detects_host(cpu_target):
    target, info = cpu_target
    assert target.kind.name == "llvm"
    from tvm_integration.targets import host_physical_cores

    assert int(target.attrs["num-cores"]) == host_physical_cores() <= (os.cpu_count() or 1)
    assert info.runs_on_host and info.device == "cpu" and info.cross_compiler is None
    assert info.intrin_modules in (("x86",), ("arm_cpu",))


def test_unknown_target_is_a_clear_error():
    with pytest.raises(UnknownTargetError) as ei:
        resolve_target("tpu-v9")
    err = ei.value
    assert isinstance(err, ValueError) and isinstance(err, TVMError)
    msg = str(err)
    assert "\n" not in msg
    for name in ("cpu", "cuda", "aarch64", "raspberry-pi/4b-aarch64"):
        assert name in msg


def test_cli_style_string_and_bad_json_are_rejected():
    with pytest.raises(UnknownTargetError):
        resolve_target("llvm -mcpu=skylake")
    with pytest.raises(UnknownTargetError):
        resolve_target('{"kind": "llvm"')
    with pytest.raises(UnknownTargetError):
        resolve_target("nvidia/not-a-real-gpu")


def test_json_target_dict_and_string():
    t, info = resolve_target('{"kind": "llvm", "mcpu": "x86-64"}')
    assert t.kind.name == "llvm" and info.name == "json"
    assert int(t.attrs["num-cores"]) >= 1  # added: MetaSchedule needs it
    t2, _ = resolve_target({"kind": "llvm", "num-cores": 3})
    assert int(t2.attrs["num-cores"]) == 3


def test_cuda_needs_arch_without_gpu(monkeypatch):
    from tvm_integration import targets

    monkeypatch.setattr(targets, "detect_cuda_arch", lambda: None)
    with pytest.raises(TVMError, match="--cuda-arch"):
        resolve_target("cuda")
    t, info = resolve_target("gpu", cuda_arch="8.6")
    assert t.kind.name == "cuda" and str(t.attrs["arch"]) == "sm_86"
    assert info.intrin_modules == ("cuda",)


@pytest.mark.parametrize("arch,want", [("12.0", "sm_120"), ("10.0", "sm_100"), ("8.9", "sm_89"),
                                       ("sm_90a", "sm_90a"), ("sm_120", "sm_120"), ("86", "sm_86")])
def test_cuda_arch_spellings(arch, want):
    """nvidia-smi's compute capability (12.0 on Blackwell has a two-digit major) and the sm_ forms."""
    t, _ = resolve_target("cuda", cuda_arch=arch)
    assert str(t.attrs["arch"]) == want


def test_a_tag_with_the_arch_of_another_gpu_takes_that_gpus_limits():
    h100 = json.loads(str(resolve_target("nvidia/nvidia-h100")[0]))
    same = json.loads(str(resolve_target("nvidia/nvidia-h100", cuda_arch="sm_90")[0]))
    other = json.loads(str(resolve_target("nvidia/nvidia-h100", cuda_arch="sm_80")[0]))
    assert same["l2_cache_size_bytes"] == h100["l2_cache_size_bytes"] == 50 << 20
    # sm_80's limits come from a tag of that arch (or the defaults), never the H100's 50 MiB L2
    assert other["arch"] == "sm_80" and other.get("l2_cache_size_bytes") != 50 << 20
    assert {k: v for k, v in other.items() if k != "arch"} == \
        {k: v for k, v in json.loads(str(resolve_target("cuda", cuda_arch="sm_80")[0])).items() if k != "arch"}
    assert other["max_threads_per_block"] == 1024


def test_cuda_arch_garbage_and_json_arch_are_one_line():
    for bad in ("sm_1000", "garbage", "1.2.3"):
        with pytest.raises(TVMError, match="expected e.g. sm_90") as e:
            resolve_target("cuda", cuda_arch=bad)
        assert "\n" not in str(e.value)
    t, _ = resolve_target({"kind": "cuda", "arch": "8.0", "max_num_threads": 256})
    assert str(t.attrs["arch"]) == "sm_80"                    # a JSON target's arch is normalised too
    assert int(t.attrs["max_threads_per_block"]) == 256       # the user's thread cap bounds the block
    t, _ = resolve_target({"kind": "cuda", "arch": "sm_80", "max_threads_per_block": 512})
    assert int(t.attrs["max_threads_per_block"]) == 512       # user values are never overridden
    with pytest.raises(TVMError, match='invalid target "arch"'):
        resolve_target({"kind": "cuda", "arch": "garbage"})


def test_missing_cross_compiler_message(monkeypatch):
    from tvm_integration import targets

    monkeypatch.setattr(targets.shutil, "which", lambda _name: None)
    with pytest.raises(MissingToolError) as ei:
        resolve_target("aarch64")
    msg = str(ei.value)
    assert "make cross" in msg and "g++-aarch64-linux-gnu" in msg and "\n" not in msg


def test_runtime_threads_follow_num_cores():
    """TVM's pool takes half the x86 cores unless told; configure_runtime_threads tells it."""
    import subprocess
    import sys

    n = os.cpu_count() or 1
    if n < 2:
        pytest.skip("needs 2 cores")
    code = (
        "from tvm_integration.targets import configure_runtime_threads as c; "
        f"r = c({n}); print(r['runtime_threads'], r['source'])"
    )
    env = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == [str(n), "set"]  # TVM alone would take n // 2 on x86
    env["TVM_NUM_THREADS"] = "1"  # a user's choice is kept
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.split()[-2:] == ["1", "user"]


def test_recommended_aarch64_target_dicts_are_valid():
    from tvm.target import Target

    from tvm_integration.targets import AARCH64_TARGETS

    for spec in AARCH64_TARGETS.values():
        t = Target(dict(spec))  # LLVM knows the mcpu / mattr names
        assert str(t.attrs["mtriple"]) == "aarch64-linux-gnu" and "+neon" in list(t.attrs["mattr"])
        assert "arm_cpu" in list(t.keys)


@pytest.mark.skipif(not HAS_CROSS, reason=f"{AARCH64_CXX} not installed (make cross)")
def test_recommended_aarch64_boards():
    from tvm_integration.targets import AARCH64_TARGETS

    for board, spec in AARCH64_TARGETS.items():
        t, info = resolve_target(f"aarch64:{board}")
        assert info.arch == "aarch64" and info.cross_compiler == AARCH64_CXX
        assert str(t.attrs["mcpu"]) == spec["mcpu"] and int(t.attrs["num-cores"]) == spec["num-cores"]
        assert info.intrin_modules == ("arm_cpu",)
    with pytest.raises(UnknownTargetError, match="rpi4"):
        resolve_target("aarch64:toaster")


@pytest.mark.skipif(not HAS_CROSS, reason=f"{AARCH64_CXX} not installed (make cross)")
def test_target_tag_resolves():
    t, info = resolve_target("raspberry-pi/4b-aarch64")
    assert info.arch == "aarch64" and not info.runs_on_host
    assert info.cross_compiler == AARCH64_CXX and info.intrin_modules == ("arm_cpu",)


# --------------------------------------------------------------------------- import / build / run


def test_import_binds_weights(cnn_mod):
    main = cnn_mod["main"]
    assert len(main.params) == 1  # the model input only; weights are constants


def test_unsupported_op_names_the_op():
    from onnx import TensorProto, helper

    node = helper.make_node("FrobnicateV2", ["x"], ["y"])
    g = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(TVMError, match="FrobnicateV2") as ei:
        tc.import_onnx(model)
    assert "\n" not in str(ei.value)


def test_cpu_build_matches_onnxruntime(cnn, cnn_mod, cpu_target):
    model, inputs = cnn
    ex = tc.build(cnn_mod, cpu_target[0])
    got = tc.run(ex, inputs)
    ref = tc.run_ort(model, inputs)
    assert len(got) == len(ref) == 1
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-4, atol=1e-5)
    assert ex.tuned_functions == [] and ex.untuned_functions
    ms = tc.measure_latency(ex, inputs, repeat=3)
    assert ms > 0


def test_latency_budget_lowers_repeat_of_slow_builds(cnn, cnn_mod, cpu_target):
    """A build whose calls outlast the budget is timed MIN_REPEAT times, not `repeat` times (an untuned
    ResNet-50 at 224 takes ~4 s a call: 20 repeats of two models were 2.5 minutes of a --target cpu run)."""
    model, inputs = cnn
    ex = tc.build(cnn_mod, cpu_target[0])
    st = {}
    assert tc.measure_latency(ex, inputs, repeat=20, budget_s=1e-9, stats=st) > 0
    assert st["repeat"] == tc.MIN_REPEAT and st["first_call_ms"] > 0
    st = {}
    tc.measure_latency(ex, inputs, repeat=5, budget_s=1e6, stats=st)
    assert st["repeat"] == 5


def test_host_export_loads_with_vm(tmp_path, cnn, cnn_mod, cpu_target):
    from tvm import relax

    model, inputs = cnn
    target, info = cpu_target
    path = tc.export_library(tc.build(cnn_mod, target), tmp_path / "m.so", info)
    assert elf_machine(path) in (62, 183)
    vm = relax.VirtualMachine(tvm.runtime.load_module(path), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(inputs["input"])).numpy()
    np.testing.assert_allclose(out, tc.run_ort(model, inputs)[0], rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not HAS_CROSS, reason=f"{AARCH64_CXX} not installed: apt-get install g++-aarch64-linux-gnu")
def test_aarch64_export_is_aarch64_elf(tmp_path, cnn_mod):
    target, info = resolve_target("aarch64")
    assert info.cross_compiler == AARCH64_CXX and not info.runs_on_host
    path = tc.export_library(tc.build(cnn_mod, target), tmp_path / "model_aarch64.so", info)
    with open(path, "rb") as f:
        head = f.read(20)
    assert head[:4] == b"\x7fELF" and head[4] == 2  # 64-bit
    assert elf_machine(path) == 183  # EM_AARCH64


def test_cuda_route_lowers_without_gpu(cnn_mod):
    """DLight + DefaultGPUSchedule + CUDA graph capture: builds for sm_80 with no GPU (nothing run)."""
    target, _ = resolve_target({"kind": "cuda", "arch": "sm_80"})
    ex = tc.build(cnn_mod, target)
    assert "__global__" in tc.cuda_source(ex)
    text = ex.executable.as_text()
    assert "cuda_graph" in text  # relax.backend.use_cuda_graph: launches captured in a graph
    assert "cuda_graph" not in tc.build(cnn_mod, target, cuda_graph=False).executable.as_text()


@pytest.mark.skipif(not HAS_NVCC, reason="nvcc not installed")
def test_cuda_build_compiles_without_gpu(cnn_mod):
    target, info = resolve_target({"kind": "cuda", "arch": "sm_90"})
    assert info.device == "cuda"
    ex = tc.build(cnn_mod, target)
    src = tc.cuda_source(ex)
    assert "__global__" in src
    # TVM 0.27 keeps CUDA source in the module (compiled at load time); check that
    # it is valid sm_90 code by compiling it with nvcc here, no GPU needed.
    fatbin = tc.compile_cuda_source(ex, target)
    assert len(fatbin) > 1000


# --------------------------------------------------------------------------- CLI hook


def test_add_arguments_defaults():
    a = _args(target="cpu")
    assert a.target == "cpu" and a.tune_trials == 0 and a.tvm_repeat is None   # DEFAULT_REPEAT, under a budget
    assert a.export is None and a.rpc_tracker is None and a.rpc_key is None
    assert a.cuda_arch is None and a.tune_dir is None


def test_run_from_args_says_where_slow_builds_got_fewer_repeats(tmp_path, cnn, monkeypatch):
    model, inputs = cnn
    monkeypatch.setattr(cli_hook, "TIMING_BUDGET_S", 1e-9)
    args = _args(target="cpu", tune_dir=tmp_path / "tune")
    report = cli_hook.run_from_args(args, model, model, inputs, console=lambda _m: None)
    note = [n for n in report["notes"] if f"fewer than {cli_hook.DEFAULT_REPEAT} repeats" in n]
    assert note and "original untuned" in note[0] and f": {tc.MIN_REPEAT})" in note[0]
    assert report["latency_ms"]["collapsed"]["tvm_untuned"] > 0
    # a --tvm-repeat the user gave is kept
    report = cli_hook.run_from_args(_args(target="cpu", tune_dir=tmp_path / "tune", tvm_repeat=4), model, model,
                                    inputs, console=lambda _m: None)
    assert not any("repeats" in n for n in report["notes"])


def test_untuned_slowdown_is_said_only_without_a_tuned_build():
    assert cli_hook._untuned_slowdown({"onnxruntime": 1.0, "tvm_untuned": 100.0, "tvm_tuned": None}) == 100.0
    assert cli_hook._untuned_slowdown({"onnxruntime": 1.0, "tvm_untuned": 100.0, "tvm_tuned": 0.9}) is None
    assert cli_hook._untuned_slowdown({"onnxruntime": 1.0, "tvm_untuned": 1.2, "tvm_tuned": None}) is None
    assert cli_hook._untuned_slowdown({"onnxruntime": 1.0, "tvm_untuned": None, "tvm_tuned": None}) is None


def test_run_from_args_exports_atomically(tmp_path, cnn):
    model, inputs = cnn
    out = tmp_path / "export"
    args = _args(target="cpu", export=out, tune_dir=tmp_path / "tune", tvm_repeat=3)
    report = cli_hook.run_from_args(args, model, model, inputs, console=lambda _m: None)
    assert sorted(os.listdir(out)) == [cli_hook.EXPORT_MARKER, "model.so", "report.json"]
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["latency_ms"] == report["latency_ms"]
    lat = report["latency_ms"]
    for row in ("original", "collapsed"):
        assert lat[row]["onnxruntime"] > 0 and lat[row]["tvm_untuned"] > 0
    assert report["verification"]["collapsed_tvm_untuned_vs_onnxruntime"]["ok"]
    # Nothing else next to the export dir (no temp dirs left).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    # The library takes the model inputs only.
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(str(out / "model.so")), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(inputs["input"])).numpy()
    np.testing.assert_allclose(got, tc.run_ort(model, inputs)[0], rtol=1e-4, atol=1e-5)


def test_export_failure_leaves_nothing(tmp_path, cnn, monkeypatch):
    model, inputs = cnn
    out = tmp_path / "export"

    def boom(executable, path, target_info=None):
        with open(path, "wb") as f:
            f.write(b"half a library")
        raise TVMError("simulated failure while exporting")

    monkeypatch.setattr(tc, "export_library", boom)
    args = _args(target="cpu", export=out, tune_dir=tmp_path / "tune", tvm_repeat=1)
    with pytest.raises(TVMError, match="simulated"):
        cli_hook.run_from_args(args, model, model, inputs, console=lambda _m: None)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".export")] == []

    # An existing export survives a failed re-export untouched.
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(TVMError):
        cli_hook.run_from_args(args, model, model, inputs, console=lambda _m: None)
    assert sorted(os.listdir(out)) == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".export")] == []


def test_atomic_directory_replaces_existing(tmp_path):
    final = tmp_path / "d"
    final.mkdir()
    (final / "old").write_text("1")
    with pytest.raises(TVMError, match="not made by this tool"):  # never replaces a user's folder
        with cli_hook.atomic_directory(final):
            pass
    assert sorted(os.listdir(final)) == ["old"]
    (final / cli_hook.EXPORT_MARKER).write_text("")  # made by an earlier export, with a file of the user's
    with pytest.raises(TVMError, match="holds files an export does not write"):
        with cli_hook.atomic_directory(final):
            pass
    (final / "old").rename(final / "model.so")   # only what an export writes: replaced
    with cli_hook.atomic_directory(final) as tmp:
        with open(os.path.join(tmp, "new"), "w") as f:
            f.write("2")
        assert not (final / "new").exists()  # not visible before the end
    assert sorted(os.listdir(final)) == [cli_hook.EXPORT_MARKER, "new"]
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


def test_run_from_args_unknown_target_fails_fast(cnn):
    model, inputs = cnn
    t0 = time.perf_counter()
    with pytest.raises(TVMError, match="unknown target"):
        cli_hook.run_from_args(_args(target="quantum"), model, model, inputs, console=lambda _m: None)
    assert time.perf_counter() - t0 < 5


@pytest.mark.skipif(not HAS_CROSS, reason=f"{AARCH64_CXX} not installed")
def test_run_from_args_aarch64_export(tmp_path, cnn):
    model, inputs = cnn
    out = tmp_path / "arm"
    args = _args(target="aarch64", export=out, tune_dir=tmp_path / "tune", tvm_repeat=1)
    report = cli_hook.run_from_args(args, model, model, inputs, console=lambda _m: None)
    assert elf_machine(out / "model.so") == 183
    assert report["latency_ms"]["collapsed"]["tvm_untuned"] is None  # cannot run here
    assert report["latency_ms"]["collapsed"]["onnxruntime"] > 0
    assert report["target"]["cross_compiler"] == AARCH64_CXX


def test_module_entry_point(tmp_path, cnn, capsys):
    import onnx

    from tvm_integration.__main__ import main

    model, _ = cnn
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    rc = main([str(path), "--target", "cpu", "--tvm-repeat", "2", "--json",
               "--tune-dir", str(tmp_path / "tune")])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verification"]["collapsed_tvm_untuned_vs_onnxruntime"]["ok"]
    assert main([str(path), "--target", "nope"]) == 2
