"""One prepared GPU check (for a session that is lent a GPU machine): build for CUDA, run, compare.

For the dense and the collapsed MobileNetV2 (CIFAR, width 1.0, 32x32, every block's activations
collapsed, as in merge_latency.py) and batch sizes 1 and 32: compile with TVM for `cuda` (arch from
nvidia-smi), run on the GPU, compare with onnxruntime on the CPU, and time TVM CUDA (untuned default
schedules) and, when the CUDA execution provider is present, onnxruntime on the GPU. Writes
$OUT/gpu_check.json (or --out) and prints a table. Needs no tuning, finishes in a few minutes.

    python benchmarks/gpu_check.py [--out DIR] [--batches 1 32]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "out"))
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--repeat", type=int, default=50)
    args = ap.parse_args(argv)

    import onnxruntime as ort

    import merge_latency as ml
    from tvm_integration import compile as tc
    from tvm_integration.targets import resolve_target

    target, info = resolve_target("cuda")
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for b in args.batches:
            models, stats = ml.variants("mobilenet_v2", b, tmp)
            feed = {"input": np.random.default_rng(0).standard_normal((b, 3, 32, 32)).astype(np.float32)}
            for label in ("(a) dense+onnxslim", "(c) collapse_passes"):
                model = models[label]
                t0 = time.perf_counter()
                ex = tc.build(tc.import_onnx(model), target)
                build_s = time.perf_counter() - t0
                got = tc.run(ex, feed)
                ref = tc.run_ort(model, feed)
                err = max(float(np.max(np.abs(g - r))) for g, r in zip(got, ref))
                row = {"model": label, "batch": b, "build_s": round(build_s, 1), "max_abs_vs_ort_cpu": err,
                       "tvm_cuda_untuned_ms": tc.measure_latency(ex, feed, repeat=args.repeat)}
                if "CUDAExecutionProvider" in ort.get_available_providers():
                    sess = ort.InferenceSession(model.SerializeToString(), providers=["CUDAExecutionProvider"])
                    names = [o.name for o in sess.get_outputs()]
                    for _ in range(10):
                        sess.run(names, feed)
                    ts = []
                    for _ in range(args.repeat):
                        t1 = time.perf_counter()
                        sess.run(names, feed)
                        ts.append(time.perf_counter() - t1)
                    row["ort_cuda_ms"] = float(np.median(ts)) * 1e3
                rows.append(row)
                print(json.dumps(row), flush=True)
    os.makedirs(args.out, exist_ok=True)
    result = {"gpu": gpu, "target": info.target_json if hasattr(info, "target_json") else str(target),
              "python": platform.python_version(), "rows": rows,
              "note": "TVM CUDA numbers are untuned default schedules; ORT CPU is the numerical reference"}
    with open(os.path.join(args.out, "gpu_check.json"), "w") as fh:
        json.dump(result, fh, indent=2, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
