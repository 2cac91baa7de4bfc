"""One-line errors of iterative_collapse that named the wrong thing.

- train_data given as a path ("data.npz"): iterated as characters, "each batch must be an (inputs, labels)
  pair, got str"; now: it takes data, load the file first.
- numpy arrays (float64 by default) for a float32 model: the torch error "expected scalar type Double but
  found Float" and "check the input shape and dtype"; now the dtypes and the cast are named.
- a tuple of three tensors (inputs, labels, weights): read as three batches, "got Tensor"; now named.
- one training sample: "module_scores: 1 calibration sample(s)" (the user gave no calibration data); now
  the batches scored are named as train_data.
"""
import numpy as np
import pytest
import torch
from torch import nn

from collapse_passes.errors import CollapseError
from collapse_passes.train import iterative_collapse


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


def _data(n=16):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_a_path_as_data_is_refused_with_the_way_out(tmp_path):
    p = tmp_path / "d.npz"
    x, y = _data()
    np.savez(p, input=x.numpy(), labels=y.numpy())
    for data in (str(p), p):
        with pytest.raises(CollapseError, match=r"train_data: a path .*numpy.load"):
            iterative_collapse(_net(), "easier", data, (x, y), predict=False)


def test_float64_arrays_name_the_cast():
    x, y = _data()
    with pytest.raises(CollapseError, match=r"inputs are float64 and the model's weights float32: cast"):
        iterative_collapse(_net(), "easier", (x.double().numpy(), y.numpy()), (x, y), predict=False)


def test_one_training_sample_names_train_data():
    x, y = _data()
    with pytest.raises(CollapseError, match=r"\(train_data\) hold 1 sample"):
        iterative_collapse(_net(), "easier", (x[:1], y[:1]), (x, y), max_rounds=1, predict=False)


def test_a_tuple_of_three_arrays_names_the_pair():
    x, y = _data()
    with pytest.raises(CollapseError, match=r"train_data: a tuple of 3 arrays; give \(inputs, labels\)"):
        iterative_collapse(_net(), "easier", (x, y, y.float()), (x, y), predict=False)
