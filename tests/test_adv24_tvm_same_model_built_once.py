"""One model given as both the input and the collapsed model (`python -m tvm_integration m.onnx` without
--collapsed, a collapse that changed nothing): run_from_args imported and built it twice for the untuned
stage (a Swin build is tens of seconds on 2 cores), then compared the two builds of one model. It is now
imported and built once; two different models still get a build each."""
from __future__ import annotations

import argparse

import numpy as np
import onnx
import pytest

pytestmark = pytest.mark.tvm
pytest.importorskip("tvm")

from conftest import make_model, rnd, vinfo  # noqa: E402
from onnx import helper  # noqa: E402


def _model(scale: float = 1.0) -> onnx.ModelProto:
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1] * 4),
             helper.make_node("Relu", ["c"], ["y"])]
    return make_model(nodes, [vinfo("x", [1, 3, 8, 8])], [vinfo("y", [1, 4, 8, 8])],
                      {"w": rnd(4, 3, 3, 3, seed=1) * np.float32(scale)})


def _run(tmp_path, monkeypatch, original, collapsed):
    from tvm_integration import cli_hook
    from tvm_integration import compile as tc

    calls = {"import_onnx": 0, "build": 0}
    for name in calls:
        real = getattr(tc, name)

        def counted(*a, _real=real, _name=name, **k):
            calls[_name] += 1
            return _real(*a, **k)

        monkeypatch.setattr(tc, name, counted)
    p = argparse.ArgumentParser()
    cli_hook.add_arguments(p)
    args = p.parse_args(["--target", "cpu", "--tune-dir", str(tmp_path / "tune"), "--tvm-repeat", "1"])
    x = {"x": np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    report = cli_hook.run_from_args(args, original, collapsed, x, console=lambda _m: None)
    return calls, report


@pytest.mark.parametrize("copy", [False, True], ids=["same-object", "equal-bytes"])
def test_one_model_given_twice_is_imported_and_built_once(tmp_path, monkeypatch, copy):
    m = _model()
    calls, report = _run(tmp_path, monkeypatch, m, onnx.load_from_string(m.SerializeToString()) if copy else m)
    assert calls == {"import_onnx": 1, "build": 1}, calls   # was 2 and 2
    assert report["verification"]["collapsed_tvm_untuned_vs_onnxruntime"]["ok"]
    lat = report["latency_ms"]
    assert lat["original"]["tvm_untuned"] > 0 and lat["collapsed"]["tvm_untuned"] > 0


def test_two_models_still_get_a_build_each(tmp_path, monkeypatch):
    calls, report = _run(tmp_path, monkeypatch, _model(), _model(scale=0.5))
    assert calls == {"import_onnx": 2, "build": 2}, calls
    assert report["verification"]["collapsed_tvm_untuned_vs_onnxruntime"]["ok"]
