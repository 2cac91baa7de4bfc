"""Tiny models shared by the score tests (built inline with torch / onnx.helper), and their checks.

Imported by test_scores*.py and test_remove_blocks.py (pytest puts tests/ on sys.path).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def dead_linear_cnn(seed: int = 0):
    """conv-BN-ReLU x4: relu0/relu1 mixed, relu2 dead (BN beta -100), relu3 linear (BN beta +100)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            chans = [2, 6, 6, 6, 6]
            for i in range(4):
                setattr(self, f"conv{i}", nn.Conv2d(chans[i], chans[i + 1], 3, padding=1))
                setattr(self, f"bn{i}", nn.BatchNorm2d(chans[i + 1]))
                setattr(self, f"relu{i}", nn.ReLU())
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            for i in range(4):
                x = getattr(self, f"relu{i}")(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
            return self.fc(self.pool(x).flatten(1))

    net = Net().eval()
    with torch.no_grad():
        for i in range(4):
            getattr(net, f"conv{i}").bias.zero_()
        net.bn2.bias.fill_(-100.0)
        net.bn3.bias.fill_(100.0)
    return net


def residual_net(zero_block: int = 1, seed: int = 0, blocks: int = 3, width: int = 4):
    """stem conv-ReLU, then `blocks` identity residual blocks x + conv(relu(conv(x))) with a post-add
    ReLU; block `zero_block` has its second conv zeroed (branch output exactly 0)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(width, width, 3, padding=1)
            self.relu1 = nn.ReLU()
            self.conv2 = nn.Conv2d(width, width, 3, padding=1)
            self.relu2 = nn.ReLU()

        def forward(self, x):
            return self.relu2(x + self.conv2(self.relu1(self.conv1(x))))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(1, width, 3, padding=1)
            self.relu = nn.ReLU()
            self.layers = nn.Sequential(*[Block() for _ in range(blocks)])
            self.fc = nn.Linear(width, 3)

        def forward(self, x):
            x = self.layers(self.relu(self.stem(x)))
            return self.fc(x.mean(dim=(2, 3)))

    net = Net().eval()
    with torch.no_grad():
        for b in net.layers:
            b.conv2.weight.mul_(3.0)
        net.layers[zero_block].conv2.weight.zero_()
        net.layers[zero_block].conv2.bias.zero_()
    return net


def prelu_net(seed: int = 0):
    import torch
    from torch import nn

    torch.manual_seed(seed)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv0 = nn.Conv2d(1, 4, 3, padding=1)
            self.act0 = nn.PReLU(4)
            self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
            self.act1 = nn.PReLU(4)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
            self.act2 = nn.LeakyReLU(0.1)
            self.conv3 = nn.Conv2d(4, 4, 3, padding=1)
            self.act3 = nn.ReLU()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            for i in range(4):
                x = getattr(self, f"act{i}")(getattr(self, f"conv{i}")(x))
            return self.fc(x.mean(dim=(2, 3)))

    net = Net().eval()
    with torch.no_grad():
        net.act0.weight.copy_(torch.tensor([1.0, 1.0, 0.9, 1.1]))      # mean |1 - a| = 0.05
        net.act1.weight.copy_(torch.tensor([0.25, 0.25, 0.25, 0.25]))  # 0.75
    return net


def bn_branches_model(gammas, betas, cin: int = 4, cout: int = 3, hw: int = 6, seed: int = 0) -> onnx.ModelProto:
    """Hand-built ONNX: input -> [Conv 1x1 -> BatchNormalization -> Relu] per (gamma, beta) branch, each
    a graph output. The BN statistics equal the conv output's true ones for N(0, 1) inputs, so the
    BN output is N(beta, gamma^2) per channel: TLC-bn and TLC-empirical must agree."""
    rng = np.random.default_rng(seed)
    nodes, inits, outs = [], [], []
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, cin, hw, hw])
    for i, (g, b) in enumerate(zip(gammas, betas)):
        w = rng.standard_normal((cout, cin, 1, 1)).astype(np.float32)
        var = (w.reshape(cout, -1) ** 2).sum(1)
        eps = 1e-5
        inits += [numpy_helper.from_array(w, f"w{i}"),
                  numpy_helper.from_array(np.full(cout, g, np.float32), f"gamma{i}"),
                  numpy_helper.from_array(np.full(cout, b, np.float32), f"beta{i}"),
                  numpy_helper.from_array(np.zeros(cout, np.float32), f"mean{i}"),
                  numpy_helper.from_array((var - eps).astype(np.float32), f"var{i}")]
        nodes += [helper.make_node("Conv", ["input", f"w{i}"], [f"c{i}"], name=f"/b{i}/conv/Conv"),
                  helper.make_node("BatchNormalization", [f"c{i}", f"gamma{i}", f"beta{i}", f"mean{i}", f"var{i}"],
                                   [f"n{i}"], name=f"/b{i}/bn/BatchNormalization", epsilon=eps),
                  helper.make_node("Relu", [f"n{i}"], [f"y{i}"], name=f"/b{i}/relu/Relu")]
        outs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [None, cout, hw, hw]))
    graph = helper.make_graph(nodes, "bn_branches", [x], outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def export_ts(net, path, shape, **kw) -> str:
    """TorchScript export (BN folded into Conv unless do_constant_folding=False), quietly."""
    import contextlib
    import io
    import warnings

    from models.export import export_onnx

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        export_onnx(net, str(path), shape, **kw)
    return str(path)


def test_helper_models_run():
    import torch

    assert dead_linear_cnn()(torch.zeros(2, 2, 8, 8)).shape == (2, 3)
    assert residual_net()(torch.zeros(2, 1, 8, 8)).shape == (2, 3)
    assert prelu_net()(torch.zeros(2, 1, 8, 8)).shape == (2, 3)
    assert len(bn_branches_model([1.0], [0.0]).graph.node) == 3
