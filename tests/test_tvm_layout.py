"""TVM integration: convolution layout choice (NCHW / NHWC) and the Clip-raising pass it relies on."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.tvm

tvm = pytest.importorskip("tvm")
pytest.importorskip("onnxruntime")

from tvm_integration import compile as tc  # noqa: E402
from tvm_integration.errors import TVMError  # noqa: E402
from tvm_integration.raise_minmax import raise_constant_minmax  # noqa: E402
from tvm_integration.targets import resolve_target  # noqa: E402
from tvm_integration.testing import activation_chain_onnx  # noqa: E402


@pytest.fixture(scope="module")
def chain():
    return activation_chain_onnx(channels=8, size=8)


@pytest.fixture(scope="module")
def cpu_target():
    return resolve_target("cpu")[0]


def _prim_names(mod) -> list[str]:
    return [gv.name_hint for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]


def test_onnx_clip_kernels_are_raised_to_relax_ops(chain):
    mod = tvm.relax.transform.FoldConstant()(tc.import_onnx(chain[0]))
    assert any(n.startswith("maximum") for n in _prim_names(mod))
    raised, count = raise_constant_minmax(mod)
    assert count == 2  # Clip(0, 6) = maximum then minimum
    assert not any(n.startswith(("maximum", "minimum")) for n in _prim_names(raised))
    text = raised["main"].script()
    assert "R.maximum(" in text and "R.minimum(" in text


def test_nhwc_build_equals_onnxruntime_and_keeps_clip_with_its_conv(chain, cpu_target):
    model, inputs = chain
    prepared = tc.prepare(tc.import_onnx(model), cpu_target, layout="NHWC")
    names = _prim_names(prepared)
    # Clip is not wrapped in transposes of its own: it stays fused with its convolution
    # (the importer's LeakyReLU kernel is still opaque and gets a transpose pair).
    clip = [n for n in names if "minimum" in n]
    assert clip and all("conv2d" in n and "transpose" not in n for n in clip), names
    ref = tc.run_ort(model, inputs)[0]
    for layout in ("NCHW", "NHWC"):
        got = tc.run(tc.build(tc.import_onnx(model), cpu_target, layout=layout), inputs)[0]
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4, err_msg=layout)


def test_unknown_layout_is_a_clear_error(chain, cpu_target):
    with pytest.raises(TVMError, match="unknown TVM layout"):
        tc.build(tc.import_onnx(chain[0]), cpu_target, layout="NCHW8c")


def test_cli_layout_flag():
    import argparse

    from tvm_integration import cli_hook

    p = argparse.ArgumentParser()
    cli_hook.add_arguments(p)
    assert p.parse_args([]).tvm_layout is None  # the target's default (NCHW)
    assert p.parse_args(["--tvm-layout", "nhwc"]).tvm_layout == "NHWC"
    with pytest.raises(SystemExit):
        p.parse_args(["--tvm-layout", "NCHW8c"])
