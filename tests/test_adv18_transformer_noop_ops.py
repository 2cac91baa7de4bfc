"""Adversarial round 18 (H28): ops that compute nothing in a Swin export, and what the report credits.

torchvision's Swin pads each map to whole windows (`F.pad(x, (0, 0, 0, pad_r, 0, pad_b))`) and crops back
(`x[:, :h, :w, :]`). At 224 nothing needs padding: both exporters still write 15 Pads with pads 0, and the
TorchScript exporter 24 Slices that keep everything, which the torch.export-based one drops. They stayed in
every result, on the critical path (Swin-T: 393 ops on the TorchScript file, 371 on the other, for the same
collapse). Cleanup now drops them (cleanup.noop_slice_or_pad) and the stats count them nowhere, before or
after. The "before" of a model with run-time size arithmetic is counted on it folded, as the passes see it
(analysis.measured_graph): otherwise the clean-up's gains were the collapse's (TorchScript, dynamic batch:
1511 -> 474 ops for 12 GELUs, whose own gain is 24).
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import collapse_passes as cp
from collapse_passes.onnx.graph import to_graph
from collapse_passes.onnx.passes.cleanup import noop_slice_or_pad
from collapse_passes.onnx.shapes import with_shapes

torch = pytest.importorskip("torch")
nn = torch.nn

pytestmark = pytest.mark.filterwarnings("ignore")


def _one(op, inputs, consts, shape=("N", 4, 6)):
    inits = [onnx.numpy_helper.from_array(np.asarray(v, np.int64), k) for k, v in consts.items()]
    g = helper.make_graph([helper.make_node(op, inputs, ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return with_shapes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])).nodes[0]


BIG = 2 ** 63 - 1


@pytest.mark.parametrize("starts,ends,axes,steps,noop", [
    ([0, 0], [4, 6], [1, 2], [1, 1], True),
    ([0], [BIG], [0], [1], True),                # the dynamic batch, to the end
    ([0], [100], [-1], [1], True),               # past the end of a known dim
    ([-4], [4], [1], [1], True),                 # -4 is 0 on a dim of 4
    ([0], [5], [2], [1], False),                 # cuts one
    ([0], [-1], [2], [1], False),
    ([1], [6], [2], [1], False),
    ([-1], [-BIG], [2], [-1], False),            # reverses: same shape, other order
    ([0], [6], [2], [2], False),
    ([0], [7], [0], [1], False),                 # the dynamic batch up to 7: not sure to be all of it
])
def test_a_slice_is_a_noop_only_when_it_keeps_every_element_in_order(starts, ends, axes, steps, noop):
    node = _one("Slice", ["x", "s", "e", "a", "t"], {"s": starts, "e": ends, "a": axes, "t": steps})
    assert noop_slice_or_pad(node) is noop


def test_a_pad_is_a_noop_only_with_every_pad_zero():
    assert noop_slice_or_pad(_one("Pad", ["x", "p"], {"p": [0] * 6}))
    assert not noop_slice_or_pad(_one("Pad", ["x", "p"], {"p": [0, 0, 0, 0, 0, 1]}))


#: three stages on 56 x 56: stages 1-2 (14, 7) need no window padding (no-op Pads and crops; stage 1's second
#: block shifted), stage 3 (4) does; four stages on 112 x 112 (28, 14, 7 | 4) checked the same in twice the time
SIZE = 56


def _swin():
    from models.swin_tv import swin_t_tv

    torch.manual_seed(0)
    m = swin_t_tv(embed_dim=16, depths=(2, 1, 1), num_heads=(1, 2, 2), num_classes=10).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.LayerNorm):
                mod.weight.copy_(0.5 + torch.rand(mod.weight.shape, generator=g))
                mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))
    return m


@pytest.fixture(scope="module")
def swin_results(tmp_path_factory):
    """SIZE x SIZE: stages 1-2 need no window padding (no-op Pads and crops), stage 3 does."""
    from models.export import export_onnx

    d = tmp_path_factory.mktemp("swin_noop")
    m = _swin()
    gelus = [n for n, mod in m.named_modules() if isinstance(mod, nn.GELU)]
    out = {}
    for name, kw in {"ts": dict(dynamo=False), "dynamo": dict(dynamo=True),
                     "ts_batch": dict(dynamo=False, dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})}.items():
        path = export_onnx(m, d / f"{name}.onnx", (1, 3, SIZE, SIZE), **kw)
        out[name] = (path, cp.collapse(path, collapse=gelus))
    return m, gelus, out


def test_no_noop_slice_or_pad_is_left_and_the_result_is_the_request(swin_results):
    m, gelus, out = swin_results
    x = np.random.default_rng(0).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
    ref = _reference(m, gelus, x)
    for name, (_, res) in out.items():
        assert res.passed, name
        g = with_shapes(res.model)
        assert not [n.name for n in g.nodes if noop_slice_or_pad(n)], name
        assert any(n.op == "Pad" for n in g.nodes), name   # stage 3's real padding stays
        from collapse_passes.core import runtime

        got = runtime.session(res.model).run(None, {"input": x})[0]
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def _reference(m, gelus, x):
    import copy

    r = copy.deepcopy(m).double()
    for k in gelus:
        parent, _, attr = k.rpartition(".")
        setattr(r.get_submodule(parent), attr, nn.Identity())
    with torch.no_grad():
        return r(torch.from_numpy(x).double()).numpy()


def test_the_report_credits_the_collapse_with_its_own_gain_on_every_export(swin_results):
    """Each collapsed GELU takes two ops off the path (itself and fc2, merged into fc1); the exporters agree."""
    _, gelus, out = swin_results
    gains = {name: r.report["before"]["depth_ops"] - r.report["after"]["depth_ops"] for name, (_, r) in out.items()}
    assert gains == {name: 2 * len(gelus) for name in out}, gains
    depths = {name: r.report["after"]["depth_ops"] for name, (_, r) in out.items()}
    assert abs(depths["ts"] - depths["dynamo"]) <= 2, depths   # GlobalAveragePool + Flatten against ReduceMean
    nl = {name: (r.report["before"]["depth_nonlinear"], r.report["after"]["depth_nonlinear"])
          for name, (_, r) in out.items()}
    assert len(set(nl.values())) == 1, nl


def test_the_torch_front_end_drops_them_too_and_its_representations_agree():
    """torch.export writes the zero pads as aten.pad and a crop that keeps all as aten.alias (static batch) or
    aten.slice to the end (the dynamic batch of the nn.Module's torch.export fallback): counted, the
    nn.Module said 207 ops before and the ExportedProgram 206 (four stages at 112); both now count the same, the
    zero pads gone from the result."""
    m = _swin()
    gelus = [n for n, mod in m.named_modules() if isinstance(mod, nn.GELU)]
    x = torch.randn(1, 3, SIZE, SIZE)
    reps = {}
    for name, obj in (("module", m), ("program", torch.export.export(m, (x,)))):
        res = cp.collapse(obj, collapse=gelus, example_inputs=(x,))
        assert res.passed
        gm = res.model if isinstance(res.model, torch.fx.GraphModule) else res.model.graph_module
        pads = [n for n in gm.graph.nodes if n.op == "call_function" and "pad" in str(n.target)]
        assert pads and all(any(p != 0 for p in n.args[1]) for n in pads), name   # stage 3's real padding only
        run = res.model.module() if name == "program" else res.model
        with torch.no_grad():
            np.testing.assert_allclose(run(x).numpy(), _reference(m, gelus, x.numpy()), rtol=1e-4, atol=1e-5)
        reps[name] = {k: (res.report["before"][k], res.report["after"][k]) for k in ("depth_ops", "depth_nonlinear")}
    assert reps["module"] == reps["program"], reps
    before, after = reps["module"]["depth_ops"]
    assert before - after == 2 * len(gelus)
