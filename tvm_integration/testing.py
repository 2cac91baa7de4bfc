"""Tiny models for the TVM tests and the benchmark (torch / onnx imported lazily)."""

from __future__ import annotations

import io

import numpy as np


def tiny_cnn(channels: int = 8, num_classes: int = 4, seed: int = 0):
    """conv-bn-relu x2, global average pool, linear (a ``torch.nn.Sequential`` in eval mode)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    m = nn.Sequential(
        nn.Conv2d(3, channels, 3, padding=1),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.Conv2d(channels, channels, 3, padding=1),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(channels, num_classes),
    )
    # Non-trivial BN statistics so that folding them matters.
    with torch.no_grad():
        for mod in m:
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
    return m.eval()


def export_onnx(module, example_inputs, input_names=("input",), output_names=("output",), opset: int = 17):
    """``torch.onnx.export(..., dynamo=False)`` into memory; returns the ``onnx.ModelProto``."""
    import warnings

    import onnx
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            tuple(example_inputs),
            buf,
            dynamo=False,
            input_names=list(input_names),
            output_names=list(output_names),
            opset_version=opset,
        )
    return onnx.load_from_string(buf.getvalue())


def tiny_cnn_onnx(channels: int = 8, size: int = 16, seed: int = 0):
    """(onnx model, {"input": array}) for :func:`tiny_cnn` with a 1x3xSIZExSIZE input."""
    import torch

    m = tiny_cnn(channels=channels, seed=seed)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed + 1))
    model = export_onnx(m, (x,))
    return model, {"input": x.numpy().astype(np.float32)}


ACTIVATION_CHAIN_KINDS = ("relu", "leakyrelu", "swish", "prelu", "relu6")   # Clip(0, 6) is a ReLU6 (catalogue)


def activation_chain_onnx(drop: tuple[int, ...] = (), channels: int = 4, size: int = 8, seed: int = 0):
    """A hand-built ONNX graph: Conv, Relu, Conv, LeakyRelu, x*Sigmoid(x), Conv, PRelu, Clip(0, 6), Conv.

    Activation ``i`` (in that order: :data:`ACTIVATION_CHAIN_KINDS`) is left out
    when ``i in drop`` -- the reference for "the same model with those
    activations removed".  Weights are identical whatever ``drop`` is.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def w(name, shape, scale=0.3):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [
        w("w1", (channels, 3, 3, 3)),
        w("b1", (channels,)),
        w("w2", (channels, channels, 3, 3)),
        w("b2", (channels,)),
        w("w3", (channels, channels, 1, 1), scale=0.6),
        w("b3", (channels,)),
        w("w4", (channels, channels, 1, 1)),
        w("b4", (channels,)),
        numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
        numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
        numpy_helper.from_array(
            np.linspace(0.1, 0.4, channels, dtype=np.float32).reshape(channels, 1, 1), "slope"
        ),
    ]
    nodes = []
    cur = "x"

    def act(i, make):
        nonlocal cur
        if i in drop:
            return
        out = f"a{i}"
        nodes.extend(make(cur, out))
        cur = out

    nodes.append(helper.make_node("Conv", [cur, "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]))
    cur = "c1"
    act(0, lambda i, o: [helper.make_node("Relu", [i], [o])])
    nodes.append(helper.make_node("Conv", [cur, "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]))
    cur = "c2"
    act(1, lambda i, o: [helper.make_node("LeakyRelu", [i], [o], alpha=0.1)])
    act(
        2,
        lambda i, o: [
            helper.make_node("Sigmoid", [i], [o + "_sig"]),
            helper.make_node("Mul", [i, o + "_sig"], [o]),
        ],
    )
    nodes.append(helper.make_node("Conv", [cur, "w3", "b3"], ["c3"]))
    cur = "c3"
    act(3, lambda i, o: [helper.make_node("PRelu", [i, "slope"], [o])])
    act(4, lambda i, o: [helper.make_node("Clip", [i, "lo", "hi"], [o])])
    nodes.append(helper.make_node("Conv", [cur, "w4", "b4"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "activation_chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, size, size])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    onnx.checker.check_model(model)
    x = (np.random.default_rng(seed + 1).standard_normal((1, 3, size, size)) * 2).astype(np.float32)
    return model, {"x": x}


def elf_machine(path) -> int:
    """``e_machine`` of an ELF file (62: x86-64, 183: AArch64); raises ValueError if not ELF."""
    with open(path, "rb") as f:
        head = f.read(20)
    if head[:4] != b"\x7fELF":
        raise ValueError(f"{path} is not an ELF file")
    order = "little" if head[5] == 1 else "big"
    return int.from_bytes(head[18:20], order)
