"""torch_backend refuses a model compiled in training mode also when its BatchNorm has momentum=None.

A BatchNorm with momentum=None (a cumulative average; models/tv_init.calibrate_bn leaves every BatchNorm so) in
training mode graph-breaks on `float(self.num_batches_tracked)`: dynamo runs it eagerly between two graphs and
no graph the backend sees holds it. Before 2026-11-29 such a model (built, calibrated, `.train()`, compiled) ran
collapsed around batch statistics with no error, where the same model with momentum 0.1 was refused
(docs/torch.md section 3: a BatchNorm in training mode is refused with a CollapseError)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import collapse_passes as cp  # noqa: E402


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU()
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(self.act(self.bn(self.conv(x))))


@pytest.mark.parametrize("momentum", [None, 0.1])
def test_training_batchnorm_is_refused_whatever_its_momentum(momentum):
    torch.manual_seed(0)
    model = _Net().train()
    model.bn.momentum = momentum
    torch._dynamo.reset()
    backend = cp.torch_backend(collapse=["act"], inductor=False)
    with pytest.raises(Exception) as info:   # torch.compile wraps it: BackendCompilerFailed, the CollapseError inside
        torch.compile(model, backend=backend)(torch.randn(2, 3, 8, 8))
    err = info.value
    while err is not None and not isinstance(err, cp.CollapseError):
        err = err.__cause__ or getattr(err, "inner_exception", None)
    assert isinstance(err, cp.CollapseError), info.value
    assert "'bn'" in str(err) and "training mode" in str(err) and "model.eval()" in str(err)
    assert not any(r["collapsed"] for r in backend.reports)   # nothing was compiled collapsed


def test_eval_model_with_momentum_none_still_compiles():
    torch.manual_seed(0)
    model = _Net().eval()
    model.bn.momentum = None
    torch._dynamo.reset()
    backend = cp.torch_backend(collapse=["act"], inductor=False)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        got = torch.compile(model, backend=backend)(x)
        want = model.head(model.bn(model.conv(x)))   # the ReLU in its linear regime (identity)
    assert backend.reports and backend.reports[0]["collapsed"] == ["act"]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
