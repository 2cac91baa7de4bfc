"""TVM integration: the Relax-level LinearizeActivations pass is exact."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.tvm

tvm = pytest.importorskip("tvm")
pytest.importorskip("onnxruntime")

from tvm_integration import compile as tc  # noqa: E402
from tvm_integration.relax_pass import (  # noqa: E402
    LinearizeActivations,
    collapse_sequence,
    list_activations,
)
from tvm_integration.targets import resolve_target  # noqa: E402
from tvm_integration.testing import ACTIVATION_CHAIN_KINDS, activation_chain_onnx  # noqa: E402


@pytest.fixture(scope="module")
def target():
    return resolve_target("cpu")[0]


@pytest.fixture(scope="module")
def chain():
    model, inputs = activation_chain_onnx()
    return model, inputs, tc.import_onnx(model)


def _ops(mod) -> str:
    return mod["main"].script()


def test_lists_activations_in_dataflow_order(chain):
    _, _, mod = chain
    sites = list_activations(mod)
    assert tuple(s.kind for s in sites) == ACTIVATION_CHAIN_KINDS
    assert [s.index for s in sites] == list(range(len(ACTIVATION_CHAIN_KINDS)))
    assert all(s.function == "main" for s in sites)


@pytest.mark.parametrize(
    "selection, dropped",
    [
        ([0], (0,)),
        ([1, 3], (1, 3)),
        ("swish", (2,)),
        ([-1], (4,)),
        (None, (0, 1, 2, 3, 4)),
    ],
)
def test_linearized_module_equals_onnx_without_those_activations(chain, target, selection, dropped):
    model, inputs, mod = chain
    new_mod = collapse_sequence(selection)(mod)
    remaining = [s.kind for s in list_activations(new_mod)]
    assert remaining == [k for i, k in enumerate(ACTIVATION_CHAIN_KINDS) if i not in dropped]

    ref_model, _ = activation_chain_onnx(drop=dropped)
    got = tc.run(tc.build(new_mod, target), inputs)[0]
    ref_ort = tc.run_ort(ref_model, inputs)[0]
    ref_tvm = tc.run(tc.build(tc.import_onnx(ref_model), target), inputs)[0]
    # Exact up to float round-off: same ops, same weights, same order.
    np.testing.assert_allclose(got, ref_tvm, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got, ref_ort, rtol=1e-4, atol=1e-5)
    # And really different from the model with its activations.
    full = tc.run_ort(model, inputs)[0]
    assert not np.allclose(got, full, rtol=1e-3, atol=1e-3)


def test_swish_removal_leaves_no_dead_sigmoid(chain):
    _, _, mod = chain
    assert "R.sigmoid" in _ops(mod)
    new_mod = collapse_sequence("swish")(mod)
    assert "R.sigmoid" not in _ops(new_mod)
    assert "R.multiply" not in _ops(new_mod)


def test_clip_removal_drops_maximum_minimum_kernels(chain):
    _, _, mod = chain
    new_mod = collapse_sequence(["relu6"])(mod)
    names = {gv.name_hint for gv in new_mod.functions.keys()}
    assert not any(n.startswith("maximum") or n.startswith("minimum") for n in names)


def test_selection_by_predicate_and_var_name(chain):
    _, _, mod = chain
    sites = list_activations(mod)
    by_pred = LinearizeActivations(lambda s: s.kind in ("relu", "prelu"))(mod)
    assert [s.kind for s in list_activations(collapse_sequence([])(by_pred))] == [
        "leakyrelu", "swish", "relu6"
    ]
    by_name = collapse_sequence(sites[1].var_name)(mod)
    assert "leakyrelu" not in [s.kind for s in list_activations(by_name)]


def test_out_of_range_index_raises(chain):
    _, _, mod = chain
    with pytest.raises(IndexError, match="5 activation"):
        LinearizeActivations([7])(mod)
    # strict=False ignores it
    out = LinearizeActivations([7], strict=False)(mod)
    assert len(list_activations(out)) == 5


def test_input_module_is_not_modified(chain):
    _, _, mod = chain
    before = _ops(mod)
    collapse_sequence(None)(mod)
    assert _ops(mod) == before


def test_relax_ops_from_exported_program(target):
    """gelu / silu / relu6 as produced by the torch.export importer."""
    torch = pytest.importorskip("torch")
    from torch import nn

    torch.manual_seed(0)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1 = nn.Linear(6, 6)
            self.l2 = nn.Linear(6, 6)
            self.l3 = nn.Linear(6, 6)

        def forward(self, x):
            return self.l3(nn.functional.relu6(self.l2(nn.functional.silu(nn.functional.gelu(self.l1(x))))))

    class Linear(nn.Module):  # same weights, no activations
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m.l3(self.m.l2(self.m.l1(x)))

    m = M().eval()
    x = torch.randn(2, 6) * 4
    ep = torch.export.export(m, (x,))
    mod = tc.import_exported_program(ep)
    kinds = [s.kind for s in list_activations(mod)]
    # torch.export's decomposition turns SiLU into x * sigmoid(x): detected as "swish".
    assert kinds == ["gelu", "swish", "relu6"]
    plain = [s.kind for s in list_activations(tc.import_exported_program(ep, run_ep_decomposition=False))]
    assert plain == ["gelu", "silu", "relu6"]
    new_mod = collapse_sequence(None)(mod)
    assert list_activations(new_mod) == []
    got = tc.run(tc.build(new_mod, target), {"x": x.numpy()})[0]
    with torch.no_grad():
        ref = Linear(m)(x).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
