"""Activations called in the root forward, outside any module (x.relu(), F.relu(x), x * torch.sigmoid(x)):
their node names differ between symbolic_trace, torch.export and the two ONNX exporters, so each also gets
the key `<kind>():i` (the i-th root call of that kind), the same in all of them; collapsing by it picks the
same site everywhere."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import collapse_passes as cp  # noqa: E402
from tests.conftest import export_quiet, near_identity_convs  # noqa: E402


class Root(nn.Module):
    def __init__(self, linear=()):
        super().__init__()
        self.linear = set(linear)
        self.c = nn.ModuleList(nn.Conv2d(3, 3, 1) for _ in range(4))
        self.act = nn.ReLU()          # a module: keyed by its path, not by a root key

    def forward(self, x):
        x = self.c[0](x)
        x = x if "relu():0" in self.linear else x.relu()
        x = self.c[1](x)
        x = x if "relu():1" in self.linear else F.relu(x)
        x = self.act(self.c[2](x))
        x = x if "silu()" in self.linear else x * torch.sigmoid(x)
        return self.c[3](x)


ROOT_KEYS = {"relu():0": "relu", "relu():1": "relu", "relu()": "relu", "silu()": "silu"}


def _model():
    torch.manual_seed(0)
    return near_identity_convs(Root().eval()), 2 * torch.randn(1, 3, 5, 5)


def _root_keys(rows):
    return {k: r["kind"] for r in rows for k in r["keys"] if "()" in k}


def _reference(model, keys):
    ref = Root(keys).eval()
    ref.load_state_dict(model.state_dict())
    return ref


def test_root_calls_are_keyed_by_kind_and_call_index_in_fx_and_torch_export():
    model, x = _model()
    for inp in (model, torch.fx.symbolic_trace(model), torch.export.export(model, (x,))):
        rows = cp.list_keys(inp, (x,)) if not isinstance(inp, torch.export.ExportedProgram) else cp.list_keys(inp)
        assert _root_keys(rows) == ROOT_KEYS
        assert [r["key"] for r in rows if r["module"]] == ["act"]


@pytest.mark.parametrize("key", ["relu():1", "silu()"])
def test_collapse_by_a_root_key_equals_the_reference(key):
    model, x = _model()
    res = cp.collapse(model, collapse=[key], example_inputs=(x,), merge=False)
    assert res.report["before"]["activations"] - res.report["after"]["activations"] == 1
    ref = _reference(model, [key])
    with torch.no_grad():
        out, want = res.model(x), ref(x)
        assert float((out - want).abs().max()) <= 1e-4 * float(want.abs().max()) + 1e-6
        assert not torch.allclose(model(x), want, atol=1e-4)


def test_the_bare_root_key_names_every_root_call_of_that_kind():
    model, x = _model()
    res = cp.collapse(model, collapse=["relu()"], example_inputs=(x,), merge=False)
    ref = _reference(model, ["relu():0", "relu():1"])
    with torch.no_grad():
        assert torch.allclose(res.model(x), ref(x), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("dynamo", [False, True])
def test_root_keys_are_the_same_on_either_onnx_export_and_collapse_the_same_site(tmp_path, dynamo):
    import onnx

    from collapse_passes.core.runtime import run as ort_run

    model, x = _model()
    path = export_quiet(model, tmp_path / "r.onnx", tuple(x.shape), dynamo)
    assert _root_keys(cp.list_keys(path)) == ROOT_KEYS
    keys = ["relu():1", "silu()"]
    got = ort_run(cp.collapse(path, collapse=keys).model, [{onnx.load(path).graph.input[0].name: x.numpy()}])[0][0][0]
    with torch.no_grad():
        np.testing.assert_allclose(got, _reference(model, keys)(x).numpy(), rtol=1e-4, atol=1e-5)


def test_a_dynamo_graph_gets_no_root_keys():
    """A graph break may split the root forward: the i-th root relu of one graph is not the model's i-th."""
    torch._dynamo.reset()
    model, x = _model()
    backend = cp.torch_backend(collapse=["relu():1"], inductor=False)
    compiled = torch.compile(model, backend=backend)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))
    assert backend.reports[0]["collapsed"] == [] and backend.unmatched_keys() == ["relu():1"]
    torch._dynamo.reset()
