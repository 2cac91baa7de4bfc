"""The standalone TVM entry (`python -m tvm_integration`) and library exports keep the core CLI's promises
about the user's files; a bad "num-cores" is bad input before any build.

Found by the file-safety review (2026-11-28): `--tune-dir m.onnx` ran a 1.5 min build and ended in a
FileExistsError traceback; `--export m.onnx` was refused only after the build; `atomic_directory` (what
`--export` and library callers use) replaced an earlier export holding the user's own files; a target
with "num-cores": -3 failed with a traceback after the collapsed model was written.
"""
from __future__ import annotations

import os

import pytest

from tvm_integration import __main__ as standalone
from tvm_integration import cli_hook as hook
from tvm_integration.errors import TVMError

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "models", "examples",
                       "mobilenet_v2_digits_prelu.onnx")


@pytest.fixture
def model(tmp_path):
    p = tmp_path / "m.onnx"
    p.write_bytes(open(EXAMPLE, "rb").read())
    return p


def _snapshot(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*"))


@pytest.mark.parametrize("flags", [["--tune-dir", "m.onnx"], ["--export", "m.onnx"], ["--export", "."]])
def test_standalone_outputs_that_name_the_input_are_refused_before_any_build(tmp_path, model, monkeypatch,
                                                                             capsys, flags):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(standalone, "run_from_args", lambda *a, **k: pytest.fail("TVM ran"))
    before = _snapshot(tmp_path)
    assert standalone.main(["m.onnx", "--target", "cpu", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and "input" in err, err
    assert _snapshot(tmp_path) == before


def test_standalone_export_into_an_earlier_export_holding_user_files_is_refused(tmp_path, model, monkeypatch,
                                                                               capsys):
    from collapse_passes.outputs import EXPORT_MARKER

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(standalone, "run_from_args", lambda *a, **k: pytest.fail("TVM ran"))
    ex = tmp_path / "ex"
    ex.mkdir()
    (ex / EXPORT_MARKER).write_text("made by collapse_passes --export\n")
    (ex / "notes.txt").write_text("mine")
    assert standalone.main(["m.onnx", "--target", "cpu", "--export", "ex"]) == 2
    assert "notes.txt" in capsys.readouterr().err
    assert (ex / "notes.txt").read_text() == "mine"


def test_atomic_directory_never_replaces_an_export_holding_user_files(tmp_path):
    from collapse_passes.outputs import EXPORT_MARKER

    ex = tmp_path / "ex"
    ex.mkdir()
    (ex / EXPORT_MARKER).write_text("made by collapse_passes --export\n")
    (ex / "mine").mkdir()
    (ex / "mine" / "a.txt").write_text("keep")
    with pytest.raises(TVMError, match="mine/"):
        with hook.atomic_directory(ex) as tmp:
            open(os.path.join(tmp, "model.so"), "wb").close()
    assert (ex / "mine" / "a.txt").read_text() == "keep"
    assert sorted(os.listdir(tmp_path)) == ["ex"]   # no temp folder left
    # an earlier export with only what an export writes is still replaced
    (ex / "mine" / "a.txt").unlink()
    (ex / "mine").rmdir()
    with hook.atomic_directory(ex) as tmp:
        open(os.path.join(tmp, "model.so"), "wb").close()
    assert sorted(os.listdir(ex)) == sorted([EXPORT_MARKER, "model.so"])


@pytest.mark.parametrize("cores", [-3, 0, 2.5, "4", True])
def test_num_cores_that_is_not_a_positive_whole_number_is_bad_input(cores):
    pytest.importorskip("tvm")
    import json

    from tvm_integration.errors import UnknownTargetError
    from tvm_integration.targets import resolve_target

    with pytest.raises(UnknownTargetError, match="num-cores"):
        resolve_target(json.dumps({"kind": "llvm", "num-cores": cores}))
    _, info = resolve_target(json.dumps({"kind": "llvm", "num-cores": 2}))
    assert info.num_cores == 2
