"""How many times collapse() of a torch model runs it: pinned, so extra forward passes don't creep back.

Each model runs at most once per check input (fx/api.py CheckOutputs): the input graph's run on
example_inputs is the shape propagation, the result's too, and the requested semantics share the input's
runs when nothing is collapsed. With check=3 (the default) and keys collapsed that is: the user's model
once (the trace check), the traced input graph 1 + 2, the requested semantics 3, the result 1 + 2 = 10
runs (17 before 2026-11-28). Exact channel removal adds one shape run after it removes something.
A run is a call of a GraphModule or of the user's model, or an fx Interpreter run (ShapeProp)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import fx, nn  # noqa: E402

import collapse_passes as cp  # noqa: E402


class _Net(nn.Module):
    """conv-bn-relu, a residual block, pool, linear: BatchNorm folds, ReLUs collapse, the skip absorbs."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.conv = nn.Conv2d(8, 8, 1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.stem(x)
        x = self.relu(self.bn(self.conv(x)) + x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _randomize(*bns) -> None:
    with torch.no_grad():
        for bn in bns:
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 1.5)
            bn.weight.uniform_(0.5, 1.5)


def _net() -> nn.Module:
    torch.manual_seed(0)
    m = _Net()
    _randomize(m.stem[1], m.bn)
    return m.eval()


def _chain_with_dead_channel(where: str = "bn") -> nn.Module:
    """conv-bn-relu twice; channel 3 after the first BatchNorm is constant (a zero BatchNorm scale, or a zero
    conv filter): exact channel removal takes it."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                      nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    _randomize(m[1], m[4])
    if where:
        with torch.no_grad():
            (m[1] if where == "bn" else m[0]).weight[3] = 0.0
    return m.eval()


class _Runs:
    """Counts model runs while active: GraphModule / user-model calls and fx Interpreter runs."""

    def __init__(self, user: nn.Module):
        self.user, self.calls, self.interpreted = user, 0, 0
        self.double = 0   # runs of a float64 copy (the second look; only when float32 fails)

    def __enter__(self):
        def hook(module, args, out):
            if module is self.user or isinstance(module, fx.GraphModule):
                self.calls += 1
                self.double += int(any(isinstance(a, torch.Tensor) and a.dtype == torch.float64 for a in args))

        self._handle = torch.nn.modules.module.register_module_forward_hook(hook)
        self._run = fx.Interpreter.run
        runs = self

        def run(interp, *args, **kw):
            runs.interpreted += 1
            return runs._run(interp, *args, **kw)

        fx.Interpreter.run = run
        return self

    def __exit__(self, *exc):
        self._handle.remove()
        fx.Interpreter.run = self._run

    @property
    def total(self) -> int:
        return self.calls + self.interpreted


def _collapse(model, **kw):
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with _Runs(model) as runs:
        res = cp.collapse(model, example_inputs=(x,), **kw)
    assert res.passed
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before), \
        "collapse() changed the user's model"
    return res, runs


def test_collapse_runs_each_model_once_per_check_input():
    model = _net()
    keys = [k["key"] for k in cp.list_keys(model, (torch.randn(1, 3, 8, 8),))]
    assert len(keys) == 2
    res, runs = _collapse(model, collapse=keys)
    assert res.report["activations"] and sum(a["collapsed"] for a in res.report["activations"]) == 2
    assert runs.double == 0   # the float64 second look runs only when float32 fails
    # user model 1 + input graph 3 + requested 3 + result 3 (example_inputs' runs are the shape propagations)
    assert runs.total <= 10, f"{runs.calls} calls + {runs.interpreted} interpreter runs"
    assert runs.interpreted <= 2


def test_nothing_collapsed_runs_the_requested_semantics_not_at_all():
    res, runs = _collapse(_net())   # no scores: only the exact clean-ups; requested == input graph
    assert not any(a["collapsed"] for a in res.report["activations"])
    assert runs.total <= 7, f"{runs.calls} calls + {runs.interpreted} interpreter runs"


def test_check_1_runs_each_model_on_example_inputs_only():
    model = _net()
    _, runs = _collapse(model, collapse=["relu"], check=1)
    # user model 1, input graph 1 (shape propagation), requested 1, result 1 (shape propagation)
    assert runs.total <= 4, f"{runs.calls} calls + {runs.interpreted} interpreter runs"


@pytest.mark.parametrize("where", ["bn", "conv"])
def test_channel_removal_runs_shapes_once_more_and_keeps_the_user_model(where):
    model = _chain_with_dead_channel(where)
    res, runs = _collapse(model, collapse=["5"])
    assert res.report["pruning"]["removed_channels"] == 1
    assert runs.total <= 11, f"{runs.calls} calls + {runs.interpreted} interpreter runs"


def test_no_constant_channel_source_skips_the_channel_graph():
    """Without an all-zero filter or a zero BatchNorm scale no channel can be constant: collapse() skips building
    the channel graph (fx_adapter._constant_source_possible), and removes nothing, as the graph would."""
    from collapse_passes.pruning import fx_adapter

    model = _chain_with_dead_channel(where="")
    assert not fx_adapter._constant_source_possible(fx.symbolic_trace(model))
    assert fx_adapter._constant_source_possible(fx.symbolic_trace(_chain_with_dead_channel("conv")))
    res, _ = _collapse(model, collapse=["5"])
    assert res.report["pruning"]["removed_channels"] == 0 and "not built" in res.report["pruning"]["channel_graph"]
    _, rep = fx_adapter.prune_module(model, torch.randn(2, 3, 8, 8))   # the public entry builds it: same answer
    assert rep["removed_channels"] == 0 and "channel_graph" not in rep
