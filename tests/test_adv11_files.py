"""Adversarial round 11 on the user's files (docs/file_safety.md): what was found broken.

- `-o new/` (or `-o dir/.`, `--report ..`) wrote a *file* named `new`: the output plan resolves paths with
  realpath, which drops the trailing '/' that makes the kernel refuse a file there;
- `-o link.onnx`, a symlink into another folder, from a model with external data: the data file landed
  beside the link's target under the target's name, the run said it wrote `link.onnx.data` (no such file),
  and the model could not be loaded through the path the user named (onnx/onnxruntime look beside the link);
- `CollapseResult.save()` of a result of a ModelProto skipped the output plan: a NUL byte was a ValueError,
  an overlong name an OSError, a path under a file a FileExistsError, and missing folders were created,
  where a result of a file refused all of these in one CollapseError.
"""
from __future__ import annotations

import os

import onnx
import onnxruntime as ort
import pytest

import collapse_passes as cp
from collapse_passes.errors import CollapseError
from test_adv8_files import one_line, save_external, wide_model
from test_file_safety import cli, small_model, snapshot


@pytest.mark.parametrize("out", ["new/", "sub/.", "sub/..", "."])
@pytest.mark.parametrize("flag", ["-o", "--report"])
def test_an_output_path_that_names_a_folder_is_refused(tmp_path, flag, out):
    onnx.save(small_model(), tmp_path / "m.onnx")
    (tmp_path / "sub").mkdir()
    before = snapshot(tmp_path)
    rc, _, err = cli("m.onnx", flag, out, "--collapse", "block.relu", cwd=tmp_path)
    one_line(rc, err, "names a folder", "give a file path")
    assert snapshot(tmp_path) == before   # no file `new` (realpath had dropped the '/')


def test_symlinked_output_into_another_folder_with_external_data_is_refused(tmp_path):
    save_external(wide_model(), tmp_path / "m.onnx", "m.onnx.data")
    (tmp_path / "real").mkdir()
    os.symlink("real/x.onnx", tmp_path / "link.onnx")
    before = snapshot(tmp_path)
    rc, _, err = cli("m.onnx", "-o", "link.onnx", "--collapse", "/block/relu/Relu", cwd=tmp_path)
    one_line(rc, err, "symbolic link", "real/x.onnx")
    assert snapshot(tmp_path) == before


def test_symlinked_output_in_the_same_folder_with_external_data_loads_through_the_link(tmp_path):
    save_external(wide_model(), tmp_path / "m.onnx", "m.onnx.data")
    os.symlink("x.onnx", tmp_path / "link.onnx")
    rc, out, err = cli("m.onnx", "-o", "link.onnx", "--collapse", "/block/relu/Relu", cwd=tmp_path)
    assert rc == 0, err
    assert "wrote x.onnx.data" in out, out   # the file that exists, not `link.onnx.data`
    assert (tmp_path / "x.onnx.data").is_file() and not (tmp_path / "link.onnx.data").exists()
    ort.InferenceSession(str(tmp_path / "link.onnx"))   # found beside the link


@pytest.mark.parametrize("name, needle", [("a\x00b.onnx", "NUL byte"), ("x" * 300 + ".onnx", "255 bytes"),
                                          ("m.onnx/x.onnx", "Not a directory"), ("no/dir/x.onnx", "does not exist"),
                                          ("new/", "names a folder")])
def test_save_of_a_model_proto_result_makes_the_output_checks(tmp_path, name, needle):
    (tmp_path / "m.onnx").write_bytes(b"not a folder")
    res = cp.collapse(small_model(), collapse="block.relu")
    before = snapshot(tmp_path)
    with pytest.raises(CollapseError, match=needle):
        res.save(os.path.join(tmp_path, name))
    assert snapshot(tmp_path) == before   # no folder `no/dir` created either


def test_a_signal_swallowed_inside_tvm_is_not_exit_0(tmp_path, monkeypatch):
    """SIGTERM during a TVM build raised Interrupted inside a pass that TVM called back (tirx build): the
    FFI swallowed it, the build went on, and without --report/--export nothing was renamed afterwards, so
    no commit noticed: the run ended 0, minutes later, as if no signal had come."""
    import signal
    import threading
    import time

    hook = pytest.importorskip("tvm_integration.cli_hook")
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach Python handlers only in the main thread")
    from collapse_passes import outputs

    def swallowed(args, original, collapsed, feeds, console=None):
        try:
            os.kill(os.getpid(), signal.SIGTERM)   # delivered to the guard's handler here
            time.sleep(5)
        except outputs.Interrupted:
            pass   # what the FFI / MetaSchedule did with it
        return {"target": "cpu"}

    monkeypatch.setattr(hook, "run_from_args", swallowed)
    onnx.save(small_model(), tmp_path / "m.onnx")
    rc, _, err = cli("m.onnx", "--collapse", "block.relu", "--target", "cpu", "-o", "o.onnx", cwd=tmp_path)
    assert rc == 143 and err.strip().splitlines()[-1] == "interrupted (SIGTERM); wrote o.onnx (model)", err


@pytest.mark.parametrize("then", ["returns", "tvm_error"])
def test_standalone_tvm_cli_reports_a_swallowed_ctrl_c(tmp_path, monkeypatch, capsys, then):
    """`python -m tvm_integration` had no signal guard: TVM's FFI swallowed the KeyboardInterrupt of a
    Ctrl-C during tuning, the run went on for minutes, exported and exited 0 (SIGTERM: killed, no word)."""
    import signal
    import threading
    import time

    pytest.importorskip("tvm")
    from tvm_integration import __main__ as standalone
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach Python handlers only in the main thread")

    def swallowed(args, original, collapsed, feeds, console=None):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except BaseException:   # noqa: BLE001 - what the FFI did with it
            pass
        if then == "tvm_error":
            raise standalone.TVMError("TVM build for llvm failed: 2")
        return {"target": "cpu"}

    monkeypatch.setattr(standalone, "check_args", lambda args, model=None: None)
    monkeypatch.setattr(standalone, "run_from_args", swallowed)
    onnx.save(small_model(), tmp_path / "m.onnx")
    rc = standalone.main([str(tmp_path / "m.onnx"), "--target", "cpu", "--export", str(tmp_path / "exp")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 130 and err == ["interrupted (SIGINT); nothing written; the TVM tuning database may hold new "
                                 "records"], err
    assert not (tmp_path / "exp").exists()


@pytest.mark.parametrize("attr", ["+i", "+a"])
def test_an_immutable_or_append_only_output_is_refused_before_any_work(tmp_path, attr):
    """chattr +i/+a: the rename over the file fails even for root, and the folder probe cannot tell: the
    run collapsed, renamed the model into place, then failed on --report (exit 2, one file written)."""
    import shutil
    import subprocess

    onnx.save(small_model(), tmp_path / "m.onnx")
    (tmp_path / "r.json").write_text("{}")
    if not shutil.which("chattr") or subprocess.run(["chattr", attr, str(tmp_path / "r.json")],
                                                    capture_output=True).returncode != 0:
        pytest.skip("chattr +i/+a not available here (needs root and a file system with the flags)")
    try:
        before = snapshot(tmp_path)
        for argv in (("-o", "o.onnx", "--report", "r.json"), ("-o", "r.json")):
            rc, _, err = cli("m.onnx", "--collapse", "block.relu", *argv, cwd=tmp_path)
            one_line(rc, err, "cannot be replaced", f"chattr -{attr[1]}")
            assert snapshot(tmp_path) == before
    finally:
        subprocess.run(["chattr", "-" + attr[1], str(tmp_path / "r.json")], capture_output=True)


@pytest.mark.parametrize("flag", ["--calib", "--eval"])
@pytest.mark.parametrize("content", [b'{"scores": {}}', b"", b"hello world\n"])
def test_calibration_or_eval_data_that_is_no_numpy_file_is_named_as_such(tmp_path, flag, content):
    """np.load takes any non-zip, non-NumPy file for a pickle: a JSON given to --calib by mistake was
    "contains pickled (object) data ... allow_pickle= keywo" (cut off), naming neither the problem nor a way out."""
    onnx.save(small_model(), tmp_path / "m.onnx")
    (tmp_path / "d.npz").write_bytes(content)
    extra = ("--method", "tlc") if flag == "--calib" else ()
    rc, _, err = cli("m.onnx", flag, "d.npz", *extra, cwd=tmp_path)
    one_line(rc, err, "not an .npz/.npy file", "numpy.savez")
    assert "pickle" not in err


def test_a_data_file_that_is_the_inputs_names_the_flag_that_moves_it(tmp_path):
    """The input's external data is `o.onnx.data`, so `-o o.onnx` would write over it: the way out is
    another -o (no flag names the data file), not "another path for -o's data file"."""
    save_external(wide_model(), tmp_path / "m.onnx", "o.onnx.data")
    before = snapshot(tmp_path)
    rc, _, err = cli("m.onnx", "-o", "o.onnx", "--collapse", "/block/relu/Relu", cwd=tmp_path)
    one_line(rc, err, "input model's external data")
    assert err.strip().endswith("choose another path for -o"), err
    assert snapshot(tmp_path) == before
