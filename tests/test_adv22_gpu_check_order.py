"""benchmarks/gpu_check.py on a GPU machine, with TVM and the GPU faked: every untuned row comes before any
tuning (a run cut off by its device time keeps them all), a tuning that fails is recorded in its row and the run
goes on, --tune-until stops new tunings, --models picks the models. The H200 run of 2026-11-29 lost three tuned
rows to its device time; the order and the recording are what let it keep the untuned ones."""
import json
import sys
import types

import numpy as np
import onnx
from onnx import TensorProto, helper
from test_gpu_torch_check import _gpu_check   # a fresh module per call



def _tanh_model(scale: float) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, None)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    s = helper.make_tensor("s", TensorProto.FLOAT, [], [scale])
    g = helper.make_graph([helper.make_node("Tanh", ["input"], ["t"]), helper.make_node("Mul", ["t", "s"], ["y"])],
                          "g", [x], [y], [s])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _fake(monkeypatch, events, fail_tuning_of=()):
    import onnxruntime as ort

    from tvm_integration import compile as tc
    from tvm_integration import targets, tuning

    ml = types.ModuleType("merge_latency")
    ml.variants = lambda name, b, tmp, calibrate=False: (
        {"(c) collapse_passes": _tanh_model(1.0), "(a) dense+onnxslim": _tanh_model(2.0)}, {}, None)
    monkeypatch.setitem(sys.modules, "merge_latency", ml)

    def run_ort(model, feed):
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return sess.run(None, feed)

    class Ex:
        def __init__(self, model, tuned=False):
            self.model, self.tuned_functions, self.untuned_functions = model, ["f"] if tuned else [], []

    monkeypatch.setattr(tc, "import_onnx", lambda model: model)
    monkeypatch.setattr(tc, "build", lambda mod, target, cuda_graph=True, database=None: Ex(mod, database is not None))
    monkeypatch.setattr(tc, "run", lambda ex, feed: run_ort(ex.model, feed))
    monkeypatch.setattr(tc, "run_ort", run_ort)
    monkeypatch.setattr(tc, "measure_latency", lambda ex, feed, repeat: 1.0)
    info = types.SimpleNamespace(runs_on_host=True, target_json={"kind": "cuda"})
    monkeypatch.setattr(targets, "resolve_target", lambda kind, arch: ("cuda", info))

    def tune(mod, target, info, **kw):
        label = "c" if mod.graph.initializer[0].float_data[0] == 1.0 else "a"
        events.append(("tune", label))
        if label in fail_tuning_of:
            raise RuntimeError("first line\nMetaSchedule: no valid schedule")
        return "db", types.SimpleNamespace(seconds=1.0, to_dict=lambda: {"tasks_tuned": 1})

    monkeypatch.setattr(tuning, "tune_with_report", tune)


def test_untuned_rows_come_first_and_a_failed_tuning_is_recorded(tmp_path, monkeypatch):
    events = []
    _fake(monkeypatch, events, fail_tuning_of=("a",))
    g = _gpu_check()
    monkeypatch.setattr(g, "_gpu_name", lambda: "Fake GPU")
    out = tmp_path / "o"
    rc = g.main(["--out", str(out), "--batches", "1", "2", "--trials", "8"])
    res = json.load(open(out / "gpu_check.json"))
    rows = res["rows"]
    assert [(r["model"][1], r["batch"]) for r in rows] == [("c", 1), ("a", 1), ("c", 2), ("a", 2)]
    assert events == [("tune", "c"), ("tune", "a"), ("tune", "c"), ("tune", "a")]   # after all four untuned rows
    assert all("tvm_cuda_untuned_ms" in r for r in rows)
    assert "tvm_cuda_tuned_ms" in rows[0] and "tvm_cuda_tuned_ms" in rows[2]
    assert rows[1]["tuning_error"] == "RuntimeError: MetaSchedule: no valid schedule" and "tvm_cuda_tuned_ms" not in rows[1]
    assert len(res["tuning"]) == 2 and rc == 0 and all(r["ok"] for r in rows)


def test_tune_until_and_models(tmp_path, monkeypatch):
    events = []
    _fake(monkeypatch, events)
    g = _gpu_check()
    monkeypatch.setattr(g, "_gpu_name", lambda: "Fake GPU")
    out = tmp_path / "o"
    assert g.main(["--out", str(out), "--batches", "1", "--models", "a", "--trials", "8", "--tune-until", "0"]) == 0
    (row,) = json.load(open(out / "gpu_check.json"))["rows"]
    assert row["model"] == "(a) dense+onnxslim" and events == [] and "over --tune-until" in row["tuning_skipped"]
    np.testing.assert_equal(row["max_abs_vs_ort_cpu"], 0.0)
