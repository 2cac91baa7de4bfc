"""Validation data that is the training data is said in res.notes.

The loop's accuracy checks (and res.accuracy) are only a held-out measure when val_data is not what the loop
trains on; passing the same tensors (or slices of one tensor, or loaders over one dataset) gave no sign. The
first version of the benchmark learned this the hard way (docs/training.md: a 1-point tolerance on training
images let the test accuracy fall 0.5-1.5 points).
"""
import torch
from torch import nn

from collapse_passes.train import iterative_collapse

DL, TD = torch.utils.data.DataLoader, torch.utils.data.TensorDataset


def _said(tr, va) -> bool:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    res = iterative_collapse(m, "easier", tr, va, max_rounds=0, predict=False)
    return any("shares samples with train_data" in n for n in res.notes)


def test_shared_validation_data_is_noted():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(100, 4, generator=g), torch.randint(0, 3, (100,), generator=g)
    assert _said((x, y), (x, y))
    assert _said((x[:80], y[:80]), (x[60:], y[60:]))            # overlapping slices of one tensor
    assert _said((x.numpy(), y.numpy()), (x.numpy(), y.numpy()))
    ds = TD(x, y)
    assert _said(DL(ds, batch_size=16), DL(ds, batch_size=32))


def test_held_out_validation_data_is_not():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(100, 4, generator=g), torch.randint(0, 3, (100,), generator=g)
    assert not _said((x[:80], y[:80]), (x[80:], y[80:]))
    assert not _said(DL(TD(x[:80], y[:80]), batch_size=16), DL(TD(x[80:], y[80:]), batch_size=16))
