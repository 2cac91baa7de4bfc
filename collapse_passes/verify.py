"""The verification gate: run the requested semantics and the result through onnxruntime.

An element passes when |out - ref| <= atol + rtol * max(|ref|, rms(ref)); max_rel is reported on
the same scale.

Requested semantics = the input model with the chosen activations replaced by their linear
regime (linearize alone). The result must match it to float tolerance; the error against the
original, uncollapsed model is reported separately as the price of the collapse itself.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from .errors import CollapseError

_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_,
}


def session(model: onnx.ModelProto, optimize: bool = False, threads: int | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        msg = " ".join(str(exc).split())[:200]
        raise CollapseError(f"onnxruntime cannot load the model ({msg})") from None


def input_specs(model: onnx.ModelProto) -> list[tuple[str, list, type]]:
    sess = session(model)
    return [(i.name, list(i.shape), _ORT_TYPES.get(i.type, np.float32)) for i in sess.get_inputs()]


def random_inputs(model: onnx.ModelProto, count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """`count` seeded random feeds; dynamic dimensions are taken as 1."""
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        feed = {}
        for name, shape, dt in input_specs(model):
            dims = [d if isinstance(d, int) and d > 0 else 1 for d in shape]
            if np.issubdtype(dt, np.floating):
                feed[name] = rng.standard_normal(dims).astype(dt)
            elif dt is np.bool_:
                feed[name] = rng.integers(0, 2, dims).astype(bool)
            else:
                feed[name] = rng.integers(0, 2, dims).astype(dt)
        feeds.append(feed)
    return feeds


@dataclass
class Comparison:
    max_abs: float
    max_rel: float
    passed: bool
    samples: int
    worst_output: str = ""

    def as_dict(self) -> dict:
        return {"max_abs": self.max_abs, "max_rel": self.max_rel, "passed": self.passed,
                "samples": self.samples, "worst_output": self.worst_output}


@dataclass
class Verification:
    against_requested: Comparison
    against_original: Comparison
    rtol: float
    atol: float
    inputs: str
    notes: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"against_requested": self.against_requested.as_dict(),
                "against_original": self.against_original.as_dict(),
                "rtol": self.rtol, "atol": self.atol, "inputs": self.inputs}


def run(model: onnx.ModelProto, feeds: list[dict], sess=None) -> list[list[np.ndarray]]:
    sess = sess or session(model)
    names = [o.name for o in sess.get_outputs()]
    return [sess.run(names, f) for f in feeds], names


def compare(ref_outs, outs, names, rtol: float, atol: float) -> Comparison:
    max_abs = max_rel = 0.0
    passed = True
    worst = ""
    for ref_list, out_list in zip(ref_outs, outs):
        for name, r, o in zip(names, ref_list, out_list):
            r = np.asarray(r, np.float64)
            o = np.asarray(o, np.float64)
            if r.shape != o.shape:
                return Comparison(float("inf"), float("inf"), False, len(ref_outs), name)
            if r.size == 0:
                continue
            err = np.abs(r - o)
            a = float(np.nanmax(err)) if np.all(np.isfinite(err)) else float("inf")
            # fp32 re-association (merged kernels sum in another order) errs in proportion to the
            # tensor's scale, not to an element that happens to be near zero: rtol applies to
            # max(|ref|, rms(ref)).
            scale = np.maximum(np.abs(r), float(np.sqrt(np.mean(r * r))))
            rel = float(np.max(err / (scale + 1e-12))) if np.isfinite(a) else float("inf")
            ok = bool(np.all(err <= atol + rtol * scale)) and np.isfinite(a)
            if a > max_abs:
                max_abs, worst = a, name
            max_rel = max(max_rel, rel)
            passed &= ok
    return Comparison(max_abs, max_rel, passed, len(ref_outs), worst)


def verify(original: onnx.ModelProto, requested: onnx.ModelProto, result: onnx.ModelProto,
           feeds: list[dict], rtol: float, atol: float, inputs_desc: str) -> Verification:
    res_out, names = run(result, feeds)
    req_out, _ = run(requested, feeds)
    orig_out, _ = run(original, feeds)
    return Verification(compare(req_out, res_out, names, rtol, atol),
                        compare(orig_out, res_out, names, rtol, atol), rtol, atol, inputs_desc)


def load_calibration(path, model: onnx.ModelProto, limit: int | None = None) -> list[dict]:
    """Feeds from an .npz (arrays named after the model inputs, first axis = batch) or a folder of .npy."""
    from .calib import calibration_feeds

    return calibration_feeds(path, model, limit=limit)
