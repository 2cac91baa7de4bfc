"""Per-element prices of the non-MAC ops, in MAC-equivalents, measured on onnxruntime CPU.

The MAC cost model (collapse_passes/algebra/cost.py) prices a conv / dense by its MACs and every other
op by a per-op overhead plus (ELEMENT_PRICES) so many MAC-equivalents per element it writes. This script
measures those numbers in the context the ops run in: each variant is a chain of K units
`op(linear(x))` (linear: a 1x1 conv on NCHW tensors, a MatMul on tokens), timed interleaved against the
same chain without the op; (t_variant - t_base) / (K x elements) is the op's time per element. The time
per MAC of typical convs (1x1, dense 3x3, depthwise 3x3) comes from chains of K of them; an op's price is
its time per element divided by the dense-conv time per MAC (geometric mean of the 1x1 and 3x3 rates).

    flock /tmp/bench.lock .venv/bin/python benchmarks/op_prices.py --threads 1 [--out benchmarks/results/op_prices.json]

onnxruntime CPU, full graph optimizations (NCHWc layout, activation fusion), thread spinning off.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

K = 6   # units per chain: session-call overhead divided among them

# NCHW sizes of the conv-context ops (C, H, W): early, middle and late stages of the judged CNNs
CONV_SIZES = [(96, 56, 56), (240, 28, 28), (672, 14, 14)]
# token sizes (N, C) of the MatMul-context ops: Swin-T stages 1 and 3
TOKEN_SIZES = [(3136, 96), (196, 384)]
RNG = np.random.default_rng(0)


class Builder:
    def __init__(self):
        self.nodes, self.inits, self.n = [], [], 0
        self.prev = "x"   # the current unit's input (a residual's other side)

    def t(self, p="t"):
        self.n += 1
        return f"{p}{self.n}"

    def node(self, op, ins, n_out=1, **attrs):
        outs = [self.t() for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, ins, outs, **attrs))
        return outs[0] if n_out == 1 else outs

    def const(self, arr):
        name = self.t("c")
        arr = np.asarray(arr)
        self.inits.append(numpy_helper.from_array(arr if arr.dtype == np.int64 else arr.astype(np.float32), name))
        return name

    def model(self, x_shape, out):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))
        y = helper.make_tensor_value_info(out, TensorProto.FLOAT, None)
        g = helper.make_graph(self.nodes, "bench", [x], [y], self.inits)
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


# --- the ops, applied to a tensor `h` of shape `shape` (batch 1 included); return the output name
def _gelu(b, h, shape):
    d = b.node("Div", [h, b.const(np.sqrt(2.0))])
    e = b.node("Erf", [d])
    a = b.node("Add", [e, b.const(1.0)])
    m = b.node("Mul", [h, a])
    return b.node("Mul", [m, b.const(0.5)])


def _silu(b, h, shape):
    return b.node("Mul", [h, b.node("Sigmoid", [h])])


def _hardswish_decomposed(b, h, shape):   # x * hardsigmoid(x), what older exporters write
    return b.node("Mul", [h, b.node("HardSigmoid", [h], alpha=1 / 6, beta=0.5)])


def _layernorm_decomposed(b, h, shape):
    mu = b.node("ReduceMean", [h], axes=[-1])
    d = b.node("Sub", [h, mu])
    v = b.node("ReduceMean", [b.node("Pow", [d, b.const(2.0)])], axes=[-1])
    s = b.node("Sqrt", [b.node("Add", [v, b.const(1e-5)])])
    n = b.node("Div", [d, s])
    return b.node("Add", [b.node("Mul", [n, b.const(RNG.random(shape[-1]))]), b.const(RNG.random(shape[-1]))])


def _window_transpose(b, h, shape):   # Swin's window partition: (1, N, C) -> windows of 7 x 7 and back to (1, N, C)
    n, c = shape[1], shape[2]
    s = int(round(np.sqrt(n)))
    r = b.node("Reshape", [h, b.const(np.array([1, s // 7, 7, s // 7, 7, c], np.int64))])
    t = b.node("Transpose", [r], perm=[0, 1, 3, 2, 4, 5])
    return b.node("Reshape", [t, b.const(np.array([1, n, c], np.int64))])


CONV_OPS = {
    "Relu": lambda b, h, s: b.node("Relu", [h]),
    "Clip(0,6)": lambda b, h, s: b.node("Clip", [h, b.const(0.0), b.const(6.0)]),
    "LeakyRelu": lambda b, h, s: b.node("LeakyRelu", [h], alpha=0.1),
    "Sigmoid": lambda b, h, s: b.node("Sigmoid", [h]),
    "Tanh": lambda b, h, s: b.node("Tanh", [h]),
    "SiLU (Sigmoid, Mul)": _silu,
    "HardSwish": lambda b, h, s: b.node("HardSwish", [h]),
    "HardSigmoid, Mul": _hardswish_decomposed,
    "GELU (Div, Erf, Add, Mul, Mul)": _gelu,
    "PRelu": lambda b, h, s: b.node("PRelu", [h, b.const(RNG.random((s[1], 1, 1)) * 0.2)]),
    "Add (residual)": lambda b, h, s: b.node("Add", [h, b.prev]),   # the unit's input: already in the conv's layout
    # squeeze-excite without its two small convs: GlobalAveragePool (reads the tensor) -> Sigmoid -> Mul (writes it)
    "SE gate (GlobalAveragePool, Sigmoid, Mul)": lambda b, h, s: b.node(
        "Mul", [h, b.node("Sigmoid", [b.node("GlobalAveragePool", [h])])]),
    "HardSigmoid": lambda b, h, s: b.node("HardSigmoid", [h], alpha=1 / 6, beta=0.5),
    "PRelu (one slope)": lambda b, h, s: b.node("PRelu", [h, b.const(np.array([0.1]))]),
    "Mul (per-channel, SE)": lambda b, h, s: b.node("Mul", [h, b.const(RNG.random((1, s[1], 1, 1)))]),
    "Add (bias map)": lambda b, h, s: b.node("Add", [h, b.const(RNG.random((1,) + tuple(s[1:])))]),
    "MaxPool 3x3 s1": lambda b, h, s: b.node("MaxPool", [h], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    "AveragePool 3x3 s1": lambda b, h, s: b.node("AveragePool", [h], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                                  count_include_pad=1),
}

TOKEN_OPS = {
    "LayerNormalization": lambda b, h, s: b.node("LayerNormalization", [h, b.const(RNG.random(s[-1])),
                                                                         b.const(RNG.random(s[-1]))], axis=-1),
    "LayerNorm (ReduceMean chain)": _layernorm_decomposed,
    "Softmax": lambda b, h, s: b.node("Softmax", [h], axis=-1),
    "GELU (Div, Erf, Add, Mul, Mul)": _gelu,
    "Add (residual)": lambda b, h, s: b.node("Add", [h, b.prev]),
    "Window partition (Reshape, Transpose, Reshape)": _window_transpose,
    "Reshape": lambda b, h, s: b.node("Reshape", [h, b.const(np.array([1, s[1], s[2]], np.int64))]),
}

# how many elements each variant writes per unit, in multiples of the tensor (all one pass)
PASSES: dict = {}


def conv_chain(shape, op=None, kind="1x1"):
    """K units of conv (+ op) on a (1, C, H, W) tensor; the conv keeps the shape."""
    b = Builder()
    c = shape[1]
    h = "x"
    for _ in range(K):
        b.prev = h
        if kind == "1x1":
            w = RNG.standard_normal((c, c, 1, 1)) / np.sqrt(c)
            h = b.node("Conv", [h, b.const(w), b.const(np.zeros(c))], kernel_shape=[1, 1])
        elif kind == "3x3":
            w = RNG.standard_normal((c, c, 3, 3)) / np.sqrt(9 * c)
            h = b.node("Conv", [h, b.const(w), b.const(np.zeros(c))], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        elif kind == "dw3x3":
            w = RNG.standard_normal((c, 1, 3, 3)) / 3
            h = b.node("Conv", [h, b.const(w), b.const(np.zeros(c))], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=c)
        if op is not None:
            h = CONV_OPS[op](b, h, shape)
    return b.model(shape, h)


def conv_macs(shape, kind):
    c, hw = shape[1], shape[2] * shape[3]
    return K * hw * c * {"1x1": c, "3x3": 9 * c, "dw3x3": 9}[kind]


def token_chain(shape, op=None):
    """K units of MatMul (C x C) (+ op) on a (1, N, C) tensor; Softmax gets its own score-shaped tensor."""
    b = Builder()
    c = shape[-1]
    h = "x"
    for _ in range(K):
        b.prev = h
        h = b.node("MatMul", [h, b.const(RNG.standard_normal((c, c)) / np.sqrt(c))])
        if op is not None:
            h = TOKEN_OPS[op](b, h, shape)
    return b.model(shape, h)


def timed(models: dict, shape, threads, rounds):
    from collapse_passes.core.runtime import session, time_interleaved

    sessions = {k: session(m, optimize=True, threads=threads) for k, m in models.items()}
    feed = {"x": RNG.standard_normal(shape).astype(np.float32)}
    t = time_interleaved(sessions, feed, rounds, warmup=5)
    return {k: float(np.median(v)) for k, v in t.items()}


def overhead(threads, rounds):
    """Seconds per op of a chain of K tiny ops (1 x 8 x 4 x 4): what an op costs beyond its elements."""
    b = Builder()
    h = "x"
    for _ in range(4 * K):
        h = b.node("Sigmoid", [h])
    b0 = Builder()
    t = timed({"ops": b.model((1, 8, 4, 4), h), "none": b0.model((1, 8, 4, 4), b0.node("Identity", ["x"]))},
              (1, 8, 4, 4), threads, rounds)
    return (t["ops"] - t["none"]) / (4 * K)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    import onnxruntime as ort

    res = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       "onnxruntime": ort.__version__, "threads": args.threads,
                       "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
           "how": __doc__.strip(), "K": K, "conv_sizes": CONV_SIZES, "token_sizes": TOKEN_SIZES,
           "seconds_per_mac": {}, "seconds_per_element": {}, "per_op_overhead_s": None}
    try:
        with open("/proc/cpuinfo") as f:
            res["machine"]["cpu"] = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    # time per MAC of each conv kind, per size; the 1x1 chain is also the base of the conv-context ops
    base = {}
    for shape in CONV_SIZES:
        shp = (1,) + shape
        t = timed({k: conv_chain(shp, None, k) for k in ("1x1", "3x3", "dw3x3")}, shp, args.threads, args.rounds)
        base[shape] = t["1x1"]
        for k, v in t.items():
            res["seconds_per_mac"].setdefault(k, {})[str(shape)] = v / conv_macs(shp, k)
        print(shape, {k: f"{1e12 * v / conv_macs(shp, k):.1f} ps/MAC" for k, v in t.items()}, flush=True)
    for shape in TOKEN_SIZES:
        shp = (1,) + shape
        t = timed({"matmul": token_chain(shp)}, shp, args.threads, args.rounds)
        res["seconds_per_mac"].setdefault("MatMul", {})[str(shape)] = t["matmul"] / (K * shape[0] * shape[1] ** 2)
    for name in CONV_OPS:
        for shape in CONV_SIZES:
            shp = (1,) + shape
            t = timed({"op": conv_chain(shp, name), "base": conv_chain(shp, None)}, shp, args.threads, args.rounds)
            el = K * int(np.prod(shape)) * PASSES.get(name, 1)
            res["seconds_per_element"].setdefault("conv: " + name, {})[str(shape)] = (t["op"] - t["base"]) / el
        print(name, {k: f"{1e12 * v:.0f} ps" for k, v in res["seconds_per_element"]["conv: " + name].items()}, flush=True)
    for name in TOKEN_OPS:
        for shape in TOKEN_SIZES:
            shp = (1,) + shape
            t = timed({"op": token_chain(shp, name), "base": token_chain(shp)}, shp, args.threads, args.rounds)
            el = K * int(np.prod(shape)) * PASSES.get(name, 1)
            res["seconds_per_element"].setdefault("tokens: " + name, {})[str(shape)] = (t["op"] - t["base"]) / el
        print(name, {k: f"{1e12 * v:.0f} ps" for k, v in res["seconds_per_element"]["tokens: " + name].items()}, flush=True)
    res["per_op_overhead_s"] = overhead(args.threads, args.rounds)
    # the unit: dense-conv seconds per MAC (geometric mean of 1x1 and 3x3 over the sizes)
    dense = [v for k in ("1x1", "3x3") for v in res["seconds_per_mac"][k].values()]
    unit = float(np.exp(np.mean(np.log(dense))))
    res["unit_seconds_per_mac"] = unit
    res["prices_mac_equivalents"] = {k: {s: v / unit for s, v in d.items()} for k, d in res["seconds_per_element"].items()}
    res["conv_mac_factor"] = {k: {s: v / unit for s, v in d.items()} for k, d in res["seconds_per_mac"].items()}
    res["per_op_overhead_macs"] = res["per_op_overhead_s"] / unit
    print(f"unit {1e12 * unit:.1f} ps/MAC; per-op overhead {1e6 * res['per_op_overhead_s']:.1f} us = "
          f"{res['per_op_overhead_macs']:.0f} MACs")
    for k, d in res["prices_mac_equivalents"].items():
        print(f"  {k:50s} " + "  ".join(f"{v:6.2f}" for v in d.values()) + f"   median {np.median(list(d.values())):.2f}")
    for k, d in res["conv_mac_factor"].items():
        print(f"  MAC factor {k:10s} " + "  ".join(f"{v:6.2f}" for v in d.values()))
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(res, f, indent=1)
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
