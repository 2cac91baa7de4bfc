"""iterative_collapse on bad arguments and bad data: one CollapseError each, before any training
(NaN tolerances used to disable the accuracy check; numpy pairs, dict batches, float / 2-D /
out-of-range labels and wrong input shapes used to end in tracebacks from inside the loop)."""
import numpy as np
import pytest
import torch
from torch import nn

from collapse_passes.errors import CollapseError
from collapse_passes.train import iterative_collapse


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 5)).eval()


g = torch.Generator().manual_seed(0)
X = torch.randn(16, 3, 8, 8, generator=g)
Y = torch.randint(0, 5, (16,), generator=g)
BASE = dict(method="easier", train_data=(X, Y), val_data=(X, Y), max_rounds=1, steps_per_round=1, predict=False)


def _run(**kw):
    args = dict(BASE)
    args.update(kw)
    return iterative_collapse(_model(), **args)


@pytest.mark.parametrize("kw, says", [
    (dict(max_accuracy_drop=float("nan")), "max_accuracy_drop"),
    (dict(steps_per_round=-1), "steps_per_round"),
    (dict(pretrain_steps=-5), "pretrain_steps"),
    (dict(max_rounds=-1), "max_rounds"),
    (dict(patience=-1), "patience"),
    (dict(lr=-1.0), "lr"),
    (dict(score_batches=0), "score_batches"),
    (dict(method="prelu", fold_alpha=2.0), "fold_alpha"),
    (dict(lacoot_lambda=-0.1), "lacoot_lambda"),
    (dict(target_speedup=float("nan"), predict=True), "target_speedup"),
    (dict(target_speedup=0.0, predict=True), "target_speedup"),
    (dict(min_gain=-1.0, prefer_speedup=True), "min_gain"),
    (dict(train_data=(X, Y.float())), "labels"),
    (dict(train_data=(X, Y[:, None])), "labels"),
    (dict(val_data=(X, Y + 5)), "labels must lie in [0, 5)"),
    (dict(train_data=(X[:, :2], Y)), "fails on the first batch"),
    (dict(train_data=[{"x": X, "y": Y}]), "(inputs, labels) pair"),
    (dict(lacoot_lambda=0.1, blocks=["no.such.block"]), "no submodule 'no.such.block'"),
    (dict(fine_tune=lambda m: None), "fine_tune must return"),
    (dict(evaluate=lambda m: float("nan")), "finite"),
    (dict(evaluate=lambda m: "high"), "evaluate must return a number"),
])
def test_bad_argument_is_one_collapse_error(kw, says):
    with pytest.raises(CollapseError, match=None) as e:
        _run(**kw)
    assert says in str(e.value), str(e.value)


def test_numpy_pairs_are_taken_like_tensors():
    r = _run(train_data=(X.numpy(), Y.numpy()), val_data=(X.numpy(), Y.numpy()))
    t = _run()
    assert r.baseline_accuracy == t.baseline_accuracy
    assert r.collapsed == t.collapsed and r.accuracy == t.accuracy   # same batches, same training


def test_custom_loss_takes_other_targets():
    """With loss_fn= and evaluate= given, float targets are the user's business: no label check."""
    def loss(out, y):
        return ((out[:, 0] - y) ** 2).mean()

    r = _run(train_data=(X, Y.float()), loss_fn=loss, evaluate=lambda m: 0.5)
    assert r.baseline_accuracy == 0.5
