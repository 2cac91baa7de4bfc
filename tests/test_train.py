"""The training loop (collapse_passes.train): rollback, padding relocation, Layer Folding, LaCoOT, --eval."""
from __future__ import annotations

import functools
import io
import warnings

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from collapse_passes.api import collapse
from collapse_passes.errors import CollapseError
from collapse_passes.train import (LacootTerm, LinearRegime, find_sites, iterative_collapse, linearize,
                                   prelu_penalty, relocate_padding, to_prelu)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny nets: on a shared 2-core machine torch's thread pool makes each op 10-100x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _export(model, shape) -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.randn(*shape),), buf, opset_version=17, dynamo=False,
                          input_names=["input"], output_names=["logits"])
    return onnx.load_from_string(buf.getvalue())


def _n_conv(m: onnx.ModelProto) -> int:
    return sum(n.op_type == "Conv" for n in m.graph.node)


class Chain(nn.Module):
    def __init__(self, s1=1, c=4):
        super().__init__()
        self.conv1 = nn.Conv2d(2, c, 3, stride=s1, padding=1)
        self.bn1 = nn.BatchNorm2d(c)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.act2 = nn.ReLU()
        self.conv3 = nn.Conv2d(c, 3, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        x = self.conv3(self.act2(self.conv2(self.act1(self.bn1(self.conv1(x))))))
        return self.pool(x).flatten(1)


def _randomize_bn(m):
    g = torch.Generator().manual_seed(1)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=g))
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
            mod.bias.data.copy_(torch.randn(mod.num_features, generator=g))
    return m


@pytest.mark.parametrize("s1", [1, 2])
def test_relocated_padding_chain_merges_exactly(s1):
    torch.manual_seed(0)
    net = _randomize_bn(Chain(s1)).eval()
    # without relocation the padded chain cannot merge exactly: the conv count stays
    plain = linearize(Chain(s1).eval(), ["act1", "act2"])
    assert _n_conv(collapse(_export(plain, (1, 2, 9, 9)), check=2).model) == 3
    lin = linearize(net, ["act2", "act1"])          # collapse in any order: the padding walks to conv1
    assert relocate_padding(lin) >= 2
    assert lin.conv1.padding == (1 + 1 * s1 + 1 * s1,) * 2 and lin.conv2.padding == (0, 0) == lin.conv3.padding
    onx = _export(lin, (1, 2, 9, 9))
    res = collapse(onx, check=3)                    # verification gate: raises if inexact
    assert res.passed and _n_conv(res.model) == 1 < _n_conv(onx) == 3
    # the merged model computes the relocated torch model
    import onnxruntime as ort

    x = torch.randn(2, 2, 9, 9)
    sess = ort.InferenceSession(res.model.SerializeToString(), providers=["CPUExecutionProvider"])
    for i in range(2):
        got = sess.run(None, {"input": x[i:i + 1].numpy()})[0]
        np.testing.assert_allclose(got, lin(x[i:i + 1]).detach().numpy(), rtol=1e-4, atol=1e-5)


class Shared(nn.Module):
    """One ReLU module called at two sites (torchvision BasicBlock style)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 3)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.fc3(self.relu(self.fc2(self.relu(self.fc1(x)))))


def test_one_site_of_a_shared_module():
    net = Shared().eval()
    assert [s.key for s in find_sites(net)] == ["relu:0", "relu:1"]
    gm = linearize(_copy(net), ["relu:1"])
    x = torch.randn(5, 4)
    want = net.fc3(net.fc2(torch.relu(net.fc1(x))))
    torch.testing.assert_close(gm(x), want)
    assert [s.key for s in find_sites(gm)] == ["relu"]   # the other site is left


def _copy(m):
    import copy

    return copy.deepcopy(m)


# ------------------------------------------------------------------------------------ the loop

def _blobs(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    centers = torch.randn(3, 6, generator=g) * 3
    x = centers[y] + torch.randn(n, 6, generator=g)
    return x, y


class MLP(nn.Module):
    def __init__(self, bn=True):
        super().__init__()
        layers = []
        for i in range(3):
            layers += [nn.Linear(6 if i == 0 else 16, 16)] + ([nn.BatchNorm1d(16)] if bn else []) + [nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.body(x))


def _trained(bn=True):
    return _copy(_trained_once(bn))


@functools.lru_cache(maxsize=None)
def _trained_once(bn):
    torch.manual_seed(0)
    net = MLP(bn)
    x, y = _blobs()
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval()


def test_loop_rolls_back_and_stops_when_tolerance_is_exceeded():
    net = _trained()
    data = _blobs(seed=1)
    accs = iter([0.90, 0.89, 0.80, 0.95])   # baseline, round 0 ok (drop .01), round 1 drops .10
    res = iterative_collapse(net, "easier", _blobs(), data, max_accuracy_drop=0.02, steps_per_round=2,
                             evaluate=lambda m: next(accs), predict=False)
    assert len(res.collapsed) == 1 and res.stopped == "accuracy tolerance"
    assert [h["action"].split(":")[0] for h in res.history] == ["collapsed", "rolled back"]
    # the returned model is the one of round 0: exactly one LinearRegime, the rolled-back site still a ReLU
    kinds = [type(m).__name__ for m in res.model.body]
    assert kinds.count("LinearRegime") == 1 and kinds.count("ReLU") == 2
    assert res.accuracy == 0.89 and res.baseline_accuracy == 0.90
    # the input model is untouched
    assert sum(isinstance(m, nn.ReLU) for m in net.modules()) == 3


def test_loop_patience_skips_a_rolled_back_site_and_goes_on():
    accs = iter([0.90, 0.80, 0.89, 0.70, 0.95])   # baseline, roll back, ok, roll back -> stop (patience 1)
    res = iterative_collapse(_trained(), "easier", _blobs(), _blobs(seed=1), max_accuracy_drop=0.02, steps_per_round=1,
                             evaluate=lambda m: next(accs), predict=False, patience=1)
    acts = [h["action"].split(":")[0] for h in res.history]
    assert acts == ["rolled back", "collapsed", "rolled back"] and res.stopped == "accuracy tolerance"
    assert len(res.collapsed) == 1 and res.history[0]["key"] not in res.collapsed


def test_loop_with_real_accuracy_keeps_tolerance():
    net = _trained()
    res = iterative_collapse(net, "tlc", _blobs(), _blobs(seed=1), max_accuracy_drop=0.0, steps_per_round=10,
                             predict=False)
    assert res.accuracy >= res.baseline_accuracy
    for h in res.history:
        if h["action"] == "collapsed":
            assert h["accuracy"] >= res.baseline_accuracy


def test_bad_inputs_one_clear_line():
    net = _trained()
    with pytest.raises(CollapseError, match="training mode"):
        iterative_collapse(net.train(), "easier", _blobs(), _blobs())
    with pytest.raises(CollapseError, match="no BatchNorm"):
        iterative_collapse(_trained(bn=False), "tlc", _blobs(), _blobs(), predict=False)
    x, y = _blobs()
    with pytest.raises(CollapseError, match="labels"):
        iterative_collapse(net.eval(), "easier", _blobs(), (x, y[:10]))


# ------------------------------------------------------------------------------------ Layer Folding

def test_prelu_penalty_moves_slopes_toward_one_and_a_slope_at_one_folds_exactly():
    net = _trained()
    assert len(to_prelu(net)) == 3
    slopes = lambda: torch.cat([m.weight.detach() for m in net.modules() if isinstance(m, nn.PReLU)])  # noqa: E731
    before = slopes().clone()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    for _ in range(20):
        opt.zero_grad()
        prelu_penalty(net).backward()
        opt.step()
    after = slopes()
    assert torch.all((1 - after).abs() < (1 - before).abs())
    # slope exactly 1: the PReLU is the identity, folding it changes nothing and merges exactly
    net.body[2].weight.data.fill_(1.0)
    x = torch.randn(7, 6)
    folded = linearize(_copy(net), ["body.2"])
    assert isinstance(folded.body[2], LinearRegime)
    torch.testing.assert_close(folded(x), net(x))
    res = collapse(_export(folded, (1, 6)), check=2)
    assert res.passed and sum(n.op_type in ("Gemm", "MatMul") for n in res.model.graph.node) == 3


def test_prelu_loop_folds_only_slopes_above_fold_alpha():
    net = _trained()
    res = iterative_collapse(net, "prelu", _blobs(), _blobs(seed=1), max_accuracy_drop=0.05, steps_per_round=5,
                             pretrain_steps=60, prelu_lambda=1.0, lr=2e-2, predict=False)
    assert res.collapsed, res.history
    for h in res.history:
        assert h["score"] <= 0.1 + 1e-9


# ------------------------------------------------------------------------------------ LaCoOT

class Block(nn.Module):
    def __init__(self, c=3):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + self.conv(x)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Block()

    def forward(self, x):
        return self.block(x)


def test_lacoot_gradient_moves_block_toward_identity():
    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():
        net.block.conv.weight.mul_(5)
    x = torch.randn(32, 3, 6, 6)
    rel_branch = lambda: float((net.block(x) - x).detach().norm() / x.norm())  # noqa: E731
    start = rel_branch()
    term = LacootTerm(net)
    assert term.blocks == ["block"]
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    vals = []
    with term:
        for _ in range(40):
            net(x)
            p = term.penalty()
            vals.append(float(p.detach()))
            opt.zero_grad()
            p.backward()
            opt.step()
    assert np.mean(vals[-5:]) < 0.5 * np.mean(vals[:5])
    assert rel_branch() < 0.5 * start


# ------------------------------------------------------------------------------------ --eval

class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4 * 5 * 5, 3)

    def forward(self, x):
        return self.fc(self.relu(self.conv(x)).flatten(1))


def _eval_files(tmp_path, labels_key="labels", n_labels=None):
    torch.manual_seed(0)
    net = Tiny().eval()
    path = tmp_path / "tiny.onnx"
    onnx.save(_export(net, (1, 1, 5, 5)), path)
    x = torch.randn(40, 1, 5, 5)
    y = torch.randint(0, 3, (40,))
    arrays = {"input": x.numpy()}
    if labels_key:
        arrays[labels_key] = y.numpy()[:n_labels]
    np.savez(tmp_path / "eval.npz", **arrays)
    return net, path, x, y


def test_cli_eval_accuracy_equals_torch(tmp_path):
    import json

    from collapse_passes.cli import main

    net, path, x, y = _eval_files(tmp_path)
    want = int((net(x).argmax(1) == y).sum()) / 40
    rc = main([str(path), "--collapse", "relu", "--eval", str(tmp_path / "eval.npz"), "-o", str(tmp_path / "o.onnx"),
               "--report", str(tmp_path / "r.json"), "-q"])
    assert rc == 0
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["accuracy"]["original"] == pytest.approx(want, abs=1e-9)
    assert rep["accuracy"]["samples"] == 40
    lin = _copy(net)
    lin.relu = nn.Identity()
    assert rep["accuracy"]["result"] == pytest.approx(int((lin(x).argmax(1) == y).sum()) / 40, abs=1e-9)
    assert rep["latency"]["original_ms"] > 0 and rep["latency"]["result_ms"] > 0


@pytest.mark.parametrize("key,n,msg", [(None, None, "no 'labels' array"), ("labels", 7, "7 labels but 40 samples")])
def test_cli_eval_bad_labels_one_line_exit_2(tmp_path, capsys, key, n, msg):
    from collapse_passes.cli import main

    _, path, _, _ = _eval_files(tmp_path, key, n)
    out = tmp_path / "o.onnx"
    rc = main([str(path), "--eval", str(tmp_path / "eval.npz"), "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and "Traceback" not in err and not out.exists()
    assert len([l for l in err.strip().splitlines() if l.strip()]) == 1


def test_target_speedup_skips_activations_that_buy_nothing(tmp_path):
    """conv-relu-conv (mergeable: padding on the first only) vs a ReLU before a residual add (no merge)."""
    from collapse_passes.cli import main

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(2, 8, 3, padding=1)
            self.a1 = nn.ReLU()
            self.c2 = nn.Conv2d(8, 2, 1)
            self.a2 = nn.ReLU()

        def forward(self, x):
            return self.a2(self.c2(self.a1(self.c1(x))) + x)

    path = tmp_path / "m.onnx"
    onnx.save(_export(M(), (1, 2, 6, 6)), path)
    import json

    (tmp_path / "s.json").write_text(json.dumps({"scores": {"a2": 0.1, "a1": 0.5}}))
    rc = main([str(path), "--scores", str(tmp_path / "s.json"), "--target-speedup", "1.01", "--report",
               str(tmp_path / "r.json"), "-o", str(tmp_path / "o.onnx"), "-q"])
    assert rc == 0
    rep = json.loads((tmp_path / "r.json").read_text())
    taken = {a["key"]: a["collapsed"] for a in rep["activations"]}
    assert taken == {"a1": True, "a2": False}, rep["target_speedup"]


class ChainHead(Chain):
    def __init__(self):
        super().__init__()
        self.act3 = nn.ReLU()

    def forward(self, x):
        x = self.conv3(self.act2(self.conv2(self.act1(self.bn1(self.conv1(x))))))
        return self.pool(self.act3(x)).flatten(1)


def test_loop_target_speedup_skips_sites_that_buy_nothing():
    torch.manual_seed(0)
    net = _randomize_bn(ChainHead()).eval()
    x = torch.randn(16, 2, 8, 8)
    y = torch.randint(0, 3, (16,))
    res = iterative_collapse(net, "easier", (x, y), (x, y), target_speedup=100.0, fine_tune=lambda m: m,
                             evaluate=lambda m: 1.0, score_batches=1)
    assert "act3" not in res.collapsed                      # before the pool: no merge, no gain
    assert set(res.collapsed) == {"act1", "act2"}           # the padded chain merges once relocated
    assert any(h["key"] == "act3" and h["action"].startswith("skipped") for h in res.history)
    assert res.predicted_speedup > 1.0 and res.model.conv1.padding == (3, 3)


def test_lacoot_block_removal_drops_a_near_identity_block_only():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.id_like, self.busy = Block(), Block()

        def forward(self, x):
            return self.busy(self.id_like(x))

    torch.manual_seed(0)
    net = Two().eval()
    with torch.no_grad():
        net.id_like.conv.weight.mul_(1e-3)
        net.id_like.conv.bias.zero_()
        net.busy.conv.weight.mul_(10)
    x = torch.randn(32, 3, 6, 6)
    y = torch.randint(0, 3, (32,))
    res = iterative_collapse(net, "easier", (x, y), (x, y), fine_tune=lambda m: m, evaluate=lambda m: 1.0,
                             max_rounds=0, remove_blocks_below=0.05, predict=False)
    assert res.removed_blocks == ["id_like"]
    assert isinstance(res.model.id_like, nn.Identity) and isinstance(res.model.busy, Block)


def test_sites_inside_a_removed_block_are_not_reported_as_collapsed():
    class ActBlock(nn.Module):
        def __init__(self, c=3):
            super().__init__()
            self.conv1, self.act, self.conv2 = nn.Conv2d(c, c, 1), nn.ReLU(), nn.Conv2d(c, c, 1)

        def forward(self, x):
            return x + self.conv2(self.act(self.conv1(x)))

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.id_like, self.busy = ActBlock(), ActBlock()

        def forward(self, x):
            return self.busy(self.id_like(x))

    torch.manual_seed(0)
    net = Two().eval()
    with torch.no_grad():
        net.id_like.conv2.weight.mul_(1e-4)
        net.id_like.conv2.bias.zero_()
        net.busy.conv2.weight.mul_(10)
    x, y = torch.randn(32, 3, 6, 6), torch.randint(0, 3, (32,))
    res = iterative_collapse(net, "easier", (x, y), (x, y), fine_tune=lambda m: m, evaluate=lambda m: 1.0,
                             max_rounds=2, remove_blocks_below=0.05, predict=False)
    assert res.removed_blocks == ["id_like"]
    assert any(h["key"].startswith("id_like.") and h["action"] == "collapsed" for h in res.history), res.history
    assert not [k for k in res.collapsed if k.startswith("id_like.")], res.collapsed


def test_residual_blocks_of_the_reference_resnet():
    from collapse_passes.train import residual_blocks
    from models import build

    # identity-skip BasicBlocks (shortcut = nn.Identity); a Sequential of blocks is not a block itself
    assert residual_blocks(build("resnet18", width=4)) == ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]


def test_loop_speaks_in_the_original_models_keys():
    """After one call of a shared module is collapsed, the model's own keys renumber (relu:1 -> relu);
    the loop's result and history keep the original keys, so replaying them selects the same sites."""
    x, y = _blobs()
    net = Shared().eval()
    net.fc3 = nn.Linear(4, 3)
    res = iterative_collapse(net, "easier", (x[:, :4], y), (x[:, :4], y), max_accuracy_drop=1.0,
                             steps_per_round=1, predict=False)
    assert sorted(res.collapsed) == ["relu:0", "relu:1"]
    assert all(r["key"] in ("relu:0", "relu:1") for r in res.history)
    assert len(set(res.collapsed)) == 2


# ------------------------------------------------------------------------------------ relocation only where it merges

class Pair(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 (a ResNet block's main path)."""

    def __init__(self, c=8):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(self.conv2(self.act1(self.bn1(self.conv1(x))))).flatten(1)


@pytest.mark.parametrize("overhead, merges", [(0.0, False), (1e6, True)])
def test_padding_is_relocated_only_where_the_planner_merges(overhead, merges):
    """With no per-op overhead the planner refuses the 3x3 + 3x3 -> 5x5 merge (more MACs), so the loop
    must not relocate (relocating would only enlarge conv1); with a large overhead it merges, and the
    ONNX merge under the same cost model then yields one conv."""
    from collapse_passes.algebra.cost import CostModel
    from collapse_passes.train.loop import planner_accept

    torch.manual_seed(0)
    net = _randomize_bn(Pair()).eval()
    x = torch.randn(4, 8, 8, 8)
    cm = CostModel(per_op_overhead_macs=overhead)
    lin = linearize(_copy(net), ["act1"])
    moved = relocate_padding(lin, planner_accept(lin, x, cm))
    assert (moved == 1) is merges
    assert lin.conv1.padding == ((2, 2) if merges else (1, 1))
    assert lin.conv2.padding == ((0, 0) if merges else (1, 1))
    # the loop makes the same decision (it asks the same planner)
    y = torch.randint(0, 3, (4,))
    res = iterative_collapse(net, "easier", (x, y), (x, y), fine_tune=lambda m: m, evaluate=lambda m: 1.0,
                             score_batches=1, cost_model=cm, max_rounds=1)
    assert res.collapsed == ["act1"] and res.model.conv1.padding == lin.conv1.padding
    onx = collapse(_export(lin, (1, 8, 8, 8)), check=2, per_op_overhead=overhead).model
    assert _n_conv(onx) == (1 if merges else 2)


class InvRes(nn.Module):
    """1x1 expand -> BN -> ReLU6 -> 3x3 depthwise -> BN -> ReLU6 -> 1x1 project (MobileNetV2 block)."""

    def __init__(self, c=4, t=4):
        super().__init__()
        h = c * t
        self.blk = nn.Module()
        self.blk.expand, self.blk.bn1, self.blk.act1 = nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6()
        self.blk.dw = nn.Conv2d(h, h, 3, padding=1, groups=h, bias=False)
        self.blk.bn2, self.blk.act2 = nn.BatchNorm2d(h), nn.ReLU6()
        self.blk.project = nn.Conv2d(h, c, 1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        b = self.blk
        return self.pool(b.project(b.act2(b.bn2(b.dw(b.act1(b.bn1(b.expand(x)))))))).flatten(1)


@pytest.mark.parametrize("group", [False, True])
def test_both_activations_of_an_inverted_residual_go_together(group):
    """Alone, neither ReLU6 lets a merge pay (a dense 3x3 over the expanded width costs more than
    1x1 + depthwise); together the block becomes one 3x3 conv c -> c, cheaper than the three. Only the
    group candidate finds that."""
    torch.manual_seed(0)
    net = _randomize_bn(InvRes()).eval()
    x = torch.randn(8, 4, 8, 8)
    y = torch.randint(0, 3, (8,))
    res = iterative_collapse(net, "easier", (x, y), (x, y), fine_tune=lambda m: m, evaluate=lambda m: 1.0,
                             score_batches=1, target_speedup=100.0, group_sites=group)
    if group:
        assert sorted(res.collapsed) == ["blk.act1", "blk.act2"] and res.predicted_speedup > 1.0
        assert res.model.blk.expand.padding == (1, 1) and res.model.blk.dw.padding == (0, 0)
        assert _n_conv(collapse(_export(res.model, (1, 4, 8, 8)), check=2).model) == 1
    else:
        assert res.collapsed == [] and res.stopped == "no candidate buys a predicted speed-up"
        assert {h["key"] for h in res.history} == {"blk.act1", "blk.act2"}


def test_prefer_speedup_takes_a_merge_buying_site_before_a_lower_scored_one():
    """prefer_speedup: a site whose collapse buys a merge goes first even when another site scores lower;
    without it the loop takes the lowest score."""
    torch.manual_seed(0)
    net = _randomize_bn(ChainHead()).eval()
    x = torch.randn(16, 2, 8, 8)
    y = torch.randint(0, 3, (16,))
    kw = dict(fine_tune=lambda m: m, evaluate=lambda m: 1.0, score_batches=1, max_rounds=1,
              cost_model=__import__("collapse_passes.algebra.cost", fromlist=["CostModel"]).CostModel(
                  per_op_overhead_macs=1e6))
    plain = iterative_collapse(net, "easier", (x, y), (x, y), **kw)
    assert plain.collapsed == ["act3"] and plain.predicted_speedup == pytest.approx(1.0)  # lowest score, no merge
    pref = iterative_collapse(net, "easier", (x, y), (x, y), prefer_speedup=True, **kw)
    assert pref.collapsed in (["act1"], ["act2"]) and pref.predicted_speedup > 1.0
    assert pref.history[0]["score"] > plain.history[0]["score"]
    # min_gain above any gain: nothing counts as buying a speed-up, the lowest score goes first again
    picky = iterative_collapse(net, "easier", (x, y), (x, y), prefer_speedup=True, min_gain=10.0, **kw)
    assert picky.collapsed == ["act3"]
