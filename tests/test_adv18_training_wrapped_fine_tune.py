"""A fine_tune that hands back a wrapper of the model (DataParallel / DDP, torch.compile: what accelerate
and other trainers return) is taken as the module it wraps.

Kept as returned, the next round's keys were the wrapper's: res.collapsed named `module.2`, no site of the
input model; with torch.compile the next round found no site, and the speed-up prediction failed on both
("DataParallel is not supported by ONNX exporter")."""
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from collapse_passes.train import iterative_collapse  # noqa: E402


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 4)).eval()


@pytest.mark.parametrize("wrap", [nn.DataParallel, torch.compile], ids=["DataParallel", "compile"])
def test_a_wrapper_returned_by_fine_tune_is_unwrapped(wrap):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 3, 8, 8, generator=g), torch.randint(0, 4, (32,), generator=g)
    res = iterative_collapse(_net(), method="easier", train_data=(x, y), evaluate=lambda m: 1.0, max_rounds=2,
                             fine_tune=lambda m: wrap(m))
    assert sorted(res.collapsed) == ["2", "4"]           # the input's keys, both rounds
    assert type(res.model) is nn.Sequential
    assert res.predicted_speedup is not None and not any("no predicted" in n for n in res.notes)
