"""Adversarial checks of the training loop (collapse_passes.train.iterative_collapse): label dtypes and
ranges past the first batch, empty / one-shot data, numpy scalars as arguments, train mode after a
user trainer, and the accuracy / roll-back computed independently. Tiny models, a few steps each."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from collapse_passes.errors import CollapseError
from collapse_passes.train import iterative_collapse

torch.set_num_threads(1)


def _net(bn: bool = True) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Conv2d(1, 4, 3, padding=1)] + ([nn.BatchNorm2d(4)] if bn else []) + [nn.ReLU(), nn.Flatten(),
                                                                                        nn.Linear(4 * 8 * 8, 10)]
    return nn.Sequential(*layers).eval()


def _data(n: int = 150):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


X, Y = _data()
KW = dict(steps_per_round=2, max_accuracy_drop=1.0, predict=False)


def _loader(x, y, bs=32):
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=bs)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
@pytest.mark.parametrize("as_loader", [False, True])
def test_integer_labels_other_than_int64_train(dtype, as_loader):
    """Cross entropy rejects int32 / int16 targets: the default trainer casts class labels to int64."""
    y = Y.to(dtype)
    data = _loader(X, y) if as_loader else (X, y)
    res = iterative_collapse(_net(), "easier", data, data, **KW)
    assert res.collapsed == ["2"]


@pytest.mark.parametrize("bad", [10, -1])
@pytest.mark.parametrize("which", ["train_data", "val_data"])
@pytest.mark.parametrize("as_loader", [False, True])
def test_label_out_of_range_after_the_first_batch_is_one_error(bad, which, as_loader):
    """Only the first batch used to be checked: train -> IndexError traceback, val -> counted wrong silently."""
    y = Y.clone()
    y[130] = bad                      # past the first batch (64 for tensors, 32 for the loader)
    good, wrong = (X, Y), (X, y)
    if as_loader:
        good, wrong = _loader(*good), _loader(*wrong)
    tr, va = (wrong, good) if which == "train_data" else (good, wrong)
    with pytest.raises(CollapseError, match=rf"{which}: labels must lie in \[0, 10\)"):
        iterative_collapse(_net(), "easier", tr, va, steps_per_round=20, max_accuracy_drop=1.0, predict=False)


def test_empty_train_data_is_one_error():
    with pytest.raises(CollapseError, match="train_data yields no batches"):
        iterative_collapse(_net(), "easier", (X[:0], Y[:0]), (X, Y), **KW)


def test_one_shot_generator_is_refused_with_a_way_out():
    gen = ((X[i:i + 32], Y[i:i + 32]) for i in range(0, len(X), 32))
    with pytest.raises(CollapseError, match="one-shot iterator.*DataLoader"):
        iterative_collapse(_net(), "easier", gen, (X, Y), **KW)


def test_one_shot_generator_still_works_with_a_user_trainer():
    """With fine_tune= the loop reads train_data once (example input, scoring batches): a generator is fine."""
    gen = ((X[i:i + 32], Y[i:i + 32]) for i in range(0, len(X), 32))
    res = iterative_collapse(_net(), "easier", gen, (X, Y), fine_tune=lambda m: m, max_accuracy_drop=1.0,
                             predict=False)
    assert res.collapsed == ["2"]


@pytest.mark.parametrize("kw", [dict(steps_per_round=2.0), dict(steps_per_round=np.int64(2)),
                                dict(score_batches=2.0), dict(max_accuracy_drop=np.float32(1.0)),
                                dict(method="prelu", pretrain_steps=2.0, max_rounds=np.int32(0))])
def test_numpy_scalars_and_integral_floats_are_numbers(kw):
    """np.int64 / np.float32 were refused ("must be >= 0, got np.float32(1.0)"); 2.0 passed the check and
    then crashed itertools.islice."""
    kw = dict(kw)
    method = kw.pop("method", "easier")
    args = {**KW, **kw}
    res = iterative_collapse(_net(), method, (X, Y), (X, Y), **args)
    assert isinstance(res.collapsed, list)


def test_user_trainer_in_pretraining_leaves_the_result_in_eval_mode():
    """prelu pretraining through a user fine_tune (no train_data) that leaves train mode: the returned model
    (BatchNorm) came back in train mode."""
    def fine_tune(m):
        m.train()
        opt = torch.optim.SGD(m.parameters(), lr=0.01)
        loss = F.cross_entropy(m(X[:32]), Y[:32])
        opt.zero_grad()
        loss.backward()
        opt.step()
        return m

    modes = []

    def evaluate(m):
        modes.append(m.training)
        return float((m(X).argmax(1) == Y).float().mean())

    res = iterative_collapse(_net(), "prelu", None, None, fine_tune=fine_tune, evaluate=evaluate,
                             pretrain_steps=1, max_rounds=0, max_accuracy_drop=1.0)
    assert not any(m.training for m in res.model.modules())
    assert not any(modes)


def test_accuracy_and_rollback_checked_independently():
    """max_accuracy_drop=0 and no fine-tuning: every round either keeps the accuracy (computed here, not
    by the loop) or is rolled back, and the returned model is the last accepted one, in eval mode; the
    user's model and its parameters are untouched."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                          nn.Linear(16, 3))
    g = torch.Generator().manual_seed(2)
    y = torch.randint(0, 3, (120,), generator=g)
    x = torch.randn(3, 6, generator=g)[y] * 2 + torch.randn(120, 6, generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(150):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def acc(m):
        with torch.no_grad():
            return float((m.eval()(x).argmax(1) == y).float().mean())

    base = acc(model)
    res = iterative_collapse(model, "easier", (x, y), (x, y), steps_per_round=0, max_accuracy_drop=0.0,
                             predict=False, patience=5)
    assert res.baseline_accuracy == pytest.approx(base)
    assert res.accuracy == pytest.approx(acc(res.model))
    assert acc(res.model) >= base - 1e-9
    for row in res.history:
        if row["action"] == "collapsed":
            assert row["accuracy"] >= base - 1e-9
        else:
            assert row["accuracy"] < base
    assert not res.model.training
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_planner_prices_a_model_on_the_gpu():
    """planner_accept read conv weights with .numpy(), which fails on CUDA tensors."""
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(256, 10)).cuda().eval()
    res = iterative_collapse(net, "easier", (X.cuda(), Y.cuda()), (X.cuda(), Y.cuda()), steps_per_round=2,
                             max_accuracy_drop=1.0)
    assert res.collapsed


def _tiny_onnx(tmp_path):
    from models.export import export_onnx

    net = _net()
    path = tmp_path / "tiny.onnx"
    export_onnx(net, str(path), (1, 1, 8, 8))      # static batch 1: --eval runs one sample per batch
    return net, path


def test_eval_accuracy_matches_torch_int32_labels_pass_and_extra_arrays_are_named(tmp_path):
    """--eval (API eval_data): top-1 equals the torch model's, computed here; int32 labels are fine. An array
    naming no model input was ignored until 2026-11-29; it is refused by name now, as in --calib data (a misspelt
    input name went unseen: tests/test_adv21_badinput_npz_unused.py)."""
    import onnx

    from collapse_passes import collapse

    net, path = _tiny_onnx(tmp_path)
    x, y = X[:40], Y[:40]
    with torch.no_grad():
        want = float((net(x).argmax(1) == y).float().mean())
    data = {"input": x.numpy(), "labels": y.numpy().astype(np.int32)}
    res = collapse(onnx.load(str(path)), collapse=["2"], eval_data=data)
    acc = res.report["accuracy"]
    assert acc["samples"] == 40
    assert acc["original"] == pytest.approx(want)
    with pytest.raises(CollapseError, match="'extra' name no model input"):
        collapse(onnx.load(str(path)), collapse=["2"], eval_data={**data, "extra": np.zeros(3)})


def test_eval_label_range_error_names_all_labels(tmp_path):
    """The error named the range of the offending batch (one sample here: "-1..-1"), not of the labels."""
    import onnx

    from collapse_passes import collapse

    _, path = _tiny_onnx(tmp_path)
    y = Y[:40].numpy().copy()
    y[0] = -1
    with pytest.raises(CollapseError, match=rf"got -1\.\.{int(y.max())}$"):
        collapse(onnx.load(str(path)), collapse=["2"], eval_data={"input": X[:40].numpy(), "labels": y})
