"""Value numbering across models and the verification that runs only what changed."""
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import collapse_passes as cp
from collapse_passes.onnx import value_numbering as vn
from collapse_passes.verify import random_inputs, verify
from conftest import make_model, rnd, vinfo


def _chain(depth=6, seed=0, relu_before_pool=False):
    """x -> [Conv 3x3 -> Relu] x depth -> Conv 1x1 -> Relu(r_b) -> Conv 1x1 [-> Relu] -> GAP -> Flatten -> Gemm.
    relu_before_pool: a model with nothing to change unless relu_b is collapsed (else the pool goes before pb:
    onnx/passes/hoist_global_pool.py)."""
    nodes, inits, x = [], {}, "x"
    for i in range(depth):
        inits[f"w{i}"] = rnd(8, 3 if i == 0 else 8, 3, 3, seed=seed + i)
        nodes += [helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        x = f"r{i}"
    inits.update(pa=rnd(8, 8, 1, 1, seed=50), pb=rnd(8, 8, 1, 1, seed=51), fc=rnd(8, 5, seed=52))
    nodes += [helper.make_node("Conv", [x, "pa"], ["pa_o"], name="pa"),
              helper.make_node("Relu", ["pa_o"], ["r_b"], name="relu_b"),
              helper.make_node("Conv", ["r_b", "pb"], ["pb_o"], name="pb"),
              *([helper.make_node("Relu", ["pb_o"], ["pb_r"], name="relu_c")] if relu_before_pool else []),
              helper.make_node("GlobalAveragePool", ["pb_r" if relu_before_pool else "pb_o"], ["g"], name="gap"),
              helper.make_node("Flatten", ["g"], ["f"], name="flat"),
              helper.make_node("MatMul", ["f", "fc"], ["y"], name="fc")]
    return make_model(nodes, [vinfo("x", [1, 3, 16, 16])], [vinfo("y", [1, 5])], inits)


def _out_numbers(*models):
    table = vn.Numbering()
    return [vn.number_model(m, table).outputs for m in models]


def test_same_computation_same_number_and_any_change_another():
    m = _chain()
    same = onnx.ModelProto()
    same.CopyFrom(m)
    # an Identity in the middle, renamed values: still the same computation
    same.graph.node.insert(2, helper.make_node("Identity", ["r0"], ["r0_id"], name="id"))
    for n in same.graph.node[3:]:
        n.input[:] = ["r0_id" if i == "r0" else i for i in n.input]
    weight = onnx.ModelProto()
    weight.CopyFrom(m)
    w = numpy_helper.to_array(weight.graph.initializer[3]).copy()
    w.flat[0] += 1e-3
    weight.graph.initializer[3].CopyFrom(numpy_helper.from_array(w, weight.graph.initializer[3].name))
    attr = onnx.ModelProto()
    attr.CopyFrom(m)
    attr.graph.node[-1].CopyFrom(helper.make_node("Gemm", ["f", "fc"], ["y"], name="fc", alpha=2.0))
    attr_b = onnx.ModelProto()
    attr_b.CopyFrom(attr)
    attr_b.graph.node[-1].CopyFrom(helper.make_node("Gemm", ["f", "fc"], ["y"], name="fc", alpha=3.0))
    o, s, wt, a, b = _out_numbers(m, same, weight, attr, attr_b)
    assert o == s
    assert wt != o and a != o and b != a


def test_random_ops_never_share_a_number():
    nodes = [helper.make_node("RandomNormalLike", ["x"], ["n"], name="rn"),
             helper.make_node("Add", ["x", "n"], ["y"], name="add")]
    m = make_model(nodes, [vinfo("x", [2, 3])], [vinfo("y", [2, 3])], {})
    a, b = _out_numbers(m, m)
    assert a != b


def _collapse(model, **kw):
    return cp.collapse(model, collapse=["relu_b"], check=2, **kw)


def test_partial_runs_give_the_numbers_whole_runs_give(monkeypatch):
    m = _chain()
    res = _collapse(m)
    part = res.report["verification"]
    # pa and pb run after the pool (onnx/passes/hoist_global_pool.py), merged with fc: the 6 3x3 convs are left
    assert [n.op_type for n in res.model.graph.node].count("Conv") == 6
    # both the requested semantics and the result skipped the shared prefix of 6 conv + relu pairs
    assert part["partial"]["requested"][0] < part["partial"]["requested"][1]
    assert part["partial"]["result"][0] < part["partial"]["result"][1]
    monkeypatch.setattr(vn, "REGION_MAX_FRACTION", 0.0)   # every model runs whole
    whole = _collapse(m).report["verification"]
    assert "partial" not in whole
    # the changed regions run on the input's boundary values: onnxruntime may run a sub-graph with other kernels
    # than the whole model (a znver3 host gave 2 and 6 float32 ulps of the ~860 outputs for the same comparison,
    # where an AVX-512 host gave the same bits), so the numbers agree to a few ulps of the outputs' scale
    import onnxruntime as ort

    feed = {"x": np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)}
    scale = float(np.abs(ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
                         .run(None, feed)[0]).max())
    ulps = 16 * float(np.spacing(np.float32(scale)))
    for k in ("against_requested", "against_original"):
        assert part[k]["passed"] == whole[k]["passed"]
        assert part[k]["max_abs"] == pytest.approx(whole[k]["max_abs"], rel=1e-5, abs=ulps)


@pytest.mark.parametrize("where", ["conv0", "fc"])
def test_a_wrong_result_fails_wherever_the_change_is(where):
    """A weight changed in the result's shared prefix (conv0) or in its changed tail (fc) is caught:
    a changed prefix weight changes its value numbers, so that part runs again."""
    m = _chain()
    res = _collapse(m)
    bad = onnx.ModelProto()
    bad.CopyFrom(res.model)
    # fc: the last op's weight (pa, pb and fc are one dense op after the pool, named pa: hoist_global_pool)
    name = next(n.input[1] for n in bad.graph.node if n.name.startswith(where)) if where != "fc" else \
        bad.graph.node[-1].input[1]
    k = next(i for i, t in enumerate(bad.graph.initializer) if t.name == name)
    w = numpy_helper.to_array(bad.graph.initializer[k]) * 1.5
    bad.graph.initializer[k].CopyFrom(numpy_helper.from_array(w.astype(np.float32), name))
    feeds = random_inputs(m, 2, 0)
    good = verify(res.original, res.requested, res.model, feeds, 1e-4, 1e-5, "t")
    ver = verify(res.original, res.requested, bad, feeds, 1e-4, 1e-5, "t")
    assert good.against_requested.passed
    assert not ver.against_requested.passed


def test_nothing_changed_is_proved_by_structure_without_a_run(monkeypatch):
    import onnxruntime as ort

    m = _chain(relu_before_pool=True)
    m.graph.node.insert(1, helper.make_node("Identity", ["c0"], ["c0_id"], name="id"))
    m.graph.node[2].input[0] = "c0_id"
    runs = []
    real = ort.InferenceSession.run
    monkeypatch.setattr(ort.InferenceSession, "run", lambda self, *a, **k: runs.append(1) or real(self, *a, **k))
    res = cp.collapse(m)   # no selection: only the exact clean-ups (the Identity goes)
    v = res.report["verification"]
    assert "Identity" not in [n.op_type for n in res.model.graph.node]
    assert v["structural"] and v["against_requested"]["passed"] and not runs
    # with something collapsed the gate runs again
    cp.collapse(m, collapse=["relu_b"], check=1)
    assert runs


def test_cli_says_what_ran(tmp_path):
    import subprocess
    import sys

    src = tmp_path / "m.onnx"
    onnx.save(_chain(relu_before_pool=True), src)
    out = subprocess.run([sys.executable, "-m", "collapse_passes", str(src), "-o", str(tmp_path / "o.onnx"),
                          "--collapse", "relu_b"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    text = " ".join((out.stdout + out.stderr).split())
    assert "ran only what differs from the models run before it: requested" in text
    out = subprocess.run([sys.executable, "-m", "collapse_passes", str(src), "-o", str(tmp_path / "n.onnx")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "verification by structure: PASS" in " ".join((out.stdout + out.stderr).split())


def test_boundary_values_over_budget_run_the_models_whole(monkeypatch):
    """Big calibration batches: the intermediate values the regions start from are not kept when they
    would exceed the budget; the requested semantics and the result then run whole, same numbers."""
    import collapse_passes.verify as V

    m = _chain()
    part = _collapse(m).report["verification"]
    monkeypatch.setattr(V, "FETCH_BUDGET_BYTES", 0)
    whole = _collapse(m).report["verification"]
    assert "partial" in part and "partial" not in whole
    assert whole["against_original"]["max_abs"] == pytest.approx(part["against_original"]["max_abs"], rel=1e-5)


def test_an_input_onnxruntime_cannot_load_is_refused_in_one_line(tmp_path):
    """Nothing to run does not mean nothing checked: a no-op result is still loaded by onnxruntime, and
    an input that onnxruntime cannot load (here an opset it does not know) is the user's problem."""
    import subprocess
    import sys

    m = _chain()
    m.opset_import[0].version = 99
    src = tmp_path / "m.onnx"
    onnx.save(m, src)
    out = subprocess.run([sys.executable, "-m", "collapse_passes", str(src), "-o", str(tmp_path / "o.onnx")],
                         capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "o.onnx").exists()
