"""MACs, ops and onnxruntime latency of collapsed MobileNetV2s with and without HoistGlobalPool
(onnx/passes/hoist_global_pool.py), interleaved; the numbers in docs/architecture.md#global-pooling-before-pointwise-convs.

    python benchmarks/hoist_pool_latency.py [--rounds 400] [--json F]

Every activation collapsed (the keys of `list_keys`), TorchScript export of `calibrate_bn` weights; batch 1, one
onnxruntime thread, full graph optimizations. "before" runs the same passes with the hoist switched off.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import warnings

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CASES = {"mobilenet_v2_tv_224": ("mobilenet_v2_tv", {}, 224), "mobilenet_v2_32": ("mobilenet_v2", dict(width_mult=1.0), 32)}


def _export(name, kw, side, path):
    import torch

    from models import build
    from models.export import export_onnx
    from models.tv_init import calibrate_bn

    torch.manual_seed(0)
    model = calibrate_bn(build(name, **kw), (2, 3, side, side))
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        export_onnx(model, path, (1, 3, side, side), dynamo=False)


def _collapse(path, keys, hoist: bool):
    import collapse_passes as cp
    from collapse_passes.onnx.passes import hoist_global_pool as hgp
    from collapse_passes.pipeline import PassResult

    real = hgp.HoistGlobalPool.__call__
    if not hoist:
        hgp.HoistGlobalPool.__call__ = lambda self, ctx: PassResult(False)
    try:
        return cp.collapse(path, collapse=keys)
    finally:
        hgp.HoistGlobalPool.__call__ = real


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=400)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import collapse_passes as cp
    from collapse_passes.core import runtime

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case, (name, kw, side) in CASES.items():
            path = os.path.join(tmp, f"{case}.onnx")
            _export(name, kw, side, path)
            keys = [r["key"] for r in cp.list_keys(path)]
            res = {h: _collapse(path, keys, h) for h in (False, True)}
            sessions = {h: runtime.session(res[h].model, optimize=True, threads=1) for h in res}
            feed = {"input": np.random.default_rng(0).standard_normal((1, 3, side, side)).astype(np.float32)}
            t = runtime.time_interleaved(sessions, feed, rounds=args.rounds)
            row = {}
            for h, label in ((False, "before"), (True, "after")):
                after = res[h].report["after"]
                row[label] = {"macs": int(after["macs"]), "ops": int(after["nodes"]), "depth_ops": int(after["depth_ops"]),
                              "median_ms": round(1e3 * float(np.median(t[h])), 4),
                              "p10_ms": round(1e3 * float(np.percentile(t[h], 10)), 4)}
            row["speedup_median"] = round(row["before"]["median_ms"] / row["after"]["median_ms"], 3)
            results[case] = row
            print(case, json.dumps(row), flush=True)
    if args.json:
        from collapse_passes.onnx.graph import write_text_atomic

        write_text_atomic(json.dumps(results, indent=2), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
