"""torch_backend(collapse=[...]) with a key that names no activation: one warning, naming it, once every
graph of a forward has been compiled (a graph break may put a key in a later graph: no false alarm)."""
from __future__ import annotations

import copy
import warnings

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import collapse_passes as cp  # noqa: E402


class TwoGraphs(nn.Module):
    """A graph break between two activations: dynamo compiles two graphs, a1 in the first, a2 in the second."""

    def __init__(self, brk=True):
        super().__init__()
        self.brk = brk
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1)
        self.a1, self.a2 = nn.ReLU(), nn.ReLU()

    def forward(self, x):
        h = self.a1(self.c1(x))
        if self.brk:
            torch._dynamo.graph_break()
        return self.c3(self.a2(self.c2(h)))


def _calls(compiled, x, n):
    """The warnings of each of n calls."""
    out = []
    for _ in range(n):
        with warnings.catch_warnings(record=True) as w, torch.no_grad():
            warnings.simplefilter("always")
            compiled(x)
        out.append([str(m.message) for m in w if "torch_backend" in str(m.message)])
    return out


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_a_key_of_the_second_graph_is_applied_there_without_a_warning():
    torch.manual_seed(0)
    model, x = TwoGraphs().eval(), torch.randn(1, 3, 6, 6)
    backend = cp.torch_backend(collapse=["a2"], inductor=False)
    compiled = torch.compile(copy.deepcopy(model), backend=backend)
    assert _calls(compiled, x, 3) == [[], [], []]
    assert len(backend.reports) == 2
    assert [r["collapsed"] for r in backend.reports] == [[], ["a2"]]
    ref = copy.deepcopy(model)
    ref.a2 = nn.Identity()
    with torch.no_grad():
        assert torch.allclose(compiled(x), ref(x), rtol=1e-4, atol=1e-5)
    assert backend.unmatched_keys() == []


@pytest.mark.parametrize("brk", [False, True])
def test_a_key_matching_no_graph_warns_once_naming_it(brk):
    torch.manual_seed(0)
    model, x = TwoGraphs(brk).eval(), torch.randn(1, 3, 6, 6)
    backend = cp.torch_backend(collapse=["a2", "a22", "typo"], inductor=False)
    compiled = torch.compile(copy.deepcopy(model), backend=backend)
    first, second, third = _calls(compiled, x, 3)
    assert first == [] and third == []
    (msg,) = second
    assert "'a22'" in msg and "'typo'" in msg and "'a2'" not in msg.split(";")[0]
    assert "a2" in msg.split(";")[1] and "\n" not in msg          # the nearest valid keys, one line
    assert len(backend.reports) == 1 + brk
    assert backend.unmatched_keys() == ["a22", "typo"]


def test_collapse_given_as_one_string_is_a_list_of_keys():
    torch.manual_seed(0)
    model, x = TwoGraphs(False).eval(), torch.randn(1, 3, 6, 6)
    backend = cp.torch_backend(collapse="a1, a2", inductor=False)
    compiled = torch.compile(copy.deepcopy(model), backend=backend)
    assert _calls(compiled, x, 2) == [[], []]
    assert backend.reports[0]["collapsed"] == ["a1", "a2"]


@pytest.mark.slow
def test_the_key_check_passes_inductor_graphs_through():
    torch.manual_seed(0)
    model, x = TwoGraphs(False).eval(), torch.randn(1, 3, 6, 6)
    backend = cp.torch_backend(collapse=["a1", "typo"])
    compiled = torch.compile(copy.deepcopy(model), backend=backend)
    first, second = _calls(compiled, x, 2)
    assert first == [] and len(second) == 1 and "'typo'" in second[0]
    ref = copy.deepcopy(model)
    ref.a1 = nn.Identity()
    with torch.no_grad():
        assert torch.allclose(compiled(x), ref(x), rtol=1e-4, atol=1e-5)


def test_a_score_key_matching_no_graph_warns_too():
    torch.manual_seed(0)
    model, x = TwoGraphs(False).eval(), torch.randn(1, 3, 6, 6)
    backend = cp.torch_backend(scores={"a1": 0.0, "layer9.relu": 0.0}, threshold=0.1, inductor=False)
    compiled = torch.compile(copy.deepcopy(model), backend=backend)
    first, second = _calls(compiled, x, 2)
    assert first == [] and len(second) == 1 and "'layer9.relu'" in second[0] and "'a1'" not in second[0]
    assert backend.reports[0]["collapsed"] == ["a1"]
