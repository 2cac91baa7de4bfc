"""collapse_passes.train.accuracy takes what val_data takes, an (inputs, labels) pair included.

Iterated as batches, a pair unpacked its inputs tensor ("too many values to unpack"), and with two samples
(or two numpy arrays) it scored sample 0 against sample 1 as labels without an error."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from collapse_passes.train import accuracy  # noqa: E402


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()


def _true(model, x, y):
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def test_pair_equals_list_of_one_batch():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(100, 3, 2, 2, generator=g), torch.randint(0, 3, (100,), generator=g)
    m = _net()
    want = _true(m, x, y)
    assert accuracy(m, [(x, y)]) == pytest.approx(want)
    assert accuracy(m, (x, y)) == pytest.approx(want)
    assert accuracy(m, (x.numpy(), y.numpy())) == pytest.approx(want)


def test_two_samples_are_two_samples():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 2, 2, generator=g)
    m = _net()
    pred = m(x).argmax(1)
    y = torch.stack([pred[0], (pred[1] + 1) % 3])   # one right, one wrong
    assert accuracy(m, (x, y)) == 0.5
    assert accuracy(m, (x.numpy(), np.asarray(y))) == 0.5
