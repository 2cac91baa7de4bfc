"""iterative_collapse on a model that takes its inputs as one structured argument (a tuple or a dict).

The loop calls model(inputs) everywhere (probe, training, accuracy, LaCoOT), but scoring spread a tuple
over forward's arguments (CollapseError "pass the inputs only" the user could not act on), and the
speed-up predictor and the padding relocation sliced the inputs as a tensor (AttributeError traceback:
'tuple' object has no attribute 'detach'). A model of several positional arguments is one line saying
how to wrap it."""
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from collapse_passes.errors import CollapseError  # noqa: E402
from collapse_passes.train import iterative_collapse  # noqa: E402


class _Body(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                               nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.b, self.r, self.f = nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 4)

    def run(self, x, z):
        return self.f(self.a(x).mean((2, 3)) + self.r(self.b(z)))


class TupleNet(_Body):
    def forward(self, xs):
        x, z = xs   # unpacked, not run(*xs): torch.fx traces this (the padding relocation needs the trace)
        return self.run(x, z)


class DictNet(_Body):
    def forward(self, d):
        return self.run(d["image"], d["meta"])


class TwoArgNet(_Body):
    def forward(self, x, z):
        return self.run(x, z)


def _data(wrap):
    g = torch.Generator().manual_seed(0)
    x, z, y = torch.randn(64, 3, 16, 16, generator=g), torch.randn(64, 5, generator=g), torch.randint(0, 4, (64,), generator=g)
    return [(wrap(x[i:i + 16], z[i:i + 16]), y[i:i + 16]) for i in range(0, 64, 16)]


@pytest.mark.parametrize("net,wrap", [(TupleNet, lambda x, z: (x, z)),
                                      (DictNet, lambda x, z: {"image": x, "meta": z})], ids=["tuple", "dict"])
def test_structured_inputs_are_scored_and_priced(net, wrap):
    torch.manual_seed(0)
    model = net().eval()
    batches = _data(wrap)
    res = iterative_collapse(model, method="easier", train_data=batches, val_data=batches, max_rounds=2,
                             steps_per_round=1, max_accuracy_drop=1.0)
    assert len(res.collapsed) == 2
    assert res.predicted_speedup is not None and not res.notes   # priced: the export took the structured input
    assert all(h["predicted_speedup"] is not None for h in res.history)


def test_tuple_input_target_speedup_merges_the_conv_chain():
    torch.manual_seed(0)
    batches = _data(lambda x, z: (x, z))
    res = iterative_collapse(TupleNet().eval(), method="easier", train_data=batches, val_data=batches,
                             max_rounds=3, steps_per_round=1, max_accuracy_drop=1.0, target_speedup=1.1)
    assert "a.2" in res.collapsed and res.predicted_speedup >= 1.1


def test_several_arguments_is_one_line_saying_how_to_wrap():
    batches = _data(lambda x, z: (x, z))
    with pytest.raises(CollapseError, match=r"one argument.*forward\(self, xs\)"):
        iterative_collapse(TwoArgNet().eval(), method="easier", train_data=batches, val_data=batches, max_rounds=1)


def test_one_batch_of_structured_inputs_counts_its_samples():
    """Scoring counted a tuple batch as one sample ("hold 1 sample(s), at least 2 needed")."""
    torch.manual_seed(0)
    batches = _data(lambda x, z: (x, z))[:1]
    res = iterative_collapse(TupleNet().eval(), method="easier", train_data=batches, val_data=batches,
                             max_rounds=1, steps_per_round=1, max_accuracy_drop=1.0, predict=False)
    assert len(res.collapsed) == 1
