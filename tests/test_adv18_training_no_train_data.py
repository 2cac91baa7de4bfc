"""Without train_data (a user's fine_tune; tlc / prelu score without data) the loop takes its example
input from val_data: it sizes the convs, so padding is relocated only where the merge planner merges the
chain, and it predicts speed-ups. It relocated every chain (a three-conv chain the planner refuses to
merge got conv1 padding 3: a larger first conv and nothing merged) and predicted nothing, without a word.
With neither, res.notes says so. Also: tlc scored with no batches at all (score_batches None) must run."""
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from collapse_passes.train import iterative_collapse  # noqa: E402


def _net():
    torch.manual_seed(0)
    layers, c = [], 3
    for _ in range(3):
        layers += [nn.Conv2d(c, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()]
        c = 8
    net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.uniform_(0.5, 1.5)   # tlc: ReLUs mostly on
    return net.eval()


def _pads(model):
    return [m.padding for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_val_data_sizes_the_convs_when_there_is_no_train_data():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 4, (16,), generator=g)
    kw = dict(method="tlc", fine_tune=lambda m: m, evaluate=lambda m: 1.0, max_rounds=2)
    with_train = iterative_collapse(_net(), train_data=(x, y), **kw)
    with_val = iterative_collapse(_net(), val_data=(x, y), **kw)
    neither = iterative_collapse(_net(), **kw)
    assert with_val.collapsed == with_train.collapsed == neither.collapsed and len(with_val.collapsed) == 2
    assert _pads(with_val.model) == _pads(with_train.model)
    assert with_val.predicted_speedup == pytest.approx(with_train.predicted_speedup)
    assert not with_val.notes
    # without any input the planner cannot be asked: every chain is relocated, and the result says so
    assert _pads(neither.model) != _pads(with_train.model) and neither.predicted_speedup is None
    assert any("no example input" in n for n in neither.notes)


def test_target_speedup_takes_its_example_from_val_data():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 4, (16,), generator=g)
    res = iterative_collapse(_net(), method="tlc", val_data=(x, y), fine_tune=lambda m: m,
                             evaluate=lambda m: 1.0, max_rounds=1, target_speedup=10.0)
    assert res.history and res.history[0]["predicted_speedup"] is not None
