"""collapse() of a torch model runs the common prefix of the input and the request once per check input, and
propagates shapes without torch's symbolic-shape machinery (2026-11-30, docs/pass_runtime.md).

- fx/shared_prefix.py: on a random check input the request runs only from the first op it changed, from copies of
  the input run's values; a collapse of a late activation runs fewer convs (counted), with the same report and
  result as whole runs. In-place writes (a ReLU(inplace=True) the request lost, x.add_ in the request) make the
  planner run more, never wrong values: each case is compared with the whole run, bit for bit.
- fx/graph.RealShapeProp: the same node metadata as torch's ShapeProp, without importing sympy (~1 s of a fresh
  process's first collapse()).
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
from hypothesis import given, settings, strategies as st  # noqa: E402
from torch import fx, nn  # noqa: E402

import collapse_passes as cp  # noqa: E402
from collapse_passes.fx.graph import copy_sharing_weights, real_tensor_meta  # noqa: E402
from collapse_passes.fx.passes import LinearizeActivations  # noqa: E402
from collapse_passes.fx.shared_prefix import SharedPrefix, run_keeping  # noqa: E402


class _Deep(nn.Module):
    """Six conv-BN-ReLU stages (in-place ReLUs, as torchvision's), pool, linear: a late collapse shares five."""

    def __init__(self):
        super().__init__()
        chans = [3, 8, 8, 8, 8, 8, 8]
        self.stages = nn.Sequential(*[nn.Sequential(nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b),
                                                    nn.ReLU(inplace=True)) for a, b in zip(chans, chans[1:])])
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.stages(x), 1), 1))


def _deep() -> nn.Module:
    torch.manual_seed(0)
    m = _Deep()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 1.5)
    return m.eval()


class _Convs:
    """Counts conv2d calls (every conv of every run: the user's model, graphs, interpreter runs)."""

    def __enter__(self):
        self.n = 0
        self._f = nn.functional.conv2d

        def counted(*a, **k):
            self.n += 1
            return self._f(*a, **k)

        nn.functional.conv2d = counted
        return self

    def __exit__(self, *exc):
        nn.functional.conv2d = self._f


def test_late_collapse_runs_the_shared_prefix_once_per_check_input():
    """check=3, the last stage's ReLU collapsed: the user's model 6 convs (trace check), the input graph 3 x 6, the
    result 3 x 6, the request 6 on example_inputs (its shape run kept nothing) and 1 on each random input = 50.
    Whole runs of the request were 3 x 6: 60 in all."""
    model = _deep()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with _Convs() as convs:
        res = cp.collapse(model, collapse=["stages.5.2"], example_inputs=(x,))
    assert res.passed and sum(a["collapsed"] for a in res.report["activations"]) == 1
    assert convs.n <= 50, f"{convs.n} conv2d calls"


def _plan_and_compare(model: nn.Module, keys, x):
    gm = model if isinstance(model, fx.GraphModule) else fx.symbolic_trace(model)
    base = copy_sharing_weights(gm)
    LinearizeActivations(keys)(gm)
    plan = SharedPrefix(base, gm)
    with torch.no_grad():
        want_base, want = base(x.clone()), gm(x.clone())
    got_base, kept = run_keeping(base, (x.clone(),), [plan])
    got = plan.run_model((x.clone(),), kept[0]) if plan.useful else want
    assert torch.equal(got_base, want_base)
    assert torch.equal(got, want), "the request's run from the kept values computes other numbers than a whole run"
    return plan


def test_request_starts_from_values_kept_before_an_inplace_relu_it_lost():
    """The input's ReLU(inplace=True) writes the BatchNorm output the request's next conv reads: the kept copy is
    taken before that write."""
    model = _deep()
    x = torch.randn(2, 3, 8, 8)
    plan = _plan_and_compare(model, ["stages.4.2"], x)
    assert plan.useful
    shared = {n.target for n in plan.shared if n.op == "call_module"}
    assert {"stages.0.0", "stages.4.0", "stages.4.1"} <= shared and "stages.5.0" not in shared


class _WriteAfterLinearized(nn.Module):
    """relu_ on a in the input (the collapsed key), then conv2 reads a: in the input conv2 reads relu'd values, in
    the request raw ones, so conv2 is not shared although its node reads the same argument."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        a = self.conv1(x)
        a.relu_()
        return self.conv2(a)


class _RequestWritesKept(nn.Module):
    """The request writes a kept value in place (a.add_) and reads it again: kept values are copies, and a plan
    whose model writes one is not used (copies of views would not alias as the originals do)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        a = self.conv1(x)
        b = torch.relu(a)
        a.add_(1.0)
        return self.conv2(b) + a


def test_inplace_write_in_the_input_makes_its_reader_unshared():
    plan = _plan_and_compare(_WriteAfterLinearized().eval(), ["relu_"], torch.randn(1, 3, 4, 4))
    assert not any(n.op == "call_module" and n.target == "conv2" for n in plan.shared)


def test_request_writing_a_kept_value_runs_whole():
    plan = _plan_and_compare(_RequestWritesKept().eval(), ["relu"], torch.randn(1, 3, 4, 4))
    assert not plan.useful


def test_collapse_with_inplace_writes_matches_whole_runs():
    """End to end: the verification numbers are those of whole runs (requested == result exactly here)."""
    for model, key in ((_WriteAfterLinearized().eval(), "relu_"), (_RequestWritesKept().eval(), "relu")):
        torch.manual_seed(0)
        x = torch.randn(1, 3, 4, 4)
        res = cp.collapse(model, collapse=[key], example_inputs=(x,), prune=False)
        assert res.passed
        with torch.no_grad():
            ref = LinearizeActivations([key])(copy_sharing_weights(fx.symbolic_trace(model))).graph_module
            assert torch.allclose(res.model(x.clone()), ref(x.clone()), rtol=1e-5, atol=1e-6)


def test_shape_propagation_imports_no_sympy():
    """A fresh process: collapse() of a traced model leaves torch.fx.experimental.symbolic_shapes (and sympy)
    unimported; torch's ShapeProp imported them on its first node."""
    code = ("import sys, torch, collapse_passes as cp\n"
            "from torch import nn\n"
            "m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()\n"
            "r = cp.collapse(m, collapse=['2'], example_inputs=(torch.randn(1, 3, 8, 8),))\n"
            "import json; print(json.dumps([r.passed, 'torch.fx.experimental.symbolic_shapes' in sys.modules]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    passed, imported = json.loads(out.stdout.strip().splitlines()[-1])
    assert passed and not imported


_FORMATS = st.sampled_from(["contiguous", "channels_last", "permuted", "sliced", "expanded"])


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(0, 3), min_size=0, max_size=5), how=_FORMATS, dtype=st.sampled_from(
    [torch.float32, torch.float64, torch.int64, torch.bool]))
def test_real_tensor_meta_is_shapeprops(shape, how, dtype):
    from torch.fx.passes.shape_prop import _extract_tensor_metadata

    t = torch.zeros(shape, dtype=dtype)
    if how == "channels_last" and t.dim() in (4, 5):
        t = t.to(memory_format=torch.channels_last if t.dim() == 4 else torch.channels_last_3d)
    elif how == "permuted" and t.dim() > 1:
        t = t.permute(*range(t.dim() - 1, -1, -1))
    elif how == "sliced" and t.dim() and t.shape[-1] > 1:
        t = t[..., ::2]
    elif how == "expanded" and t.dim() and t.shape[0] == 1:
        t = t.expand(3, *t.shape[1:])
    assert real_tensor_meta(t) == _extract_tensor_metadata(t)


class _FilledMask(nn.Module):
    """A mask made and written in place through views (x.narrow(...).fill_, x[...].fill_) before the collapsed ReLU's
    reader uses it, as torchvision's Swin fills its attention masks: the kept mask must hold the writes."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        a = self.conv1(x)
        mask = a.new_zeros(a.shape)
        mask.narrow(1, 0, 2).fill_(1.0)
        mask[:, 2:].fill_(-1.0)
        return self.conv2(torch.relu(a)) * mask


def test_mask_written_in_place_by_shared_ops_is_copied_after_the_writes():
    plan = _plan_and_compare(_FilledMask().eval(), ["relu"], torch.randn(1, 3, 4, 4))
    assert plan.useful and {n.name for n in plan.late} == {"new_zeros"}


def test_setitem_on_a_kept_value_is_a_write():
    """x[:, :2] = 1 (operator.setitem, as torch.export and hand-built graphs write it) writes in place although
    fx/graph.mutates does not say so: the kept value is copied after it."""
    import operator

    g = fx.Graph()
    x = g.placeholder("x")
    mask = g.call_function(torch.zeros_like, (x,))
    g.call_function(operator.setitem, (mask, (slice(None), slice(0, 2)), 1.0))
    g.output(g.call_function(operator.mul, (g.call_function(torch.relu, (x,)), mask)))
    plan = _plan_and_compare(fx.GraphModule(nn.Module(), g), ["relu"], torch.randn(1, 3, 4, 4))
    assert plan.useful and {n.name for n in plan.late} == {"zeros_like"}
