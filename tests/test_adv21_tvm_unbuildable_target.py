"""Adversarial round 21 on the TVM hand-off: a target kind this TVM cannot compile to.

`collapse_passes M.onnx --collapse K --target '{"kind": "vulkan"}'` (the 0.27 wheel has no Vulkan code generator)
and `--target '{"kind": "c"}'` (a code generator but no Relax pipeline) passed the cheap target check, ran the whole
collapse, wrote the model and only then failed the build ("Cannot find global function target.build.vulkan", "TVM
has no Relax pipeline for target kind 'c'"): bad input found after the work. resolve_target now refuses such a
kind, so the CLI says it before any work (exit 2, one line, nothing written).
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_adv4_tvm_handoff import _tiny_conv   # a 3x3 conv + ReLU, 1x3x8x8

pytestmark = pytest.mark.tvm
pytest.importorskip("tvm")




def _lacks_codegen(kind: str) -> bool:
    import tvm

    return tvm.get_global_func(f"target.build.{kind}", allow_missing=True) is None


@pytest.mark.parametrize("spec,needle", [
    ('{"kind": "c"}', "no Relax pipeline for target kind 'c'"),
    ('{"kind": "ext_dev"}', "'ext_dev'"),
    pytest.param('{"kind": "vulkan"}', "no code generator for target kind 'vulkan'",
                 marks=pytest.mark.skipif(not _lacks_codegen("vulkan"), reason="this TVM can build for Vulkan")),
])
def test_a_kind_tvm_cannot_build_is_refused_before_the_collapse(tmp_path, monkeypatch, capsys, spec, needle):
    from collapse_passes import api
    from collapse_passes.cli import main

    _tiny_conv(tmp_path / "m.onnx")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(api, "collapse", lambda *a, **k: pytest.fail("the collapse ran before the target was checked"))
    rc = main(["m.onnx", "--collapse", "r", "-o", "o.onnx", "--target", spec, "--export", "lib"])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_the_kinds_it_can_build_still_resolve():
    from tvm_integration.targets import resolve_target

    for spec in ("cpu", {"kind": "cuda", "arch": "sm_80"}, {"kind": "opencl"}):
        target, info = resolve_target(spec)
        assert info.kind == target.kind.name
