"""File safety and one-line errors left over from earlier reviews (H1, round 12).

1. An output path was resolved with realpath, which keeps a missing (or non-folder) component and lets a later
   '..' cancel it: `-o sub/../o.onnx` with no folder `sub` wrote ./o.onnx, where open() fails (ENOENT). Every
   output flag now refuses it in one line (outputs.check_folder_reachable). The TVM hand-off resolved --export and
   --tune-dir with abspath (textual) while the output plan had checked the realpath: `--export link/../exp` was
   checked at the link target's folder and written into `./exp`.
2. tune_summary.json was written with open(..., "w"): truncated first, half a file on a failure.
3. Library writers (plot_scores, write_text_atomic, export_library, atomic_directory) created missing folders
   (`sub/../x` even created `sub`); they now refuse, one error, nothing created.
4. tvm_integration.run(executable, [array]) raised "dictionary update sequence element #0 has length 1".
5. A failing TorchScript ONNX export (the training loop's speed-up prediction) printed torch's whole IR graph
   from C++ on stdout, around our one-line error.
"""
from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest

from collapse_passes.errors import CollapseError
from test_file_safety import cli, one_line_error, small_model, snapshot, temps_in


@pytest.fixture()
def ws(tmp_path):
    onnx.save(small_model(), tmp_path / "m.onnx")
    (tmp_path / "s.json").write_text(json.dumps({"scores": {"block.relu": 0.0, "out_act": 0.9}}))
    return tmp_path


# ------------------------------------------------------------------ 1. '..' after a missing folder


@pytest.mark.parametrize("flag", ["-o", "--report", "--save-scores", "--plot"])
@pytest.mark.parametrize("path, needle", [("sub/../x.out", "folder sub does not exist"),
                                          ("./nodir/deeper/../../x.out", "folder nodir does not exist"),
                                          ("m.onnx/../x.out", "Not a directory")])
def test_dotdot_after_a_missing_folder_or_a_file_is_refused_for_every_output(ws, flag, path, needle):
    before = snapshot(ws)
    argv = ["m.onnx", "--scores", "s.json", "--threshold", "0", flag, path]
    if flag != "-o":
        argv += ["-o", "o.onnx"]
    rc, _, err = cli(*argv, cwd=ws)
    one_line_error(rc, err, flag, needle)
    assert "'..'" in err   # the message says why the shortcut does not work
    assert snapshot(ws) == before   # no ./x.out (realpath's lexical answer), no folder `sub`


def test_dotdot_through_an_existing_folder_still_works(ws):
    (ws / "sub").mkdir()
    rc, _, err = cli("m.onnx", "--collapse", "block.relu", "-o", "sub/../o.onnx", "--report", "sub/../r.json", cwd=ws)
    assert rc == 0, err
    assert (ws / "o.onnx").is_file() and (ws / "r.json").is_file()


def test_the_plan_checks_tvm_dirs_where_the_kernel_resolves_them(ws):
    """--export/--tune-dir through a missing folder: refused by the plan before any work (no TVM import)."""
    pytest.importorskip("tvm")
    before = snapshot(ws)
    for flag in ("--export", "--tune-dir"):
        rc, _, err = cli("m.onnx", "--collapse", "block.relu", "-o", "o.onnx", "--target", "cpu", flag,
                         "sub/../d", cwd=ws)
        one_line_error(rc, err, flag, "folder sub does not exist")
    assert snapshot(ws) == before


def test_tvm_tune_dir_is_resolved_as_the_plan_resolved_it(tmp_path):
    """cli_hook.default_tune_dir used abspath: `link/../t` became ./t while the plan checked <link target>/../t."""
    import argparse

    pytest.importorskip("tvm")
    from tvm_integration.cli_hook import default_tune_dir
    from tvm_integration.targets import resolve_target

    (tmp_path / "far" / "deep").mkdir(parents=True)
    os.symlink("far/deep", tmp_path / "link")
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        got = default_tune_dir(argparse.Namespace(tune_dir="link/../t"), None)
        assert got == os.path.realpath("far/t")
        got = default_tune_dir(argparse.Namespace(tune_dir=None, output="link/../o.onnx"), resolve_target("cpu")[1])
        assert os.path.dirname(got) == os.path.realpath("far/o.tvm")
    finally:
        os.chdir(old)


@pytest.mark.tvm
def test_export_through_a_link_and_dotdot_lands_where_the_plan_checked(ws):
    pytest.importorskip("tvm")
    (ws / "far" / "deep").mkdir(parents=True)
    os.symlink("far/deep", ws / "link")
    rc, _, err = cli("m.onnx", "--collapse", "block.relu", "-o", "o.onnx", "--target", "cpu", "--tune-trials", "0",
                     "--export", "link/../exp", "-q", cwd=ws)
    assert rc == 0, err
    assert (ws / "far" / "exp" / "model.so").is_file()   # link/.. is far/, as open() resolves it
    assert not (ws / "exp").exists()                      # not the textual shortcut ./exp
    assert not temps_in(ws)


# ------------------------------------------------------------------ 2. tune_summary.json


def test_tune_summary_is_written_atomically(tmp_path):
    pytest.importorskip("tvm")
    from tvm_integration import tuning

    path = tmp_path / tuning.SUMMARY_FILE
    path.write_text('{"old": true}')
    with pytest.raises(TypeError):   # json cannot take the value: the old summary stays whole
        tuning._write_summary(str(tmp_path), {"tasks": 1, "bad": object()})
    assert path.read_text() == '{"old": true}'
    tuning._write_summary(str(tmp_path), {"tasks": 2})
    assert json.loads(path.read_text()) == {"tasks": 2}
    assert sorted(os.listdir(tmp_path)) == [tuning.SUMMARY_FILE]   # no temp file left


# ------------------------------------------------------------------ 3. library writers create no folders


@pytest.mark.parametrize("rel", ["new/x.out", "new/deeper/x.out", "sub/../x.out"])
def test_library_writers_refuse_a_missing_folder(tmp_path, rel):
    from collapse_passes.onnx.graph import save_model_atomic, write_text_atomic
    from collapse_passes.report import plot_scores

    import collapse_passes as cp

    result = cp.collapse(small_model(), collapse="block.relu")
    before = snapshot(tmp_path)
    target = os.path.join(tmp_path, rel)
    for call in (lambda: write_text_atomic("{}", target),
                 lambda: plot_scores({"a": 0.1, "b": 0.5}, 0.2, target),
                 lambda: save_model_atomic(small_model(), target),
                 lambda: result.save(target)):   # sub/../x.out: written to ./x.out before
        with pytest.raises(CollapseError, match="does not exist.*create it first"):
            call()
        assert snapshot(tmp_path) == before   # no folder `new` or `sub` created


def test_library_writers_still_write_into_an_existing_folder(tmp_path):
    from collapse_passes.onnx.graph import write_text_atomic
    from collapse_passes.report import plot_scores

    write_text_atomic("{}", tmp_path / "a.json")
    plot_scores({"a": 0.1}, None, tmp_path / "p.png")
    assert sorted(os.listdir(tmp_path)) == ["a.json", "p.png"]
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_atomic_directory_refuses_a_missing_parent(tmp_path):
    pytest.importorskip("tvm")
    from tvm_integration import cli_hook
    from tvm_integration.errors import TVMError

    with pytest.raises(TVMError, match="does not exist"):
        with cli_hook.atomic_directory(tmp_path / "new" / "exp"):
            pass
    assert os.listdir(tmp_path) == []


@pytest.fixture(scope="module")
def tiny_executable():
    pytest.importorskip("tvm")
    import tvm_integration as ti
    from tvm_integration import compile as tc
    from tvm_integration.testing import activation_chain_onnx

    model = activation_chain_onnx()
    model = model[0] if isinstance(model, tuple) else model
    ex = tc.build(tc.import_onnx(model), ti.resolve_target("cpu")[0])
    name = model.graph.input[0].name
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return ex, name, np.random.default_rng(0).standard_normal(shape).astype(np.float32)


@pytest.mark.tvm
def test_export_library_refuses_a_missing_folder_and_writes_atomically(tmp_path, tiny_executable):
    from tvm_integration import compile as tc
    from tvm_integration.errors import TVMError

    ex, _, _ = tiny_executable
    with pytest.raises(TVMError, match="does not exist"):
        tc.export_library(ex, tmp_path / "new" / "m.so")
    assert os.listdir(tmp_path) == []
    (tmp_path / "m.so").write_bytes(b"old")
    assert tc.export_library(ex, tmp_path / "m.so") == os.fspath(tmp_path / "m.so")
    assert (tmp_path / "m.so").read_bytes()[:4] == b"\x7fELF"
    assert os.listdir(tmp_path) == ["m.so"]   # the temp directory is gone


# ------------------------------------------------------------------ 4. tvm_integration.run input checks


@pytest.mark.tvm
@pytest.mark.parametrize("bad", ["list", "tuple", "array", "strings"])
def test_run_with_inputs_that_are_not_a_dict_of_arrays_is_one_tvm_error(tiny_executable, bad):
    import tvm_integration as ti
    from tvm_integration.errors import TVMError

    ex, name, x = tiny_executable
    inputs = {"list": [x], "tuple": (x,), "array": x, "strings": {name: "abc"}}[bad]
    with pytest.raises(TVMError, match="dict" if bad != "strings" else "numeric array"):
        ti.run(ex, inputs)
    assert len(ti.run(ex, {name: x})) == 1


# ------------------------------------------------------------------ 5. exporter noise


def test_a_failing_onnx_export_in_the_speedup_prediction_prints_nothing(capfd):
    torch = pytest.importorskip("torch")
    from torch import nn

    from collapse_passes.train.loop import SpeedupPredictor

    class Unexportable(nn.Module):   # eigvalsh has no ONNX symbolic: the TorchScript exporter fails
        def __init__(self):
            super().__init__()
            self.conv, self.relu = nn.Conv2d(3, 4, 3), nn.ReLU()

        def forward(self, x):
            y = self.relu(self.conv(x))[..., :2, :2]
            return torch.linalg.eigvalsh(y @ y.transpose(-1, -2)).sum(-1)

    capfd.readouterr()
    with pytest.raises(CollapseError, match="speed-up prediction exports the model to ONNX"):
        SpeedupPredictor(torch.randn(1, 3, 8, 8)).merged(Unexportable().eval())
    out, err = capfd.readouterr()
    assert "IR graph" not in out + err and out + err == "", (out + err)[:400]
    print("still printed")   # fds 1 and 2 are back
    assert capfd.readouterr().out == "still printed\n"


def _data_dependent():
    """A module torch.fx cannot trace and torch.export cannot export (a branch on a tensor value)."""
    import torch
    from torch import nn

    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.relu = nn.Conv2d(3, 4, 3), nn.ReLU()

        def forward(self, x):
            y = self.relu(self.conv(x))
            return y * 2 if y.sum() > 0 else y

    return DataDependent().eval(), (torch.randn(1, 3, 8, 8),)


def test_a_failing_torch_export_in_the_torch_front_end_prints_only_the_error(capfd):
    """torch.export logged the traced graph (~30 lines) at each guard it could not decide, twice (the dynamic
    and the static export), before the front end's one-line CollapseError."""
    pytest.importorskip("torch")
    import collapse_passes as cp

    model, inputs = _data_dependent()
    capfd.readouterr()
    with pytest.raises(CollapseError, match="torch.export failed too"):
        cp.collapse(model, collapse=["relu"], example_inputs=inputs)
    out, err = capfd.readouterr()
    assert out + err == "", (out + err)[:400]


def test_a_failing_torch_export_in_relax_from_torch_prints_only_the_error(capfd):
    pytest.importorskip("torch")
    pytest.importorskip("tvm")
    from tvm_integration import relax_from_torch
    from tvm_integration.errors import TVMError

    model, inputs = _data_dependent()
    capfd.readouterr()
    with pytest.raises(TVMError, match="torch.export failed"):
        relax_from_torch(model, inputs)
    out, err = capfd.readouterr()
    assert out + err == "", (out + err)[:400]
