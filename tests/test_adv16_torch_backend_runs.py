"""The torch.compile backend's own work per graph: one real run of the input graph gives the shapes and the
check's base (ShapeProp ran in dynamo's fake mode before: a fake copy of the whole graph and a fake run, slower
than a real one, Swin-T 224: 0.6 s against 0.2 s), the requested semantics run only when something is
linearized (else they are the input graph), and a request that overflows to NaN/Inf where the input graph is
finite fails the check as in collapse() (matching NaNs compared equal: the backend compiled it as verified,
max abs 0, MobileNetV3-large with every activation collapsed)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import collapse_passes as cp  # noqa: E402
from collapse_passes.fx import api as fx_api  # noqa: E402


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.c2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c2(self.relu(self.bn(self.c1(x))))


def _net():
    torch.manual_seed(0)
    m = _Net()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 1.5)
    return m.eval()


class _Counts:
    def __init__(self, monkeypatch):
        self.fake_copies = self.runs = 0
        import torch._dynamo.utils as du

        real_copy, real_runs = du.deepcopy_to_fake_tensor, fx_api.run_outputs

        def fake_copy(*a, **k):
            self.fake_copies += 1
            return real_copy(*a, **k)

        def runs(model, feeds):
            self.runs += len(feeds)
            return real_runs(model, feeds)

        monkeypatch.setattr(du, "deepcopy_to_fake_tensor", fake_copy)
        monkeypatch.setattr(fx_api, "run_outputs", runs)


def _compile(model, x, **kw):
    torch._dynamo.reset()
    be = cp.torch_backend(inductor=False, **kw)
    y = torch.compile(model, backend=be)(x)
    return be, y


X = torch.randn(2, 3, 8, 8)


@pytest.mark.parametrize("keys, runs", [(["relu"], 2), ([], 1)])
def test_backend_runs_the_input_graph_for_real_once(monkeypatch, keys, runs):
    m = _net()
    counts = _Counts(monkeypatch)
    be, y = _compile(m, X, collapse=keys)
    assert be.reports[0]["verification"]["passed"]
    assert counts.fake_copies == 0, "the shape propagation ran a fake copy of the graph in dynamo's fake mode"
    # besides the input graph's shape run: the result, and the requested semantics when something is linearized
    assert counts.runs == runs, counts.runs
    if not keys:
        torch.testing.assert_close(y, m(X), rtol=1e-5, atol=1e-5)


class _Sqrt(nn.Module):
    """sqrt(relu(.)) is finite; with the ReLU linearized the negative inputs give NaN: nothing to verify."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.relu = nn.ReLU()

    def forward(self, x):
        return torch.sqrt(self.relu(self.fc(x)))


def test_backend_refuses_a_request_that_overflows_to_nan():
    torch.manual_seed(0)
    m = _Sqrt().eval()
    x = torch.randn(4, 6)
    with pytest.raises(Exception, match="NaN/Inf in .* where the input model's outputs are finite"):
        _compile(m, x, collapse=["relu"])
    with pytest.raises(cp.VerificationError):   # collapse() refuses it the same way
        cp.collapse(m, collapse=["relu"], example_inputs=(x,))


class _WritesInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.relu = nn.ReLU()

    def forward(self, x):
        x.mul_(2)
        return self.relu(self.conv(x))


def test_backend_shape_run_leaves_the_callers_input_alone():
    torch.manual_seed(0)
    m = _WritesInput().eval()
    x = torch.randn(1, 3, 4, 4)
    want = m(x.clone())
    given = x.clone()
    _, y = _compile(m, given, collapse=["relu"])
    torch.testing.assert_close(given, 2 * x)   # written once, by the compiled call itself
    torch.testing.assert_close(y, m.conv(2 * x))
    assert want.shape == y.shape


def test_backend_force_compiles_a_failed_check_with_a_warning():
    """force=True was accepted and ignored: the backend raised as without it. Now, as collapse(force=True), the
    graph is compiled and the failed check is in the report, with a warning."""
    torch.manual_seed(0)
    m = _Sqrt().eval()
    x = torch.randn(4, 6)
    with pytest.warns(UserWarning, match="compiled anyway"):
        be, y = _compile(m, x, collapse=["relu"], force=True)
    rep = be.reports[0]
    assert rep["collapsed"] == ["relu"] and not rep["verification"]["passed"]
    assert any("compiled anyway" in w for w in rep["warnings"])
    assert torch.isnan(y).any()   # the linearized graph: sqrt of the negative pre-activations
