"""Adversarial round 11, training side (collapse_passes.train): a shared module's site collapsed inside
its block only (the model keeps its class, LaCoOT hooks and block removal still see the blocks), the
result's accuracy after the Layer Folding swap / pretraining, functional activations said, and bad
arguments as one CollapseError line."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from collapse_passes.errors import CollapseError
from collapse_passes.train import LacootTerm, LinearRegime, iterative_collapse, linearize


class Block(nn.Module):
    """torchvision BasicBlock's layout: one ReLU module called twice."""

    def __init__(self, c=4):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.relu(self.conv2(self.relu(self.conv1(x))) + x)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.b1, self.b2 = Block(), Block()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.b2(self.b1(self.act(self.stem(x)))).mean((2, 3)))


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(F.relu(self.c2(F.relu(self.c1(x)))).mean((2, 3)))


def _data(n=48):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def _run(model=None, **kw):
    torch.manual_seed(0)
    x, y = _data()
    kw.setdefault("max_rounds", 1)
    kw.setdefault("steps_per_round", 1)
    kw.setdefault("predict", False)
    return iterative_collapse((model or Net()).eval(), kw.pop("method", "easier"), (x, y), (x, y), **kw)


def test_one_site_of_a_shared_module_is_edited_inside_its_block_only():
    """Collapsing b1.relu:0 used to trace the whole model into a GraphModule: the class was lost and b1 was
    no longer a module that runs, so LaCoOT's block hooks saw nothing (remove_blocks_below silently did
    nothing, the term was 0)."""
    torch.manual_seed(0)
    net = Net().eval()
    x = _data()[0][:4]
    out = linearize(copy.deepcopy(net), ["b1.relu:0"])
    assert type(out) is Net and isinstance(out.b1, torch.fx.GraphModule) and type(out.b2) is Block
    assert sum(isinstance(m, LinearRegime) for m in out.b1.modules()) == 1
    ref = net.fc(net.b2(net.b1.relu(net.b1.conv2(net.b1.conv1(net.act(net.stem(x))))
                                    + net.act(net.stem(x)))).mean((2, 3)))
    torch.testing.assert_close(out(x), ref)
    assert set(LacootTerm(out, ["b1", "b2"]).block_scores([x])) == {"b1", "b2"}


def test_blocks_are_removed_after_a_shared_site_was_collapsed():
    res = _run(remove_blocks_below=1e9, max_accuracy_drop=1.0)
    assert res.history[0]["key"].startswith(("b1.relu:", "b2.relu:")) and res.history[0]["action"] == "collapsed"
    assert res.removed_blocks and res.history[-1]["round"] == "blocks"


@pytest.mark.parametrize("pretrain_steps", [0, 2])
def test_prelu_result_reports_the_accuracy_of_the_model_it_returns(pretrain_steps):
    """ReLU -> PReLU(0.01) and the pretraining change the model; with no round kept, res.accuracy was the
    original model's."""
    def evaluate(m):   # a score that sees the swap (slopes 0.01) and the training (slopes move)
        return float(sum(float(p.weight.detach().sum()) for p in m.modules() if isinstance(p, nn.PReLU)))

    res = _run(method="prelu", pretrain_steps=pretrain_steps, max_rounds=0, evaluate=evaluate, lr=0.1,
               max_accuracy_drop=10.0)
    assert res.baseline_accuracy == 0.0 and any(isinstance(m, nn.PReLU) for m in res.model.modules())
    assert res.accuracy == evaluate(res.model) != 0.0


def test_functional_activations_are_one_error_or_a_note():
    with pytest.raises(CollapseError, match=r"function calls \(relu\(\):0, relu\(\):1.*nn.ReLU"):
        _run(Functional())

    class Mixed(Functional):
        def __init__(self):
            super().__init__()
            self.act = nn.ReLU()

        def forward(self, x):
            return self.fc(F.relu(self.c2(self.act(self.c1(x)))).mean((2, 3)))

    res = _run(Mixed(), max_accuracy_drop=1.0)
    assert res.collapsed == ["act"] and any("relu()" in n for n in res.notes)


def test_model_without_activations_says_so():
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.c, self.fc = nn.Conv2d(1, 2, 3), nn.Linear(2, 3)

        def forward(self, x):
            return self.fc(self.c(x).mean((2, 3)))

    assert "no collapsible activation" in _run(Plain()).stopped


@pytest.mark.parametrize("kw, says", [
    (dict(loss_fn=lambda out, y: out), r"loss_fn must return a scalar.*shape \(48, 3\)"),
    (dict(loss_fn=lambda out, y: torch.tensor(1.0)), r"loss_fn must return a scalar.*without grad"),
    (dict(blocks="b1", lacoot_lambda=0.1), r"blocks must be a list.*blocks=\['b1'\]"),
    (dict(remove_blocks_below=float("nan")), "remove_blocks_below must be a finite number"),
    (dict(remove_blocks_below="0.1"), "remove_blocks_below must be a finite number"),
])
def test_bad_argument_is_one_line(kw, says):
    with pytest.raises(CollapseError, match=says):
        _run(**kw)


def test_dict_data_and_dict_batches_name_the_way_out():
    x, y = _data()
    with pytest.raises(CollapseError, match=r"train_data: a dict .*\(d\['x'\], d\['y'\]\)"):
        iterative_collapse(Net().eval(), "easier", {"x": x, "y": y}, (x, y))
    with pytest.raises(CollapseError, match="got a dict with keys \\['image', 'label'\\].*collate_fn"):
        iterative_collapse(Net().eval(), "easier", [{"image": x, "label": y}], (x, y))


def test_user_model_is_not_changed():
    torch.manual_seed(0)
    net = Net().eval()
    before = copy.deepcopy(net.state_dict())
    res = _run(net, method="prelu", pretrain_steps=1, max_rounds=1)
    assert type(net.b1) is Block and type(net.act) is nn.ReLU
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert res.model is not net


class Unexportable(nn.Module):
    """aten::fft_rfft2 has no ONNX export (opset 17): the speed-up prediction cannot price this model."""

    def __init__(self):
        super().__init__()
        self.c, self.act, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.fft.rfft2(self.act(self.c(x))).abs().mean((2, 3)))


def test_a_model_the_onnx_exporter_rejects_turns_predictions_off_or_is_one_error():
    """predict=True is the default: an export failure used to end the loop with the exporter's traceback."""
    res = _run(Unexportable(), predict=True, max_accuracy_drop=1.0)
    assert res.collapsed == ["act"] and res.predicted_speedup is None
    assert res.history[0]["predicted_speedup"] is None and "no predicted speed-ups" in res.notes[-1]
    with pytest.raises(CollapseError, match=r"speed-up prediction .* failed \(UnsupportedOperatorError.*predict=False"):
        _run(Unexportable(), target_speedup=1.2)


def test_tensor_inputs_with_numpy_or_list_labels_are_a_pair():
    """(tensor, ndarray) and (tensor, list) were taken as two batches: "each batch must be a pair, got Tensor"."""
    x, y = _data()
    for labels in (y.numpy(), y.tolist()):
        res = iterative_collapse(Net().eval(), "easier", (x, labels), (x.numpy(), y), max_rounds=0, predict=False)
        assert res.accuracy == res.baseline_accuracy
    with pytest.raises(CollapseError, match="train_data: the \\(inputs, labels\\) pair does not convert"):
        iterative_collapse(Net().eval(), "easier", (x, ["a"] * len(x)), (x, y), max_rounds=0, predict=False)


def test_pretraining_that_spends_the_tolerance_stops_before_any_round():
    """Rounds are measured against the input's accuracy; a regularised phase that already lost more than
    max_accuracy_drop used to go on and return a model outside the tolerance without a word."""
    calls = []

    def evaluate(m):
        calls.append(1)
        return 1.0 if len(calls) == 1 else 0.5   # the input 1.0, everything after 0.5

    res = _run(method="prelu", pretrain_steps=1, max_rounds=3, evaluate=evaluate, fold_alpha=0.0)
    assert res.stopped.startswith("accuracy tolerance") and res.history == [] and res.accuracy == 0.5
    assert "dropped the accuracy from 1.0000 to 0.5000" in res.notes[0]


def test_frozen_model_is_one_line():
    net = Net()
    for p in net.parameters():
        p.requires_grad_(False)
    with pytest.raises(CollapseError, match="no parameter of the model requires grad"):
        _run(net)


def test_a_block_that_cannot_be_skipped_is_said():
    res = _run(blocks=["b1", "stem"], remove_blocks_below=1e9, max_accuracy_drop=1.0, max_rounds=0)
    assert res.removed_blocks == ["b1"] and "stem not scored" in res.notes[-1]


def test_three_calls_collapsed_one_by_one_keep_distinct_regimes():
    """After relu:1 of three calls is collapsed, the old relu:2 is relu:1: its LinearRegime must not take
    the first one's name (add_submodule would replace it)."""
    class Tri(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(1, 2, 1)
            self.relu = nn.LeakyReLU(0.5)

        def forward(self, x):
            return self.relu(self.relu(self.relu(self.c(x)) - 1) - 1)

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.t = Tri()

        def forward(self, x):
            return self.t(x)

    x = -torch.rand(2, 1, 3, 3) - 1
    m = linearize(linearize(Outer().eval(), ["t.relu:1"]), ["t.relu:1"])
    assert sorted(n for n, c in m.t.named_children() if isinstance(c, LinearRegime)) == \
        ["collapsed_relu_1", "collapsed_relu_1_1"]
    ref = Outer().eval()
    ref.load_state_dict(m.state_dict(), strict=False)
    torch.testing.assert_close(m(x), ref.t.relu(ref.t.c(x)) - 2)
