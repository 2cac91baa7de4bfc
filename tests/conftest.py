"""Shared fixtures: tiny reference models exported by both torch exporters, and ONNX builders."""
from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

TINY = {"resnet18": dict(width=8), "mobilenet_v2": dict(width_mult=0.25), "vgg16_bn": dict(width=8),
        "swin_t": dict(dim=32, depth=2, heads=2)}
#: models whose logits, with fresh or randomize_bn statistics, differ by ~1e-6 (relative) between inputs (depthwise
#: stages shrink the signal ~10x each): exported with BN statistics from data (models.tv_init.calibrate_bn)
CALIBRATED = {"mobilenet_v2"}


def pytest_configure(config):
    """Under `make test` (pytest -n 2 on a 2-core CI runner) each worker's torch would use every core: two
    workers then fight over them, and a forward pass under that contention is 3-10x slower. One torch thread
    per worker."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        try:
            import torch
        except ImportError:
            return
        torch.set_num_threads(1)


def randomize_bn(model, seed=0):
    """Give BatchNorms non-trivial statistics so folding is actually exercised."""
    import torch

    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model


def near_identity_convs(model, noise=0.1, seed=0):
    """1x1 convs of a chain set to identity + noise, so every activation's effect reaches the output (default
    init shrinks the signal through a long chain of 1x1 convs until outputs cannot tell collapses apart)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) and m.in_channels == m.out_channels:
                c = m.in_channels
                m.weight.copy_(torch.eye(c)[:, :, None, None] + noise * torch.randn(c, c, 1, 1, generator=g))
                m.bias.copy_(noise * torch.randn(c, generator=g))
    return model


def export_quiet(model, path, shape, dynamo):
    from models.export import export_onnx

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        export_onnx(model, str(path), shape, dynamo=dynamo)
    return str(path)


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """exported(name, dynamo) -> path of a tiny randomly initialised reference model (cached per session)."""
    import torch

    from models import build

    cache = {}
    d = tmp_path_factory.mktemp("exported")

    def get(name, dynamo=False):
        key = (name, dynamo)
        if key not in cache:
            torch.manual_seed(0)
            m = build(name, **TINY[name])
            if name in CALIBRATED:
                from models.tv_init import calibrate_bn

                m = calibrate_bn(m, (8, 3, 32, 32))
            else:
                m = randomize_bn(m.eval())
            cache[key] = export_quiet(m, d / f"{name}_{'dynamo' if dynamo else 'ts'}.onnx", (1, 3, 32, 32), dynamo)
        return cache[key]

    return get


# ----------------------------------------------------------------------------- onnx builders

def make_model(nodes, inputs, outputs, inits, opset=17):
    g = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def vinfo(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def rnd(*shape, seed=0, scale=0.5):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)
